"""Glob patterns over canonical paths, one ``/`` segment at a time.

Shared by :func:`~layertap.graph.walk.list_layers` (``pattern=``) and spec
resolution; it needs nothing but each place's ``path`` (Keras forbids ``/`` in
layer names, so the segments of a path are its ``/``-separated parts).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["glob_match"]


class _HasPath(Protocol):
    @property
    def path(self) -> str: ...


P = TypeVar("P", bound=_HasPath)


def _match(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, parts[j:]) for j in range(len(parts) + 1))
    if not parts:
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _match(rest, parts[1:])


def glob_match(pattern: str, places: Sequence[P]) -> list[P]:
    """The places whose canonical path matches ``pattern``, segment by segment.

    ``*``, ``?`` and ``[...]`` match within one segment (``name@k``, and ``:j`` on the
    last); ``**`` matches any number of segments.

    Example:
        >>> import keras
        >>> from layertap.graph.walk import walk
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d1"),
        ...                       keras.layers.Dense(2, name="d2")])
        >>> [p.path for p in glob_match("d*", walk(m))]
        ['d1', 'd2']
    """
    parts = pattern.split("/")
    return [p for p in places if _match(parts, p.path.split("/"))]
