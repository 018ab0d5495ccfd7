"""One chunked reader of everything :func:`layertap.extract` writes (and of arrays in memory).

:func:`open_features` takes an HDF5, NPZ or Parquet feature file, a Ray output folder
(:mod:`layertap.engines.ray`), a :class:`~layertap.ExtractResult` (or the Ray engine's
result), in-memory :class:`~layertap.Features`, a plain ``{key: array}`` dict or a
reader, and gives one :class:`FeatureReader`: the tap keys, the row count, the source
of every row (``paths``), the failed inputs, each tap's row shape, dtype and layer, the
padding masks stored beside kept token taps (``KEY.mask``), the arrays attached to the
file that are not rows (:meth:`FeatureReader.attached`: a reduction's components), and
:meth:`FeatureReader.chunks`, consecutive blocks of rows of one key. The analysis
(:func:`layertap.probe`, :func:`layertap.similarity`) reads through it.

**Memory.** A chunk of ``rows`` rows of one key is what is held:

- HDF5: each chunk is one h5py slice of the dataset;
- Parquet, and the parts of a Ray folder: ``pyarrow`` reads record batches of at most
  ``rows`` rows of that one column (``ParquetFile.iter_batches``); values are stored as
  float32 and are given back in the tap's source dtype (masks as uint8);
- NPZ: layertap writes NPZ members uncompressed, so every array is memory-mapped at its
  offset inside the zip file (``numpy.memmap``); chunks are views the OS pages in. A
  compressed member (``numpy.savez_compressed``, not layertap's) cannot be mapped and is
  read whole, once, when first used;
- in memory: chunks are views of the arrays.

``paths`` is read whole (one string per row). Rows are in the file's order; a Ray folder
gives the rows of its parts in the order its ``_layertap.json`` lists them. An HDF5
file of an interrupted run reads as the rows its ``progress`` committed
(``complete`` is false).

A source that is not layertap's, or a key it does not hold, raises
:class:`~layertap.FeatureFileError` naming it and what is valid.

This module does not import Keras.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import io
import json
import os
import struct
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layertap._errors import FeatureFileError, require
from layertap.io.reduce import MASK_SUFFIX
from layertap.io.write import ATTACHED, PARQUET_ATTACHED

__all__ = ["DEFAULT_CHUNK", "FeatureReader", "open_features"]

#: Rows per chunk when none are asked for.
DEFAULT_CHUNK = 4096
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_SUMMARY = "_layertap.json"
_WHAT = "an HDF5, NPZ or Parquet file written by layertap extract, or a Ray output folder"


@dataclasses.dataclass(frozen=True)
class _Column:
    key: str
    name: str  # the dataset / column it is stored under
    shape: tuple[int, ...]  # one row
    dtype: str
    layer: str


def _rechunk(blocks: Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """Consecutive blocks of any size -> blocks of exactly ``rows`` rows (the last: fewer)."""
    pending: list[np.ndarray] = []
    have = 0
    for block in blocks:
        while len(block):
            take = min(rows - have, len(block))
            pending.append(block[:take])
            have += take
            block = block[take:]
            if have == rows:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, have = [], 0
    if have:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


class FeatureReader:
    """Keys, rows, paths, masks and chunks of rows of one feature source.

    Make one with :func:`open_features`. A variant for each format provides
    :meth:`_blocks` (consecutive blocks of one column) and the paths; the rest is here.

    Attributes:
        source: what was opened (a file, a folder, or ``"arrays"``).
        format: ``"hdf5"``, ``"npz"``, ``"parquet"``, ``"ray"`` or ``"memory"``.
        rows: rows per key.
        complete: false for the file of an interrupted run (the rows it committed).
        attrs: the run's attributes (model, layers, ...), as the file stores them.
        failed: ``(path, reason)`` of every input the run skipped.

    Example:
        >>> r = open_features({"emb": np.arange(10.0).reshape(5, 2)})
        >>> r.keys, r.rows, r.shape("emb")
        (['emb'], 5, (2,))
        >>> [c.shape for c in r.chunks("emb", rows=2)]
        [(2, 2), (2, 2), (1, 2)]
    """

    format = "memory"

    def __init__(
        self,
        source: str,
        columns: Sequence[_Column],
        rows: int,
        attrs: Mapping[str, Any] | None = None,
        failed: Sequence[tuple[str, str]] = (),
        complete: bool = True,
    ) -> None:
        self.source = source
        self._columns = {c.key: c for c in columns}
        self.rows = rows
        self.attrs = dict(attrs or {})
        self.failed = list(failed)
        self.complete = complete

    # --- what is there ----------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        """The taps' keys in file order (mask columns left out: see :attr:`masks`)."""
        return [k for k in self._columns if not self._is_mask(k)]

    @property
    def masks(self) -> dict[str, str]:
        """``{key: its mask's key}`` for every tap stored with a padding mask."""
        return {k[: -len(MASK_SUFFIX)]: k for k in self._columns if self._is_mask(k)}

    def _is_mask(self, key: str) -> bool:
        return key.endswith(MASK_SUFFIX) and key[: -len(MASK_SUFFIX)] in self._columns

    def column(self, key: str) -> _Column:
        """How ``key`` is stored; :class:`~layertap.FeatureFileError` if it is not there."""
        found = self._columns.get(key)
        if found is not None:
            return found
        close = difflib.get_close_matches(key, list(self._columns), n=3, cutoff=0.5)
        hint = f" (close: {', '.join(close)})" if close else ""
        valid = ", ".join(self._columns) or "none"
        raise FeatureFileError(f"{self.source} has no key {key!r}{hint}; its keys: {valid}")

    def shape(self, key: str) -> tuple[int, ...]:
        """One row's shape."""
        return self.column(key).shape

    def dtype(self, key: str) -> str:
        """The dtype name of ``key``'s values (the tap's source dtype)."""
        return self.column(key).dtype

    def layer(self, key: str) -> str:
        """The canonical layer path ``key`` was tapped at (``""`` when unknown)."""
        return self.column(key).layer

    def dim(self, key: str) -> int:
        """Values per row (the row flattened)."""
        return int(np.prod(self.shape(key), dtype=np.int64))

    @property
    def paths(self) -> np.ndarray:
        """The source of every row (strings), in row order."""
        return np.array([f"array[{i}]" for i in range(self.rows)], dtype=str)

    # --- reading ----------------------------------------------------------------------

    def chunks(self, key: str, rows: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
        """Consecutive blocks of ``rows`` rows of ``key`` (the last one may be shorter).

        Example:
            >>> r = open_features({"a": np.arange(7)})
            >>> [c.tolist() for c in r.chunks("a", rows=3)]
            [[0, 1, 2], [3, 4, 5], [6]]
        """
        column = self.column(key)
        if rows < 1:
            raise FeatureFileError(f"rows per chunk must be at least 1, not {rows}")
        return _rechunk(self._blocks(column, rows), rows)

    def read(self, key: str) -> np.ndarray:
        """All rows of ``key`` as one array (holds the whole column).

        Example:
            >>> open_features({"a": np.ones((3, 2))}).read("a").shape
            (3, 2)
        """
        column = self.column(key)
        parts = list(self.chunks(key))
        if not parts:
            return np.zeros((0, *column.shape), column.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def mask(self, key: str) -> np.ndarray | None:
        """The padding mask stored with ``key`` (``(rows, tokens)`` uint8), or ``None``."""
        self.column(key)
        found = self.masks.get(key)
        return None if found is None else self.read(found)

    def _blocks(self, column: _Column, rows: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    # --- arrays that are not rows -----------------------------------------------------

    @property
    def attached_names(self) -> list[str]:
        """The names of the arrays attached to the file
        (:meth:`~layertap.io.write.FeatureWriter.attach`), sorted."""
        return sorted(self._attached())

    def attached(self, name: str) -> np.ndarray:
        """The array attached under ``name``; :class:`~layertap.FeatureFileError` if none.

        Example:
            >>> open_features({"a": np.ones(2)}).attached("pca/a/mean")
            Traceback (most recent call last):
            ...
            layertap._errors.FeatureFileError: the dict of arrays has no attached array \
'pca/a/mean' (it has none)
        """
        found = self._attached()
        if name not in found:
            have = ", ".join(sorted(found)) or "none"
            raise FeatureFileError(f"{self.source} has no attached array {name!r} (it has {have})")
        return np.asarray(found[name]())

    def _attached(self) -> dict[str, Any]:
        """``{name: a function that reads it}``."""
        return {}

    def close(self) -> None:
        """Release the open file (a reader of arrays holds none)."""

    def __enter__(self) -> FeatureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        keys = ", ".join(f"{k} {self.shape(k)}" for k in self.keys)
        return f"<FeatureReader {self.format} {self.source}: {self.rows} rows; {keys}>"


class _ArrayReader(FeatureReader):
    """``{key: array}`` in memory (``Features``: ``paths`` and ``failed`` too)."""

    def __init__(self, arrays: Mapping[str, Any], source: str = "the dict of arrays") -> None:
        values = {str(k): np.asarray(v) for k, v in arrays.items()}
        ids = values.pop("paths", None)
        lengths = {k: (len(v) if v.ndim else 0) for k, v in values.items()}
        if ids is not None:
            lengths["paths"] = len(ids)
        if len(set(lengths.values())) > 1:
            counts = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise FeatureFileError(f"{source} does not have one row count ({counts})")
        columns = [_Column(k, k, tuple(v.shape[1:]), v.dtype.name, "") for k, v in values.items()]
        rows = next(iter(lengths.values()), 0)
        super().__init__(source, columns, rows, failed=getattr(arrays, "failed", ()))
        self._values = values
        self._ids = ids

    @property
    def paths(self) -> np.ndarray:
        if self._ids is None:
            return super().paths
        return np.asarray(self._ids).astype(str)

    def _blocks(self, column: _Column, rows: int) -> Iterator[np.ndarray]:
        array = self._values[column.name]
        for i in range(0, len(array), rows):
            yield array[i : i + rows]


class _HDF5Reader(FeatureReader):
    format = "hdf5"

    def __init__(self, path: Path) -> None:
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise FeatureFileError(f"cannot read {str(path)!r} as HDF5: {exc}") from exc
        if "taps" not in f.attrs or "paths" not in f:
            f.close()
            raise _not_ours(path, "an HDF5 file without layertap's taps and paths")
        taps: dict[str, Any] = json.loads(f.attrs["taps"])
        columns = [
            _Column(k, t["dataset"], tuple(f[t["dataset"]].shape[1:]), f[t["dataset"]].dtype.name,
                    t.get("layer", ""))
            for k, t in taps.items()
            if t["dataset"] in f
        ]  # fmt: skip
        rows = int(f["progress"][0]) if "progress" in f else len(f["paths"])
        failed = list(zip(f["failed/path"].asstr()[:], f["failed/reason"].asstr()[:], strict=True))
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        complete = bool(attrs.get("complete", True))
        super().__init__(repr(str(path)), columns, rows, attrs, failed, complete)
        self._file = f

    @property
    def paths(self) -> np.ndarray:
        return np.array(self._file["paths"].asstr()[: self.rows], dtype=str)

    def _blocks(self, column: _Column, rows: int) -> Iterator[np.ndarray]:
        ds = self._file[column.name]
        for i in range(0, self.rows, rows):
            yield ds[i : min(i + rows, self.rows)]

    def _attached(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if ATTACHED in self._file:

            def visit(name: str, obj: Any) -> None:
                if hasattr(obj, "shape"):
                    found[name] = lambda: np.asarray(obj[()])

            self._file[ATTACHED].visititems(visit)
        return found

    def close(self) -> None:
        self._file.close()


def _npz_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member: memory-mapped when stored uncompressed, else read whole."""
    if info.compress_type != zipfile.ZIP_STORED:
        with zf.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)  # the local file header; its name and extra field follow
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if dtype.hasobject or int(np.prod(shape, dtype=np.int64)) == 0:
        with zf.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    mapped: np.ndarray = np.memmap(
        str(path), dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape),
        order="F" if fortran else "C",
    )  # fmt: skip
    return mapped


class _NPZReader(FeatureReader):
    format = "npz"

    def __init__(self, path: Path) -> None:
        try:
            zf = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise FeatureFileError(f"cannot read {str(path)!r} as NPZ: {exc}") from exc
        with zf:
            members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
            if "__layertap__" not in members:
                raise _not_ours(path, "an NPZ file without layertap's __layertap__ record")
            arrays = {k: _npz_member(path, zf, i) for k, i in members.items()}
        attrs: dict[str, Any] = json.loads(str(arrays["__layertap__"]))
        taps: dict[str, Any] = json.loads(attrs.get("taps", "{}"))
        ids = arrays.get("paths", np.zeros(0, str))
        columns = [
            _Column(k, t["dataset"], tuple(arrays[t["dataset"]].shape[1:]),
                    arrays[t["dataset"]].dtype.name, t.get("layer", ""))
            for k, t in taps.items()
            if t["dataset"] in arrays and len(arrays[t["dataset"]]) == len(ids)
        ]  # fmt: skip
        failed = list(
            zip(
                np.asarray(arrays.get("failed_path", [])).tolist(),
                np.asarray(arrays.get("failed_reason", [])).tolist(),
                strict=True,
            )
        )
        super().__init__(repr(str(path)), columns, len(ids), attrs, failed)
        self._arrays = arrays

    @property
    def paths(self) -> np.ndarray:
        return np.asarray(self._arrays["paths"]).astype(str)

    def _blocks(self, column: _Column, rows: int) -> Iterator[np.ndarray]:
        array = self._arrays[column.name]
        for i in range(0, len(array), rows):
            yield array[i : i + rows]

    def _attached(self) -> dict[str, Any]:
        prefix = ATTACHED + "/"
        return {
            k.removeprefix(prefix): (lambda v=v: np.asarray(v))
            for k, v in self._arrays.items()
            if k.startswith(prefix)
        }

    def close(self) -> None:
        self._arrays = {}


class _ParquetReader(FeatureReader):
    """One Parquet file, or the part files of a Ray folder, read as one table in order."""

    format = "parquet"

    def __init__(self, source: str, files: Sequence[Path], attrs: Mapping[str, Any]) -> None:
        pq = require("pyarrow.parquet", "parquet", "reading Parquet")
        self._pq = pq
        self._files = list(files)
        schema = pq.read_schema(self._files[0])
        columns = []
        for field in schema:
            meta = field.metadata or {}
            if field.name == "path" or b"key" not in meta:
                continue
            shape = tuple(int(d) for d in json.loads(meta[b"shape"]))
            columns.append(
                _Column(meta[b"key"].decode(), field.name, shape, meta[b"dtype"].decode(),
                        meta.get(b"layer", b"").decode())
            )  # fmt: skip
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in self._files)
        failed = [(str(p), str(r)) for p, r in attrs.get("failed", [])]
        super().__init__(source, columns, rows, attrs, failed)

    @property
    def paths(self) -> np.ndarray:
        parts = [self._pq.read_table(f, columns=["path"])["path"].to_pylist() for f in self._files]
        return np.array([p for part in parts for p in part], dtype=str)

    def _blocks(self, column: _Column, rows: int) -> Iterator[np.ndarray]:
        for f in self._files:
            for batch in self._pq.ParquetFile(f).iter_batches(
                batch_size=rows, columns=[column.name]
            ):
                values = batch.column(0).flatten().to_numpy(zero_copy_only=False)
                block = values.reshape(batch.num_rows, *column.shape)
                yield block.astype(column.dtype, copy=False)

    def _attached(self) -> dict[str, Any]:
        prefix = PARQUET_ATTACHED.encode()
        meta = self._pq.read_schema(self._files[0]).metadata or {}

        def load(raw: bytes) -> np.ndarray:
            return np.asarray(np.load(io.BytesIO(base64.b64decode(raw)), allow_pickle=False))

        return {
            k[len(prefix) :].decode(): (lambda raw=raw: load(raw))
            for k, raw in meta.items()
            if k.startswith(prefix)
        }


def _parquet_file(path: Path) -> FeatureReader:
    pq = require("pyarrow.parquet", "parquet", "reading Parquet")
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as exc:  # pyarrow raises its own ArrowInvalid (a ValueError), OSError
        raise FeatureFileError(f"cannot read {str(path)!r} as Parquet: {exc}") from exc
    if b"layertap" not in meta:
        raise _not_ours(path, "a Parquet file without layertap's schema metadata")
    return _ParquetReader(repr(str(path)), [path], json.loads(meta[b"layertap"]))


def _ray_folder(path: Path) -> FeatureReader:
    summary = path / _SUMMARY
    if not summary.is_file():
        if any(path.glob("part-*.parquet")):
            raise FeatureFileError(
                f"{str(path)!r} is the output of a Ray run that did not finish (no {_SUMMARY}); "
                "run the same extract again to complete it"
            )
        raise _not_ours(path, f"a folder without {_SUMMARY}")
    try:
        attrs: dict[str, Any] = json.loads(summary.read_text())
        parts = [path / name for name in attrs["parts"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise _not_ours(path, f"a folder whose {_SUMMARY} is not layertap's ({exc})") from exc
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise FeatureFileError(f"{str(path)!r} lacks parts its {_SUMMARY} lists: {missing}")
    reader = _ParquetReader(repr(str(path)), parts, attrs)
    reader.format = "ray"
    return reader


def _not_ours(path: Path, what: str) -> FeatureFileError:
    return FeatureFileError(
        f"{str(path)!r} is not a layertap feature file ({what}); expected {_WHAT}"
    )


def _open_path(path: Path) -> FeatureReader:
    if not path.exists():
        raise FeatureFileError(f"no such feature file or folder: {str(path)!r}")
    if path.is_dir():
        return _ray_folder(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_HDF5_MAGIC):
        return _HDF5Reader(path)
    if head.startswith(b"PK"):
        return _NPZReader(path)
    if head.startswith(b"PAR1"):
        return _parquet_file(path)
    raise _not_ours(path, "neither HDF5, NPZ nor Parquet")


def open_features(source: Any) -> FeatureReader:
    """A :class:`FeatureReader` of ``source``: anything :func:`layertap.extract` wrote.

    ``source`` is a feature file (``.h5``, ``.npz``, ``.parquet``, recognised by its
    content), a Ray output folder, an :class:`~layertap.ExtractResult` (or the Ray
    engine's result), :class:`~layertap.Features`, a ``{key: array}`` dict (a
    ``"paths"`` entry gives the rows' sources), or a reader (returned as it is).

    Example:
        >>> r = open_features({"emb": np.zeros((3, 4)), "paths": ["a", "b", "c"]})
        >>> r.keys, r.paths.tolist()
        (['emb'], ['a', 'b', 'c'])
        >>> r.chunks("embedding")
        Traceback (most recent call last):
        ...
        layertap._errors.FeatureFileError: the dict of arrays has no key 'embedding' (close: \
emb); its keys: emb
    """
    if isinstance(source, FeatureReader):
        return source
    if isinstance(source, Mapping):
        return _ArrayReader(source)
    if isinstance(source, str | os.PathLike):
        return _open_path(Path(source))
    path = getattr(source, "path", None)
    if path is not None and hasattr(source, "rows"):  # ExtractResult, RayResult
        return _open_path(Path(path))
    raise FeatureFileError(
        f"cannot read features from a {type(source).__name__}; give {_WHAT}, "
        "an ExtractResult, Features or a dict of arrays"
    )
