"""Arrays and iterables -> batches: one array, several named arrays (``.npz`` and Parquet
files too), and iterables of batches (``tf.data``, ``keras.utils.PyDataset``).

This module does not import Keras (a ``PyDataset`` is recognised by its class name).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layertap._errors import BadInputError
from layertap.io.images import Preprocess, resolve_preprocess
from layertap.io.source import Batch, Source

__all__ = ["ARRAY_SUFFIXES", "ArraySource", "ArraysSource", "IterableSource", "is_pydataset"]


class ArraySource(Source):
    """Rows of an in-memory array, preprocessed per batch; ids ``array[i]``.

    Example:
        >>> src = ArraySource(np.ones((5, 2), np.float32), batch_size=2)
        >>> [(b.ids, b.x.shape) for b in src.batches(start=2)]
        [(['array[2]', 'array[3]'], (2, 2)), (['array[4]'], (1, 2))]
    """

    kind = "array"

    def __init__(
        self, array: np.ndarray, *, batch_size: int = 32, preprocess: str | Preprocess = "none"
    ) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch size must be at least 1, not {batch_size}")
        if array.ndim < 1:
            raise BadInputError("input array is a scalar, not rows of inputs")
        self.array = array
        self.batch_size = batch_size
        name, self._fn = resolve_preprocess(preprocess)
        self.preprocessing = {"preset": name}
        self.total = len(array)
        self.input_shape = tuple(array.shape[1:])
        h = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
        h.update(np.ascontiguousarray(array).data)
        self.fingerprint = h.hexdigest()

    def batches(self, start: int = 0) -> Iterator[Batch]:
        for i in range(start, len(self.array), self.batch_size):
            j = min(i + self.batch_size, len(self.array))
            x = np.asarray(self._fn(np.asarray(self.array[i:j], dtype=np.float32)))
            yield Batch([f"array[{k}]" for k in range(i, j)], x, [], j)


class ArraysSource(Source):
    """Rows of several named arrays, one per model input (rows aligned); no preprocessing.

    From a dict of arrays (ids ``array[i]``), or from ``.npz`` files and Parquet files
    whose arrays / columns are named after the model's inputs (ids ``file[i]``). Arrays
    or columns the model does not take are ignored. With ``expected`` (``{input name:
    row shape}``, ``None`` for any size), a missing input or a row of another shape is
    a :class:`~layertap.BadInputError` naming it, before any batch runs.

    Example:
        >>> src = ArraysSource({"ids": np.zeros((3, 4), "int32"), "mask": np.ones((3, 4))},
        ...                    batch_size=2)
        >>> [(b.ids, sorted(b.x), b.x["ids"].dtype.name) for b in src.batches()]
        ... # doctest: +NORMALIZE_WHITESPACE
        [(['array[0]', 'array[1]'], ['ids', 'mask'], 'int32'),
         (['array[2]'], ['ids', 'mask'], 'int32')]
    """

    kind = "arrays"

    def __init__(
        self,
        arrays: Mapping[str, Any],
        *,
        batch_size: int = 32,
        ids: Sequence[str] | None = None,
        expected: Mapping[str, tuple[int | None, ...]] | None = None,
        where: str = "the input dict",
    ) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch size must be at least 1, not {batch_size}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        if expected is not None:
            self.arrays = _expected_arrays(self.arrays, expected, where)
        lengths = {k: len(v) if v.ndim else -1 for k, v in self.arrays.items()}
        if len(set(lengths.values())) != 1 or -1 in lengths.values():
            raise BadInputError(
                f"{where} holds arrays with different numbers of rows {lengths}; every "
                "input needs one row per example"
            )
        self.batch_size = batch_size
        self.rows = next(iter(lengths.values()))
        self.total = self.rows
        self.ids = list(ids) if ids is not None else [f"array[{i}]" for i in range(self.rows)]
        self.preprocessing = {"preset": "none"}
        h = hashlib.sha256()
        for key in sorted(self.arrays):
            v = self.arrays[key]
            h.update(f"{key}{v.shape}{v.dtype}".encode())
            h.update(np.ascontiguousarray(v).data)
        for row_id in self.ids:
            h.update(row_id.encode() + b"\0")
        self.fingerprint = h.hexdigest()

    @classmethod
    def from_files(
        cls,
        paths: Sequence[Path],
        expected: Mapping[str, tuple[int | None, ...]],
        *,
        batch_size: int = 32,
    ) -> ArraysSource:
        """Rows of ``.npz`` / Parquet files, in order, arrays named after the model's inputs.

        Example:
            >>> import tempfile
            >>> f = Path(tempfile.mkdtemp()) / "x.npz"
            >>> np.savez(f, a=np.zeros((2, 3)), b=np.ones((2, 1)), label=np.arange(2))
            >>> src = ArraysSource.from_files([f], {"a": (3,), "b": (1,)})
            >>> src.total, src.ids[1].endswith("x.npz[1]"), sorted(src.arrays)
            (2, True, ['a', 'b'])
        """
        if not expected:
            raise BadInputError(
                "a model without a graph (its own call()) does not name its inputs, so "
                ".npz / Parquet inputs cannot be matched to them; pass arrays in Python"
            )
        parts: dict[str, list[np.ndarray]] = {name: [] for name in expected}
        ids: list[str] = []
        for path in paths:
            found = _file_arrays(path, list(expected))
            found = _expected_arrays(found, expected, f"input file {str(path)!r}")
            n = len(next(iter(found.values())))
            ids.extend(f"{path}[{i}]" for i in range(n))
            for name in expected:
                parts[name].append(found[name])
        arrays = {name: np.concatenate(parts[name]) for name in expected}
        return cls(arrays, batch_size=batch_size, ids=ids, where="the input files")

    def sample(self) -> dict[str, np.ndarray]:
        return {k: v[:1] for k, v in self.arrays.items()}

    def items(self) -> list[dict[str, Any]]:
        return [
            {"path": row_id, **{k: v[i] for k, v in self.arrays.items()}}
            for i, row_id in enumerate(self.ids)
        ]

    def batches(self, start: int = 0) -> Iterator[Batch]:
        for i in range(start, self.rows, self.batch_size):
            j = min(i + self.batch_size, self.rows)
            x = {k: v[i:j] for k, v in self.arrays.items()}
            yield Batch(self.ids[i:j], x, [], j)


#: Files that hold several named arrays: one per model input.
ARRAY_SUFFIXES = (".npz", ".parquet", ".pq")


def _file_arrays(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The arrays named ``names`` that a ``.npz`` or Parquet file holds (others left out)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {n: z[n] for n in names if n in z.files}
        from layertap._errors import require

        pq = require("pyarrow.parquet", "parquet", "reading model inputs from Parquet")
        columns = [n for n in names if n in pq.read_schema(path).names]
        table = pq.read_table(path, columns=columns)
        return {n: np.array(table[n].to_pylist()) for n in columns}
    except (OSError, ValueError) as exc:
        raise BadInputError(f"input file {str(path)!r} cannot be read: {exc}") from exc


def _expected_arrays(
    arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int | None, ...]], where: str
) -> dict[str, np.ndarray]:
    """The arrays the model takes, checked: each present, each row of the model's shape."""
    missing = [name for name in expected if name not in arrays]
    if missing:
        raise BadInputError(
            f"{where} has no {', '.join(repr(m) for m in missing)}: the model takes "
            f"{list(expected)!r} (found {sorted(arrays)!r})"
        )
    for name, want in expected.items():
        row = tuple(arrays[name].shape[1:])
        fits = len(row) == len(want) and all(
            w is None or w == r for w, r in zip(want, row, strict=True)
        )
        if not fits:
            raise BadInputError(
                f"{where}: input {name!r} has rows of shape {row}, but the model takes "
                f"{tuple(want)} (None: any size)"
            )
    return {name: arrays[name] for name in expected}


def _features_of(element: Any) -> Any:
    if isinstance(element, tuple):
        return element[0]  # (x, y) or (x, y, sample_weight)
    return element


class IterableSource(Source):
    """Batches from an iterable, a ``tf.data.Dataset`` or a ``keras.utils.PyDataset``.

    Each element is a batch ``x`` or a tuple ``(x, y, ...)``; ids are ``batch[b][i]``.
    Such inputs cannot be fingerprinted, so a run over them cannot resume.

    Example:
        >>> src = IterableSource([np.zeros((2, 3)), (np.ones((1, 3)), np.zeros(1))])
        >>> [(b.ids, b.x.shape) for b in src.batches()]
        [(['batch[0][0]', 'batch[0][1]'], (2, 3)), (['batch[1][0]'], (1, 3))]
    """

    kind = "iterable"

    def __init__(self, batches: Iterable[Any], *, preprocess: str | Preprocess = "none") -> None:
        self._iterable = batches
        name, self._fn = resolve_preprocess(preprocess)
        self.preprocessing = {"preset": name}

    def _elements(self) -> Iterator[Any]:
        obj: Any = self._iterable
        if type(obj).__module__.startswith("tensorflow") and hasattr(obj, "as_numpy_iterator"):
            yield from obj.as_numpy_iterator()
            return
        if is_pydataset(obj):
            for i in range(obj.num_batches if obj.num_batches is not None else len(obj)):
                yield obj[i]
            return
        yield from obj

    def batches(self, start: int = 0) -> Iterator[Batch]:
        if start:
            raise BadInputError("a run over an iterable or dataset cannot resume; start over")
        end = 0
        for b, element in enumerate(self._elements()):
            x = _features_of(element)
            if isinstance(x, dict | list):
                raise BadInputError(
                    "batches with several inputs (a dict or list) are not supported by "
                    "extract(); call Extractor.predict instead"
                )
            x = np.asarray(self._fn(np.asarray(x, dtype=np.float32)))
            end += len(x)
            yield Batch([f"batch[{b}][{i}]" for i in range(len(x))], x, [], end)


def is_pydataset(obj: Any) -> bool:
    for cls in type(obj).__mro__:
        if cls.__name__ == "PyDataset" and cls.__module__.startswith("keras"):
            return True
    return False
