"""Labels for the rows of a feature file: an array, or a file mapping paths to labels.

A label file is matched to the rows by path, exactly as the feature file stores them
(``reader.paths``):

- ``.csv``: two columns, path then label (a header row is recognised when it names
  ``path`` and ``label``, or when its first cell is not a row's path); with a header, the
  columns named ``path`` and ``label`` are used wherever they are;
- ``.json``: an object ``{path: label}``, or a list of ``{"path": ..., "label": ...}``;
- ``.npy``: an array, one label per row in row order.

Every row needs a label; a path the file labels that is not a row is an error too,
unless the run recorded it as a failed input (a file that could not be decoded).

**The task** follows the labels: floating-point labels (an array of a float dtype, JSON
numbers of which one at least has a decimal point or an exponent, CSV cells that all
parse as numbers but not all as integers) are a regression; anything else (integers,
strings, booleans) are classes.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layertap._errors import LabelError
from layertap.io.read import FeatureReader

__all__ = ["is_regression", "match_labels", "read_label_file"]


def _names(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _csv_pairs(path: Path, rows: set[str]) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        table = [r for r in csv.reader(f) if r]
    if not table:
        return []
    first = [c.strip() for c in table[0]]
    lowered = [c.lower() for c in first]
    if "path" in lowered and "label" in lowered:
        i, j = lowered.index("path"), lowered.index("label")
        body = table[1:]
    else:
        i, j = 0, 1
        body = table[1:] if first[0] not in rows else table
    bad = [n for n, r in enumerate(body) if len(r) <= max(i, j)]
    if bad:
        raise LabelError(f"label file {str(path)!r}: row {bad[0] + 1} has no label column")
    return [(r[i].strip(), r[j].strip()) for r in body]


def _json_pairs(path: Path) -> list[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LabelError(f"label file {str(path)!r} is not JSON: {exc}") from exc
    if isinstance(data, dict):
        return [(str(k), v) for k, v in data.items()]
    if isinstance(data, list) and all(isinstance(d, dict) and {"path", "label"} <= set(d)
                                      for d in data):  # fmt: skip
        return [(str(d["path"]), d["label"]) for d in data]
    raise LabelError(
        f"label file {str(path)!r} is neither an object {{path: label}} nor a list of "
        '{"path": ..., "label": ...}'
    )


def _parse_cells(cells: Sequence[str]) -> np.ndarray:
    """CSV cells -> int, float or string labels (the most specific that fits all)."""
    for kind in (int, float):
        try:
            return np.array([kind(c) for c in cells])
        except ValueError:
            continue
    return np.array(list(cells), dtype=str)


def read_label_file(path: str | os.PathLike[str], reader: FeatureReader) -> np.ndarray:
    """The labels of ``reader``'s rows, in row order, from a CSV, JSON or NPY file.

    Example:
        >>> import tempfile
        >>> from layertap.io.read import open_features
        >>> r = open_features({"e": np.zeros((2, 3)), "paths": ["a.png", "b.png"]})
        >>> f = Path(tempfile.mkdtemp()) / "labels.csv"
        >>> _ = f.write_text("path,label\\nb.png,dog\\na.png,cat\\n")
        >>> read_label_file(f, r).tolist()
        ['cat', 'dog']
    """
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"no such label file: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return match_labels(np.load(path, allow_pickle=False), reader)
    paths = reader.paths.tolist()
    if suffix == ".csv":
        pairs: list[tuple[str, Any]] = list(_csv_pairs(path, set(paths)))
        values = _parse_cells([v for _, v in pairs])
    elif suffix == ".json":
        pairs = _json_pairs(path)
        values = np.array([v for _, v in pairs])
    else:
        raise LabelError(
            f"label file {str(path)!r} has an unknown suffix {path.suffix!r}; "
            "valid: .csv, .json, .npy"
        )
    return _by_path([p for p, _ in pairs], values, paths, reader, str(path))


def _by_path(
    keys: list[str], values: np.ndarray, paths: list[str], reader: FeatureReader, name: str
) -> np.ndarray:
    index = {p: n for n, p in enumerate(keys)}
    missing = [p for p in paths if p not in index]
    failed = {p for p, _ in reader.failed}
    rows = set(paths)
    extra = [p for p in keys if p not in rows and p not in failed]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no label for {len(missing)} of {len(paths)} rows ({_names(missing)})")
        if extra:
            parts.append(f"{len(extra)} labelled paths are not rows ({_names(extra)})")
        example = f"; rows are named as in {reader.source}, e.g. {paths[0]!r}" if paths else ""
        raise LabelError(
            f"label file {name!r} does not match the rows: {'; '.join(parts)}{example}"
        )
    return values[[index[p] for p in paths]]


def match_labels(labels: Any, reader: FeatureReader) -> np.ndarray:
    """``labels`` (one per row, in row order) as an array, checked against ``reader``.

    Example:
        >>> from layertap.io.read import open_features
        >>> match_labels([0, 1, 1], open_features({"e": np.zeros((2, 3))}))
        Traceback (most recent call last):
        ...
        layertap._errors.LabelError: 3 labels for 2 rows: give one label per row
    """
    if isinstance(labels, str | os.PathLike):
        return read_label_file(labels, reader)
    y = np.asarray(labels)
    if y.ndim != 1:
        raise LabelError(f"labels must be one per row (1-D), not of shape {y.shape}")
    if len(y) != reader.rows:
        raise LabelError(f"{len(y)} labels for {reader.rows} rows: give one label per row")
    return y


def is_regression(y: np.ndarray) -> bool:
    """Whether ``y`` are values to regress (floats) rather than classes.

    Example:
        >>> is_regression(np.array([0.5, 1.0])), is_regression(np.array([1, 2]))
        (True, False)
    """
    return bool(np.issubdtype(y.dtype, np.floating))
