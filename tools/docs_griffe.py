"""A griffe extension for the documentation site (``mkdocs.yml`` loads it).

layertap's docstrings are written for doctest and for reading in the source; two of their
habits render badly through griffe's Google parser and Markdown, and this extension reads
them the way they are meant when a docstring is loaded (nothing in the source changes):

- Doctests are headed ``Example:``; griffe knows only the plural ``Examples:`` and would
  render the singular as an admonition of Markdown, where ``>>>`` lines become block
  quotes and ``f["paths"][:2]`` a link reference. ``Example:`` is read as ``Examples:``,
  so every doctest renders as a Python console block.
- A literal block follows ``text::`` as in reST; the block renders as code (it is
  indented) and ``::`` is read as ``:``.
- Cross-references are Sphinx roles (``:func:`~layertap.extract```); Markdown would show
  the role's name. Each becomes an optional autorefs link: a link where the target is on
  the site (``layertap.Extractor``), the name in code type where it is not (a private
  module's helper). ``~`` keeps the last component as the title, as in Sphinx.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"(?m)^(\s*)Example:\s*$")
_LITERAL = re.compile(r"(?m)(\S)::$")  # reST's "text::" before a literal block
_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj):`(~?)([^`<>]+)`")


def _role(match: re.Match[str]) -> str:
    short, target = match[1], match[2].strip()
    target = target.lstrip(".")
    title = target.rsplit(".", 1)[-1] if short else target
    return (
        f'<autoref identifier="{html.escape(target)}" optional>'
        f"<code>{html.escape(title)}</code></autoref>"
    )


def rewrite(text: str) -> str:
    """The docstring ``text`` with ``Example:`` read as ``Examples:``, ``::`` as ``:`` and
    roles as links.

    Example:
        >>> rewrite("Example:\\n    >>> 1")
        'Examples:\\n    >>> 1'
        >>> rewrite("the tree::")
        'the tree:'
        >>> rewrite(":func:`~layertap.extract`")
        '<autoref identifier="layertap.extract" optional><code>extract</code></autoref>'
    """
    return _ROLE.sub(_role, _LITERAL.sub(r"\1:", _EXAMPLE.sub(r"\1Examples:", text)))


class DocstringHabits(griffe.Extension):
    """Apply :func:`rewrite` to every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
