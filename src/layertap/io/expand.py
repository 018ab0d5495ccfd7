"""Paths given as inputs -> the list of files: folders, globs and ``.txt`` / ``.csv`` lists.

This module does not import Keras.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable
from pathlib import Path

from layertap._errors import BadInputError

__all__ = ["expand_inputs"]

GLOB_CHARS = frozenset("*?[")
_LIST_SUFFIXES = (".txt", ".csv")


def _read_list(path: Path) -> list[Path]:
    """Paths listed one per line (.txt) or in the ``path`` / first column (.csv)."""
    base = path.parent
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".txt":
            items = [line.strip() for line in f]
            items = [s for s in items if s and not s.startswith("#")]
        else:
            rows = [row for row in csv.reader(f) if row and row[0].strip()]
            column = 0
            if rows and "path" in [c.strip().lower() for c in rows[0]]:
                column = [c.strip().lower() for c in rows[0]].index("path")
                rows = rows[1:]
            items = [row[column].strip() for row in rows]
    return [p if p.is_absolute() else base / p for p in map(Path, items)]


def _expand_one(item: str | os.PathLike[str]) -> list[Path]:
    text = os.fspath(item)
    path = Path(text)
    if path.is_dir():
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    if path.is_file() and path.suffix.lower() in _LIST_SUFFIXES:
        return _read_list(path)
    if path.exists():
        return [path]
    if GLOB_CHARS & set(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [p for p in found if p.is_file()]
        if not files:
            raise BadInputError(f"input pattern {text!r} matches no file")
        return files
    raise BadInputError(
        f"input {text!r} does not exist (expected an image file, a folder, a glob, "
        "a .txt/.csv list of paths or a .npy array)"
    )


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Turn files, folders, glob patterns and path lists into one list of files.

    A folder gives every file below it, recursively, sorted by path; files and
    folders whose name starts with ``.`` are left out. A pattern (``*``, ``?``,
    ``[...]``; ``**`` crosses folders) gives its matches, sorted. A ``.txt`` file
    lists one path per line (``#`` comments and blank lines skipped); a ``.csv``
    file lists them in its ``path`` column (with a header) or its first column;
    relative paths in a list are relative to the list's folder, and a listed path
    that does not exist is reported later as a failed input. Other items are kept
    in the order given; a file named twice is kept once. Files are not opened
    here. Raises :class:`~layertap.BadInputError` for an item that does not exist,
    a pattern that matches nothing, or when no file is found at all.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ["b.png", "a.jpg", "sub/c.png", ".hidden"]:
        ...     (d / name).parent.mkdir(exist_ok=True); (d / name).touch()
        >>> [p.relative_to(d).as_posix() for p in expand_inputs([d])]
        ['a.jpg', 'b.png', 'sub/c.png']
        >>> _ = (d / "list.txt").write_text("sub/c.png\\n# a comment\\na.jpg\\n")
        >>> [p.relative_to(d).as_posix() for p in expand_inputs([d / "list.txt"])]
        ['sub/c.png', 'a.jpg']
    """
    seen: set[Path] = set()
    files: list[Path] = []
    for item in inputs:
        for path in _expand_one(item):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                files.append(path)
    if not files:
        raise BadInputError("no input files found (the folders given are empty)")
    return files
