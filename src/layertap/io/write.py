"""Stage 7, write: batches of features -> HDF5, NPZ or Parquet, resumable, bounded memory.

The format is chosen by the output file's suffix (``.h5`` / ``.hdf5``, ``.npz``,
``.parquet`` / ``.pq``) or given explicitly.

**Resumable.** Every run writes an HDF5 file batch by batch: the output itself for
HDF5, a hidden *spool* ``.NAME.partial.h5`` beside the output for NPZ and Parquet,
which is converted (streaming, chunk by chunk) when the run ends and then removed.
After each batch the rows, the failed inputs and a ``progress`` record
(``[rows written, inputs consumed, failures recorded]``) are written and the file is
flushed, so a run that is interrupted, even by SIGKILL, leaves a readable file whose
``progress`` says how far it got. The file also holds the run's *fingerprint* (model
file hash, taps, reducers, preprocessing, a hash of the input list). Opening a writer
on an existing file with the same fingerprint resumes it: rows beyond ``progress``
are cut and the run goes on from the next input. A file with another fingerprint is
refused (:class:`~layertap.OutputError`) unless ``overwrite`` is true; a finished
file with the same fingerprint is left as it is.

**Dataset names.** A tap's key (an alias or a canonical path such as
``backbone/block_1_conv``) is kept verbatim in the metadata; its array is stored
under its column-safe name from the run's :class:`~layertap.io.schema.TapSchema`,
which also gives every row shape and dtype.

**HDF5 layout** (read it with h5py)::

    /<safe name>      one dataset per tap, rows = inputs, chunked and resizable;
                      attributes "key" (the tap's key) and "layer" (its canonical path)
    /paths            the source of every row (UTF-8 strings), in row order
    /failed/path      inputs that were skipped ...
    /failed/reason    ... and why (UTF-8 strings)
    /progress         int64 [rows, inputs consumed, failures]
    /__attached__/... arrays that are not rows (:meth:`FeatureWriter.attach`)
    attributes        "model", "layers", "pool", "preprocessing", "layertap_version",
                      "taps" (JSON {key: {"dataset", "layer", "shape", "dtype", "pool"}}),
                      "fingerprint" (JSON), "rows", "complete" (false until the run ends)

**NPZ layout** (``numpy.load``): the same arrays under the same names, ``paths``,
``failed_path``, ``failed_reason``, and ``__layertap__``, a JSON string holding the
attributes; attached arrays are the members ``__attached__/NAME``.

**Parquet layout** (:func:`~layertap.io.schema.parquet_schema`): one row per input;
a ``path`` column (string) and one column per tap named by its safe name, a fixed-size list of
float32 (``halffloat`` for a run with ``dtype="float16"``) holding the row flattened in C
order; each tap field's metadata records
its ``key``, ``layer``, ``shape`` and source ``dtype``, and the schema metadata key
``layertap`` holds the attributes and the failed inputs as JSON; each attached array
is the schema metadata key ``layertap.attached:NAME`` (a base64 ``.npy``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layertap._errors import OutputError, require
from layertap.io.schema import TapColumn, TapSchema, parquet_schema, parquet_table

__all__ = ["ATTACHED", "FORMATS", "SUFFIXES", "FeatureWriter", "check_output", "open_writer"]

#: Output suffix -> format name.
SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}
FORMATS = ("hdf5", "npz", "parquet")

#: Where attached arrays are kept: an HDF5 group, an NPZ member prefix, and (with
#: ``.parquet``) the prefix of a schema metadata key.
ATTACHED = "__attached__"
PARQUET_ATTACHED = "layertap.attached:"
_CHUNK_BYTES = 1 << 20
_COPY_BYTES = 16 << 20  # rows copied per step when a spool is converted


def output_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The format for ``path``: ``fmt`` if given, else from the suffix.

    Example:
        >>> output_format("f.parquet"), output_format("f.bin", "npz")
        ('parquet', 'npz')
    """
    path = Path(path)
    if fmt is not None:
        if fmt not in FORMATS:
            raise OutputError(f"unknown output format {fmt!r}; valid: {', '.join(FORMATS)}")
        return fmt
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise OutputError(
            f"output file {str(path)!r} has an unknown suffix {path.suffix!r}; "
            f"layertap writes {', '.join(SUFFIXES)} (or pass format=/--format)"
        )
    return found


def check_output(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """Return the format for ``path``, or raise :class:`~layertap.OutputError` saying why not.

    Example:
        >>> check_output("feats.npz")
        'npz'
    """
    path = Path(path)
    found = output_format(path, fmt)
    if path.is_dir():
        raise OutputError(f"output path {str(path)!r} is a folder, not a file")
    return found


def _spool_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial.h5")


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _refuse(path: Path, why: str) -> OutputError:
    return OutputError(
        f"output file {str(path)!r} exists and {why}; it is neither overwritten nor "
        "appended to: remove it, choose another output, or pass overwrite=True (--overwrite)"
    )


class FeatureWriter:
    """Append batches of features with their ids; resumable; ``close`` finishes the file.

    Use :func:`open_writer` to make one. After opening, :attr:`inputs_done` is the
    number of inputs a previous run already consumed (0 for a new file), and
    :attr:`complete` is true when the file is already finished.

    Attributes:
        path: the output file.
        format: ``"hdf5"``, ``"npz"`` or ``"parquet"``.
        names: ``{key: dataset name}``.
        rows: rows written so far (including a previous run's).
        inputs_done: inputs consumed so far (rows plus failures).
        failed: ``(id, reason)`` of every failed input so far.
        shapes: ``{dataset name: shape}`` of what was written so far.
        resumed: rows found from a previous run.
    """

    def __init__(
        self,
        path: Path,
        fmt: str,
        schema: TapSchema,
        meta: Mapping[str, Any],
        fingerprint: Mapping[str, Any] | None,
        *,
        overwrite: bool,
    ) -> None:
        import h5py

        self._h5 = h5py
        self.path = path
        self.format = fmt
        self.schema = schema
        self.columns = schema.by_key()
        self.meta = dict(meta)
        self.fingerprint = dict(fingerprint) if fingerprint is not None else None
        self.names = {c.key: c.name for c in schema}
        self.rows = 0
        self.inputs_done = 0
        self.resumed = 0
        self.complete = False
        self.failed: list[tuple[str, str]] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self.spool = path if fmt == "hdf5" else _spool_path(path)
        self._file: Any = None
        if overwrite:
            path.unlink(missing_ok=True)
            self.spool.unlink(missing_ok=True)
        elif fmt != "hdf5" and path.exists():
            self._adopt_finished()
            return
        if self.spool.exists():
            self._file = self._resume()
            if self._file is None:  # a finished HDF5 file from the same run
                return
        else:
            self._file = self._create()
        # Taps of a known row shape get their (empty) dataset up front, so even a run
        # in which every input fails writes every tap.
        for c in schema:
            if c.name not in self._file and c.known:
                self._dataset(c, tuple(int(d) for d in c.shape if d is not None), c.dtype)
        self._file.flush()

    # --- opening ------------------------------------------------------------------

    def _adopt_finished(self) -> None:
        """A finished NPZ / Parquet file of the same run: nothing more to do."""
        found = _read_finished(self.path, self.format)
        self._accept(self.path, found and found["fingerprint"])
        found = found or {}
        self.rows = self.resumed = self.inputs_done = found["rows"]
        self.failed, self.shapes = found["failed"], found["shapes"]
        self.complete = True

    def _accept(self, path: Path, old: Mapping[str, Any] | None) -> None:
        if old is None:
            raise _refuse(path, "was not written by layertap (or by an older version)")
        if self.fingerprint is None:
            raise _refuse(path, "these inputs (an iterable or dataset) cannot be matched to it")
        diff = _differences(old, self.fingerprint)
        if diff:
            raise _refuse(path, f"was written by a different run (differs in: {', '.join(diff)})")

    def _create(self) -> Any:
        h5py = self._h5
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = h5py.File(self.spool, "w")
        except OSError as exc:
            raise OutputError(f"cannot write output file {str(self.path)!r}: {exc}") from exc
        text = h5py.string_dtype(encoding="utf-8")
        f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=text, chunks=(1024,))
        for name in ("path", "reason"):
            f.create_dataset(f"failed/{name}", (0,), maxshape=(None,), dtype=text, chunks=(256,))
        f.create_dataset("progress", data=np.zeros(3, np.int64))
        f.attrs["fingerprint"] = json.dumps(self.fingerprint)
        f.attrs["complete"] = False
        for k, v in self._attrs().items():
            f.attrs[k] = v
        return f

    def _resume(self) -> Any:
        try:
            f = self._h5.File(self.spool, "r")
        except OSError as exc:
            raise _refuse(self.spool, f"cannot be read as HDF5 ({exc})") from exc
        with f:
            raw = f.attrs.get("fingerprint")
            old = json.loads(raw) if isinstance(raw, str) else None
            self._accept(self.spool, old)
            rows, inputs, nfailed = (int(v) for v in f["progress"][:])
            self.complete = bool(f.attrs.get("complete", False)) and self.format == "hdf5"
        # A finished HDF5 is only read; else cut whatever a killed run wrote after
        # its last committed batch, and go on from there.
        f = self._h5.File(self.spool, "r" if self.complete else "r+")
        for name in self.names.values():
            if name in f:
                if not self.complete:
                    f[name].resize(rows, axis=0)
                self.shapes[name] = tuple(f[name].shape)
                self.dtypes[name] = f[name].dtype.name
        if not self.complete:
            f["paths"].resize(rows, axis=0)
            for part in ("path", "reason"):
                f[f"failed/{part}"].resize(nfailed, axis=0)
        self.failed = list(
            zip(f["failed/path"].asstr()[:], f["failed/reason"].asstr()[:], strict=True)
        )
        self.rows = self.resumed = rows
        self.inputs_done = inputs
        if self.complete:
            f.close()
            return None
        return f

    def _dataset(self, column: TapColumn, row: tuple[int, ...], dtype: str) -> Any:
        name = column.name
        dt = np.dtype(dtype)
        row_bytes = max(1, int(np.prod(row, dtype=np.int64)) * dt.itemsize)
        chunk_rows = max(1, min(1024, _CHUNK_BYTES // row_bytes))
        ds = self._file.create_dataset(
            name, shape=(0, *row), maxshape=(None, *row), dtype=dt, chunks=(chunk_rows, *row)
        )
        ds.attrs["key"] = column.key
        ds.attrs["layer"] = column.layer
        self.shapes[name] = (0, *row)
        self.dtypes[name] = dt.name
        return ds

    # --- writing ------------------------------------------------------------------

    def _attrs(self) -> dict[str, Any]:
        attrs = {
            k: v if isinstance(v, str | int | float) else json.dumps(v)
            for k, v in self.meta.items()
        }
        # What was written: a tap that never got a dataset has no shape and no dtype.
        attrs["taps"] = json.dumps(
            {
                c.key: {
                    "dataset": c.name,
                    "layer": c.layer,
                    "shape": list(self.shapes.get(c.name, ())),
                    "dtype": self.dtypes.get(c.name, ""),
                    "pool": c.reducer,
                    **({"storage": c.storage} if c.storage != "float32" else {}),
                }
                for c in self.schema
            }
        )
        attrs["rows"] = self.rows
        return attrs

    def write(
        self,
        ids: Sequence[str],
        features: Mapping[str, np.ndarray],
        failed: Sequence[tuple[str, str]] = (),
        inputs_done: int | None = None,
    ) -> None:
        """Append one batch and commit it: rows, failures, then progress, then flush.

        ``features[key]`` has one row per id; ``inputs_done`` is the number of
        inputs consumed up to the end of this batch (default: one per row and failure).
        """
        n = len(ids)
        for key in self.names:
            if len(features[key]) != n:
                raise ValueError(f"tap {key!r} has {len(features[key])} rows for {n} ids")
        f = self._file
        if n:
            for key, column in self.columns.items():
                batch = np.asarray(features[key])
                name = column.name
                ds = (
                    f[name]
                    if name in f
                    else self._dataset(column, batch.shape[1:], batch.dtype.name)
                )
                ds.resize(self.rows + n, axis=0)
                ds[self.rows :] = batch
                self.shapes[name] = tuple(ds.shape)
            f["paths"].resize(self.rows + n, axis=0)
            f["paths"][self.rows :] = list(ids)
        if failed:
            k = len(self.failed)
            for part, values in (
                ("path", [p for p, _ in failed]),
                ("reason", [r for _, r in failed]),
            ):
                f[f"failed/{part}"].resize(k + len(failed), axis=0)
                f[f"failed/{part}"][k:] = values
            self.failed.extend(failed)
        self.rows += n
        self.inputs_done = (
            inputs_done if inputs_done is not None else self.inputs_done + n + len(failed)
        )
        f.flush()  # the rows first, then the record that commits them
        f["progress"][:] = [self.rows, self.inputs_done, len(self.failed)]
        f.flush()

    def close(self) -> None:
        """Finish: mark the HDF5 complete, or convert the spool to NPZ / Parquet."""
        if self._file is not None:
            for k, v in self._attrs().items():
                self._file.attrs[k] = v
            self._file.attrs["complete"] = True
            self._file.close()
            self._file = None
        if self.format != "hdf5" and not self.complete:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            try:
                if self.format == "npz":
                    _spool_to_npz(self.spool, tmp)
                else:
                    _spool_to_parquet(self.spool, tmp)
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
            self.spool.unlink()
        self.complete = True

    def attach(self, name: str, array: np.ndarray) -> None:
        """Store ``array`` (not rows: a fitted reducer's components, say) under ``name``.

        Kept beside the taps and read back by :meth:`~layertap.io.read.FeatureReader.attached`;
        attaching a name again replaces it. Parquet keeps it in its footer (small arrays).
        """
        if self._file is None:  # a finished file: it has them already
            return
        where = f"{ATTACHED}/{name}"
        if where in self._file:
            del self._file[where]
        self._file.create_dataset(where, data=np.asarray(array))
        self._file.flush()

    def abort(self) -> None:
        """Close the file as it is (after an error or an interrupt); it can be resumed."""
        if self._file is not None:
            self._file.close()
            self._file = None


# --- spool conversion -------------------------------------------------------------------


def _chunks(ds: Any) -> Iterator[tuple[int, int]]:
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    step = max(1, _COPY_BYTES // row_bytes)
    for i in range(0, len(ds), step):
        yield i, min(i + step, len(ds))


def _spool_meta(f: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    taps: dict[str, Any] = json.loads(attrs["taps"])
    return attrs, taps


def _write_npy(
    zf: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: Any, parts: Any
) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": shape,
        }
        np.lib.format.write_array_header_2_0(out, header)
        for part in parts:
            out.write(np.ascontiguousarray(part, dtype=dtype).tobytes())


def _write_strings(zf: zipfile.ZipFile, name: str, ds: Any) -> None:
    width = 1
    for i, j in _chunks(ds):
        width = max(width, *(len(s) for s in ds.asstr()[i:j]), 1)
    parts = (np.array(ds.asstr()[i:j], dtype=f"<U{width}") for i, j in _chunks(ds))
    _write_npy(zf, name, (len(ds),), f"<U{width}", parts)


def _spool_to_npz(spool: Path, out: Path) -> None:
    import h5py

    with h5py.File(spool, "r") as f, zipfile.ZipFile(out, "w", allowZip64=True) as zf:
        attrs, taps = _spool_meta(f)
        for tap in taps.values():
            ds = f[tap["dataset"]] if tap["dataset"] in f else None
            if ds is None:
                _write_npy(zf, tap["dataset"], (0,), "float32", [])
                continue
            parts = (ds[i:j] for i, j in _chunks(ds))
            _write_npy(zf, tap["dataset"], tuple(ds.shape), ds.dtype, parts)
        _write_strings(zf, "paths", f["paths"])
        _write_strings(zf, "failed_path", f["failed/path"])
        _write_strings(zf, "failed_reason", f["failed/reason"])
        for name, array in _attached(f).items():
            _write_npy(zf, f"{ATTACHED}/{name}", array.shape, array.dtype, [array])
        info = np.array(json.dumps(attrs))
        _write_npy(zf, "__layertap__", (), info.dtype, [info])


def _attached(f: Any) -> dict[str, np.ndarray]:
    """``{name: array}`` of everything attached to an HDF5 spool."""
    found: dict[str, np.ndarray] = {}
    if ATTACHED in f:
        f[ATTACHED].visititems(
            lambda name, obj: found.__setitem__(name, obj[()]) if hasattr(obj, "shape") else None
        )
    return found


def _parquet_attached(arrays: Mapping[str, np.ndarray]) -> dict[bytes, bytes]:
    out = {}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        out[(PARQUET_ATTACHED + name).encode()] = base64.b64encode(buffer.getvalue())
    return out


def _spool_schema(f: Any, taps: Mapping[str, Any]) -> TapSchema:
    """The schema of the taps a spool holds a dataset for (shapes as written)."""
    return TapSchema(
        tuple(
            TapColumn(
                key,
                t["layer"],
                t["dataset"],
                tuple(f[t["dataset"]].shape[1:]),
                t["dtype"],
                t["pool"],
                t.get("storage", "float32"),
            )
            for key, t in taps.items()
            if t["dataset"] in f
        )
    )


def _spool_to_parquet(spool: Path, out: Path) -> None:
    import h5py
    import pyarrow.parquet as pq

    with h5py.File(spool, "r") as f:
        attrs, taps = _spool_meta(f)
        schema = _spool_schema(f, taps)
        failed = list(zip(f["failed/path"].asstr()[:], f["failed/reason"].asstr()[:], strict=True))
        arrow_schema = parquet_schema(schema, {**attrs, "failed": failed})
        arrow_schema = arrow_schema.with_metadata(
            {**arrow_schema.metadata, **_parquet_attached(_attached(f))}
        )
        n = len(f["paths"])
        widest = max([c.size for c in schema] or [1])
        step = max(1, min(4096, _COPY_BYTES // (4 * widest)))
        with pq.ParquetWriter(out, arrow_schema) as writer:
            for i in range(0, max(n, 1), step):
                j = min(i + step, n)
                values = {c.name: f[c.name][i:j] for c in schema}
                paths = f["paths"].asstr()[i:j]
                writer.write_table(parquet_table(arrow_schema, schema, paths, values))
                if n == 0:
                    break


def _read_finished(path: Path, fmt: str) -> dict[str, Any] | None:
    """What a finished NPZ or Parquet file says of itself (``None``: not layertap's).

    Keys: ``fingerprint``, ``rows``, ``failed`` [(id, reason)], ``shapes`` {name: shape}.
    """
    try:
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as z:
                attrs = json.loads(str(z["__layertap__"]))
                failed = list(
                    zip(z["failed_path"].tolist(), z["failed_reason"].tolist(), strict=True)
                )
        else:
            import pyarrow.parquet as pq

            meta = pq.read_schema(path).metadata or {}
            attrs = json.loads(meta.get(b"layertap", b"{}"))
            failed = [tuple(item) for item in attrs.get("failed", [])]
        fingerprint = json.loads(attrs.get("fingerprint", "null"))
        taps = json.loads(attrs.get("taps", "{}"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if not isinstance(fingerprint, dict):
        return None
    return {
        "fingerprint": fingerprint,
        "rows": int(attrs.get("rows", 0)),
        "failed": failed,
        "shapes": {t["dataset"]: tuple(t["shape"]) for t in taps.values() if t.get("shape")},
    }


def open_writer(
    path: str | os.PathLike[str],
    schema: TapSchema,
    meta: Mapping[str, Any],
    *,
    fingerprint: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    format: str | None = None,
) -> FeatureWriter:
    """Open (or resume) a writer for ``path``; the format by ``format`` or the suffix.

    ``schema`` (built for that format) gives each tap's column name, row shape and
    dtype; ``meta`` holds the
    run's attributes; ``fingerprint`` identifies the run (an existing file with another
    one is refused unless ``overwrite``). Missing parent folders are created.

    Example:
        >>> import tempfile, h5py
        >>> out = Path(tempfile.mkdtemp()) / "f.h5"
        >>> from layertap.io.schema import TapInfo
        >>> schema = TapSchema.build([TapInfo("emb", "embedding", (None, 4), "float32")],
        ...                          {"emb": "keep"}, "hdf5")
        >>> w = open_writer(out, schema, {"model": "m.keras"}, fingerprint={"run": 1})
        >>> w.write(["a.png", "b.png"], {"emb": np.ones((2, 4), "float32")},
        ...         failed=[("c.png", "cannot identify image file")])
        >>> w.close()
        >>> with h5py.File(out) as f:
        ...     f["emb"].shape, f["emb"].attrs["key"], list(f["failed/path"].asstr())
        ((2, 4), 'emb', ['c.png'])
        >>> open_writer(out, schema, {}, fingerprint={"run": 1}).complete
        True
    """
    path = Path(path)
    fmt = check_output(path, format)
    if fmt == "parquet":
        require("pyarrow", "parquet", "writing Parquet")
    return FeatureWriter(path, fmt, schema, meta, fingerprint, overwrite=overwrite)
