"""A mkdocs hook (``mkdocs.yml``: ``hooks``) for the command-line reference page.

mkdocs-click 0.9 renders layertap's click commands with two flaws, mended here by
wrapping two of its functions when mkdocs loads this hook (nothing in layertap changes):

- A click help paragraph that opens with ``\\b`` keeps its line breaks in ``--help``
  (the commands' ``Examples:``); mkdocs-click drops the ``\\b`` and Markdown then runs
  the lines together. Such a paragraph becomes a code block.
- Since click 8.3 an option given no default holds the ``UNSET`` sentinel, which the
  table shows as ``Sentinel.UNSET``. It is shown as ``--help`` means it: ``False`` for
  a flag, ``None`` otherwise (``_required`` when required).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import click
from mkdocs_click import _docs

_make_description = _docs._make_description
_format_table_option_row = _docs._format_table_option_row


def fence_unwrapped(lines: list[str]) -> Iterator[str]:
    """Each ``\\b`` paragraph of ``lines`` as a fenced code block.

    Example:
        >>> list(fence_unwrapped(["Text.", "", "\\b", "Examples:", "  a b", "", "More."]))
        ['Text.', '', '```text', 'Examples:', '  a b', '```', '', 'More.']
    """
    inside = False
    for line in lines:
        if line.strip() == "\b":
            inside = True
            yield "```text"
        elif inside and not line.strip():
            inside = False
            yield "```"
            yield line
        else:
            yield line
    if inside:
        yield "```"


def _description(ctx: click.Context, remove_ascii_art: bool = False) -> Iterator[str]:
    yield from fence_unwrapped(list(_make_description(ctx, remove_ascii_art=remove_ascii_art)))


def _unset(value: Any) -> bool:
    return type(value).__name__ == "Sentinel" and getattr(value, "name", "") == "UNSET"


def _table_row(option: click.Option) -> str:
    if _unset(option.default):
        option = copy.copy(option)
        option.default = False if option.is_flag and not option.multiple else None
    return str(_format_table_option_row(option))


_docs._make_description = _description
_docs._format_table_option_row = _table_row
