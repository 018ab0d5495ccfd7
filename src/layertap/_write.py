"""Stage 7 (minimal), write: batches of features -> an HDF5 or NPZ file, rows aligned with paths.

The format is chosen by the output file's suffix: ``.h5`` / ``.hdf5`` or ``.npz``.
A run writes to a hidden ``.NAME.partial`` file beside the output and renames it
when the run ends, so a crashed run never leaves a file that looks complete.

**Dataset names.** A tap's key (an alias or a canonical path such as
``backbone/block_1_conv`` or ``encoder@1/conv``) is kept verbatim in the file's
metadata; its array is stored under a *safe name* derived from the key
(:func:`safe_name`): each ``/`` becomes ``.``, every character other than
letters, digits, ``_``, ``-``, ``.`` and ``@`` becomes ``_``, and a name that
clashes with another tap or a reserved name gets ``_2``, ``_3``, ... appended.
So ``backbone/block_1_conv`` is stored as ``backbone.block_1_conv``.

**HDF5 layout** (read it with h5py)::

    /<safe name>      one dataset per tap, rows = images, chunked and resizable;
                      attributes "key" (the tap's key) and "layer" (its canonical path)
    /paths            the source file of every row (UTF-8 strings)
    /failed/path      files that were skipped ...
    /failed/reason    ... and why (UTF-8 strings)
    attributes        "model" (model file), "layers" (JSON {key: spec as given}),
                      "taps" (JSON {key: {"dataset", "layer", "shape", "dtype"}}),
                      "preprocessing" (JSON), "layertap_version", "rows"

**NPZ layout** (read it with ``numpy.load``): the same arrays under the same safe
names, ``paths``, ``failed_path``, ``failed_reason``, and ``__layertap__``, a JSON
string holding the attributes above. NPZ collects every batch in memory and
writes once at the end; use HDF5 for large runs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layertap._errors import OutputError

if TYPE_CHECKING:
    from layertap._extractor import TapInfo

__all__ = ["SUFFIXES", "FeatureWriter", "check_output", "open_writer", "safe_name", "safe_names"]

#: Output suffix -> format name.
SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".npz": "npz"}

_RESERVED = {
    "hdf5": frozenset({"paths", "failed"}),
    "npz": frozenset({"paths", "failed_path", "failed_reason", "__layertap__"}),
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")
_CHUNK_BYTES = 1 << 20


def safe_name(key: str) -> str:
    """The dataset name a tap key is stored under (before clashes are resolved).

    Example:
        >>> safe_name("backbone/block_1_conv"), safe_name("enc@1/split:0"), safe_name("my key")
        ('backbone.block_1_conv', 'enc@1.split_0', 'my_key')
    """
    name = _UNSAFE.sub("_", key.replace("/", "."))
    return "_" + name if name.startswith(".") or not name else name


def safe_names(keys: Sequence[str], reserved: frozenset[str] = frozenset()) -> dict[str, str]:
    """``{key: unique safe name}``; a clash gets ``_2``, ``_3``, ... in key order.

    Example:
        >>> safe_names(["a/b", "a.b", "paths"], reserved=frozenset({"paths"}))
        {'a/b': 'a.b', 'a.b': 'a.b_2', 'paths': 'paths_2'}
    """
    taken = set(reserved)
    names: dict[str, str] = {}
    for key in keys:
        base = safe_name(key)
        name, i = base, 2
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        names[key] = name
    return names


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


class FeatureWriter:
    """Append batches of features with their paths; ``close`` records failures and finishes.

    Use :func:`open_writer` to make one. ``taps`` is :attr:`Extractor.outputs
    <layertap.Extractor>` (``{key: TapInfo}``); ``meta`` holds the run's
    attributes (``model``, ``layers``, ``preprocessing``, ``layertap_version``).

    Attributes:
        path: the output file.
        names: ``{key: dataset name}``.
        rows: rows written so far.
        shapes: ``{dataset name: shape}`` of what was written so far.
    """

    format = "abstract"

    def __init__(self, path: Path, taps: Mapping[str, TapInfo], meta: Mapping[str, Any]) -> None:
        self.path = path
        self.taps = {key: info.path for key, info in taps.items()}
        self.meta = dict(meta)
        self.names = safe_names(list(taps), _RESERVED[self.format])
        self.rows = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self._partial = _partial_path(path)
        # Rows of a known shape get their (empty) array up front, so even a run in
        # which every input fails writes every tap.
        for key, info in taps.items():
            row = tuple(info.shape[1:])
            if all(isinstance(d, int) for d in row):
                name = self.names[key]
                self.shapes[name] = (0, *(int(d) for d in row if d is not None))
                self.dtypes[name] = np.dtype(info.dtype).name

    def _check(self, paths: Sequence[str], features: Mapping[str, np.ndarray]) -> None:
        missing = [k for k in self.taps if k not in features]
        if missing:
            raise ValueError(f"batch lacks the taps {missing!r}")
        for key in self.taps:
            if len(features[key]) != len(paths):
                raise ValueError(
                    f"tap {key!r} has {len(features[key])} rows for {len(paths)} paths"
                )

    def _taps_json(self) -> str:
        return json.dumps(
            {
                key: {
                    "dataset": self.names[key],
                    "layer": self.taps[key],
                    "shape": list(self.shapes.get(self.names[key], ())),
                    "dtype": self.dtypes.get(self.names[key], ""),
                }
                for key in self.taps
            }
        )

    def _attrs(self) -> dict[str, Any]:
        attrs = {
            k: v if isinstance(v, str | int | float) else json.dumps(v)
            for k, v in self.meta.items()
        }
        attrs["taps"] = self._taps_json()
        attrs["rows"] = self.rows
        return attrs

    def write(self, paths: Sequence[str], features: Mapping[str, np.ndarray]) -> None:
        """Append one batch: ``features[key]`` has one row per entry of ``paths``."""
        raise NotImplementedError

    def close(self, failed: Sequence[tuple[str, str]] = ()) -> None:
        """Record ``failed`` as ``(path, reason)`` pairs and move the file into place."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the partial file (after an error); the output path is left untouched."""
        self._partial.unlink(missing_ok=True)


class _HDF5Writer(FeatureWriter):
    format = "hdf5"

    def __init__(self, path: Path, taps: Mapping[str, TapInfo], meta: Mapping[str, Any]) -> None:
        import h5py

        super().__init__(path, taps, meta)
        self._h5 = h5py
        self._file = h5py.File(self._partial, "w")
        text = h5py.string_dtype(encoding="utf-8")
        self._paths = self._file.create_dataset(
            "paths", shape=(0,), maxshape=(None,), dtype=text, chunks=(1024,)
        )
        for key, name in self.names.items():
            if name in self.shapes:
                self._create(key, self.shapes[name][1:], np.dtype(self.dtypes[name]))

    def _create(self, key: str, row: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
        name = self.names[key]
        row_bytes = max(1, int(np.prod(row, dtype=np.int64)) * dtype.itemsize)
        chunk_rows = max(1, min(1024, _CHUNK_BYTES // row_bytes))
        ds = self._file.create_dataset(
            name,
            shape=(0, *row),
            maxshape=(None, *row),
            dtype=dtype,
            chunks=(chunk_rows, *row),
        )
        ds.attrs["key"] = key
        ds.attrs["layer"] = self.taps[key]
        self.dtypes[name] = dtype.name
        return ds

    def _dataset(self, key: str, batch: np.ndarray) -> Any:
        name = self.names[key]
        if name not in self._file:
            return self._create(key, tuple(batch.shape[1:]), batch.dtype)
        return self._file[name]

    def write(self, paths: Sequence[str], features: Mapping[str, np.ndarray]) -> None:
        self._check(paths, features)
        n = len(paths)
        if n == 0:
            return
        for key in self.taps:
            batch = np.asarray(features[key])
            ds = self._dataset(key, batch)
            ds.resize(self.rows + n, axis=0)
            ds[self.rows :] = batch
            self.shapes[ds.name.lstrip("/")] = tuple(ds.shape)
        self._paths.resize(self.rows + n, axis=0)
        self._paths[self.rows :] = list(paths)
        self.rows += n

    def close(self, failed: Sequence[tuple[str, str]] = ()) -> None:
        text = self._h5.string_dtype(encoding="utf-8")
        group = self._file.create_group("failed")
        group.create_dataset("path", data=[p for p, _ in failed], dtype=text, shape=(len(failed),))
        group.create_dataset(
            "reason", data=[r for _, r in failed], dtype=text, shape=(len(failed),)
        )
        for k, v in self._attrs().items():
            self._file.attrs[k] = v
        self._file.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        if self._file.id.valid:
            self._file.close()
        super().abort()


class _NPZWriter(FeatureWriter):
    format = "npz"

    def __init__(self, path: Path, taps: Mapping[str, TapInfo], meta: Mapping[str, Any]) -> None:
        super().__init__(path, taps, meta)
        self._batches: dict[str, list[np.ndarray]] = {key: [] for key in taps}
        self._paths: list[str] = []
        self._partial.touch()  # claim the name, and fail early on an unwritable folder

    def write(self, paths: Sequence[str], features: Mapping[str, np.ndarray]) -> None:
        self._check(paths, features)
        for key in self.taps:
            batch = np.asarray(features[key])
            self._batches[key].append(batch)
            name = self.names[key]
            self.shapes[name] = (self.rows + len(paths), *batch.shape[1:])
            self.dtypes[name] = batch.dtype.name
        self._paths.extend(paths)
        self.rows += len(paths)

    def close(self, failed: Sequence[tuple[str, str]] = ()) -> None:
        arrays: dict[str, np.ndarray] = {}
        for key, parts in self._batches.items():
            name = self.names[key]
            if parts:
                arrays[name] = np.concatenate(parts)
            else:  # no input decoded: an empty array of the tap's shape, when known
                shape = self.shapes.get(name, (0,))
                arrays[name] = np.zeros(shape, self.dtypes.get(name, "float32"))
        arrays["paths"] = np.array(self._paths, dtype=str)
        arrays["failed_path"] = np.array([p for p, _ in failed], dtype=str)
        arrays["failed_reason"] = np.array([r for _, r in failed], dtype=str)
        arrays["__layertap__"] = np.array(json.dumps(self._attrs()))
        with open(self._partial, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(self._partial, self.path)


def check_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> str:
    """Return the format for ``path`` (``"hdf5"`` or ``"npz"``), or raise saying why not.

    Raises :class:`~layertap.OutputError` for an unknown suffix, a folder, or an
    existing file when ``overwrite`` is false.

    Example:
        >>> check_output("feats.npz")
        'npz'
    """
    path = Path(path)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(
            f"output file {str(path)!r} has an unknown suffix {path.suffix!r}; "
            f"layertap writes {', '.join(SUFFIXES)}"
        )
    if path.is_dir():
        raise OutputError(f"output path {str(path)!r} is a folder, not a file")
    if path.exists() and not overwrite:
        raise OutputError(
            f"output file {str(path)!r} exists; remove it or pass overwrite=True (--overwrite)"
        )
    return fmt


def open_writer(
    path: str | os.PathLike[str],
    taps: Mapping[str, TapInfo],
    meta: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> FeatureWriter:
    """Open a writer for ``path``, its format chosen by the suffix (.h5, .hdf5, .npz).

    Raises :class:`~layertap.OutputError` for an unknown suffix, or when ``path``
    exists and ``overwrite`` is false. Missing parent folders are created.

    Example:
        >>> import tempfile, h5py
        >>> from layertap import TapInfo
        >>> out = Path(tempfile.mkdtemp()) / "f.h5"
        >>> taps = {"emb": TapInfo("emb", "embedding", (None, 4), "float32")}
        >>> w = open_writer(out, taps, {"model": "m.keras"})
        >>> w.write(["a.png", "b.png"], {"emb": np.ones((2, 4), "float32")})
        >>> w.close([("c.png", "cannot identify image file")])
        >>> with h5py.File(out) as f:
        ...     f["emb"].shape, f["emb"].attrs["key"], list(f["failed/path"].asstr())
        ((2, 4), 'emb', ['c.png'])
    """
    path = Path(path)
    fmt = check_output(path, overwrite=overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "hdf5":
            return _HDF5Writer(path, taps, meta)
        return _NPZWriter(path, taps, meta)
    except OSError as exc:
        raise OutputError(f"cannot write output file {str(path)!r}: {exc}") from exc
