"""Text -> batches: lines and rows of ``.txt``, ``.jsonl``, ``.csv`` and Parquet files,
tokenized batch by batch (one batch ahead, in a thread) by the model's preprocessor.

This module does not import Keras.
"""

from __future__ import annotations

import collections
import csv
import glob
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from layertap._errors import BadInputError
from layertap.io.expand import GLOB_CHARS
from layertap.io.source import Batch, Source

__all__ = ["Encode", "TEXT_SUFFIXES", "TextSource", "expand_text_inputs"]

#: Text file suffixes: one example per line (.txt) or per row, in a text column.
TEXT_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet", ".pq")

#: A text encoder: a list of strings -> the model's inputs (``{name: array}``, rows first).
Encode = Callable[[list[str]], dict[str, np.ndarray]]


def _text_rows(path: Path, column: str | None) -> Iterator[tuple[str, str | None, str]]:
    """``(row id, text or None, reason)`` for every row of one text file."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield from _txt_rows(path)
    elif suffix == ".jsonl":
        yield from _jsonl_rows(path, column or "text")
    elif suffix == ".csv":
        yield from _csv_rows(path, column or "text")
    elif suffix in (".parquet", ".pq"):
        yield from _parquet_rows(path, column or "text")
    else:
        raise BadInputError(
            f"input {str(path)!r} is not a text file: layertap reads text from "
            f"{', '.join(TEXT_SUFFIXES)}"
        )


def _checked(row_id: str, text: Any) -> tuple[str, str | None, str]:
    if text is None:
        return row_id, None, "no text (null)"
    if not isinstance(text, str):
        return row_id, None, f"not text: a {type(text).__name__}"
    if not text.strip():
        return row_id, None, "empty text"
    return row_id, text, ""


def _txt_rows(path: Path) -> Iterator[tuple[str, str | None, str]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            row_id = f"{path}:{number}"
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield row_id, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                continue
            yield _checked(row_id, text)


def _jsonl_rows(path: Path, column: str) -> Iterator[tuple[str, str | None, str]]:
    import json

    for row_id, line, reason in _txt_rows(path):
        if line is None:
            if reason != "empty text":  # blank lines separate nothing in JSON Lines
                yield row_id, None, reason
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            yield row_id, None, f"not JSON ({exc})"
            continue
        if not isinstance(record, dict) or column not in record:
            yield row_id, None, f"no {column!r} field"
            continue
        yield _checked(row_id, record[column])


def _csv_rows(path: Path, column: str) -> Iterator[tuple[str, str | None, str]]:
    with open(path, newline="", encoding="utf-8", errors="strict") as f:
        try:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or column not in reader.fieldnames:
                raise BadInputError(
                    f"input {str(path)!r} has the columns {reader.fieldnames or []!r}, not "
                    f"{column!r}; choose one with text_column= (--text-column)"
                )
            for row in reader:
                yield _checked(f"{path}:{reader.line_num}", row.get(column))
        except UnicodeDecodeError as exc:
            raise BadInputError(f"input {str(path)!r} is not UTF-8 text: {exc}") from exc


def _parquet_rows(path: Path, column: str) -> Iterator[tuple[str, str | None, str]]:
    from layertap._errors import require

    pq = require("pyarrow.parquet", "parquet", "reading text from Parquet")
    names = pq.read_schema(path).names
    if column not in names:
        raise BadInputError(
            f"input {str(path)!r} has the columns {names!r}, not {column!r}; "
            "choose one with text_column= (--text-column)"
        )
    values = pq.read_table(path, columns=[column])[column].to_pylist()
    for i, text in enumerate(values):
        yield _checked(f"{path}#{i}", text)


def expand_text_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Text files, folders (their text files, recursively, sorted) and globs -> text files.

    Unlike :func:`~layertap.io.expand.expand_inputs`, a ``.txt`` or ``.csv`` file here
    holds the texts themselves, not a list of paths.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ["b.txt", "a.jsonl", "notes.md"]:
        ...     (d / name).touch()
        >>> [p.name for p in expand_text_inputs([d])]
        ['a.jsonl', 'b.txt']
    """
    files: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            files.extend(
                sorted(
                    p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                )
            )
        elif path.exists():
            files.append(path)
        elif GLOB_CHARS & set(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise BadInputError(f"input pattern {text!r} matches no file")
            files.extend(found)
        else:
            raise BadInputError(
                f"input {text!r} does not exist (expected a text file: "
                f"{', '.join(TEXT_SUFFIXES)}, a folder of them or a glob)"
            )
    return files


class TextSource(Source):
    """Lines or rows of text, encoded batch by batch into the model's inputs.

    ``inputs`` are text files (``Path`` objects; :data:`TEXT_SUFFIXES`) and texts
    (``str``). A row id is ``file:line`` (``.txt``, ``.jsonl``, ``.csv``), ``file#row``
    (Parquet) or ``text[i]`` (the i-th ``str``). An empty line, bytes that are not
    UTF-8, a JSON line without the text field, or a null is skipped and reported, like
    an image that cannot be decoded.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "lines.txt"
        >>> _ = f.write_text("a cat\\n\\nthe dog sat\\n")
        >>> def encode(texts):
        ...     return {"length": np.array([[len(t)] for t in texts])}
        >>> [(b.ids, b.x["length"].ravel().tolist(), b.failed)
        ...  for b in TextSource([f], encode).batches()]  # doctest: +ELLIPSIS
        [(['...lines.txt:1', '...lines.txt:3'], [5, 11], [('...lines.txt:2', 'empty text')])]
    """

    kind = "text"

    def __init__(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        encode: Encode,
        *,
        batch_size: int = 32,
        text_column: str | None = None,
        description: Mapping[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch size must be at least 1, not {batch_size}")
        self.encode = encode
        self.batch_size = batch_size
        self.rows: list[tuple[str, str | None, str]] = []
        h = hashlib.sha256()
        texts = 0
        for item in inputs:
            if isinstance(item, str):
                self.rows.append(_checked(f"text[{texts}]", item))
                texts += 1
                h.update(item.encode() + b"\0")
                continue
            path = Path(item)
            self.rows.extend(_text_rows(path, text_column))
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        if not self.rows:
            raise BadInputError("no text found in the inputs (the files are empty)")
        for row_id, _, _ in self.rows:
            h.update(row_id.encode() + b"\0")
        self.total = len(self.rows)
        self.fingerprint = h.hexdigest()
        self.preprocessing = {"text_column": text_column, **(description or {})}

    def sample(self) -> Any:
        text = next((t for _, t, _ in self.rows if t is not None), None)
        return None if text is None else self.encode([text])

    def items(self) -> list[dict[str, Any]]:
        return [{"path": i, "text": t or "", "reason": why} for i, t, why in self.rows]

    def _groups(self, start: int) -> Iterator[tuple[list[str], list[str], list[Any], int]]:
        """``(ids, texts, failed, end)`` of each batch, before tokenizing."""
        ids: list[str] = []
        texts: list[str] = []
        failed: list[tuple[str, str]] = []
        for i in range(start, len(self.rows)):
            row_id, text, reason = self.rows[i]
            if text is None:
                failed.append((row_id, reason))
            else:
                ids.append(row_id)
                texts.append(text)
            if len(ids) == self.batch_size or (i == len(self.rows) - 1 and (ids or failed)):
                yield ids, texts, failed, i + 1
                ids, texts, failed = [], [], []

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Batches tokenized one ahead in a worker thread, overlapping the forward pass."""
        pending: collections.deque[tuple[Any, Future[Any]]] = collections.deque()
        with ThreadPoolExecutor(1, thread_name_prefix="layertap-tokenize") as pool:
            for group in self._groups(start):
                pending.append((group, pool.submit(self._encode, group[1])))
                if len(pending) > 1:
                    yield self._batch(*pending.popleft())
            while pending:
                yield self._batch(*pending.popleft())

    def _encode(self, texts: list[str]) -> Any:
        return self.encode(texts) if texts else {}

    @staticmethod
    def _batch(group: tuple[list[str], list[str], list[Any], int], x: Future[Any]) -> Batch:
        ids, _, failed, end = group
        return Batch(ids, x.result(), failed, end)
