"""Reduction that streams: a feature file -> the same file with narrower taps.

:func:`reduce` reads a feature source through :func:`~layertap.io.read.open_features` and
writes ``dst`` (HDF5, NPZ or Parquet, as its suffix says) with the same rows, ``paths``,
failed inputs and run attributes, where each reduced tap holds ``K`` values per row:

- ``pca=K``: scikit-learn's ``IncrementalPCA(n_components=K)``, fitted by ``partial_fit``
  over consecutive chunks of ``chunk`` rows (a last chunk of fewer than ``K`` rows is
  folded into the one before, as ``IncrementalPCA.fit`` batches; so the fit equals
  ``IncrementalPCA(K, batch_size=chunk).fit(X)`` on the whole array), then applied
  chunk by chunk (``transform``): two passes over the tap;
- ``projection=K``: scikit-learn's ``GaussianRandomProjection(K, random_state=seed)``,
  fitted on the feature dimension only (no row is read to fit it), applied chunk by
  chunk: one pass.

Each row is flattened first: a ``(n, h, w, c)`` tap is reduced as ``(n, h*w*c)``
(C order). Reduced values are float32 (float64 when the tap is). Memory: one chunk of
rows of every tap (``chunk`` x the sum of the taps' widths), plus the fitted components
(``K`` x width per reduced tap); never a whole tap.

**Which taps.** ``layers=None`` reduces every tap wider than ``K`` values and copies the
others (and every ``KEY.mask``) as they are; ``layers=[...]`` reduces exactly those keys
and copies the rest, so ``dst`` always holds every key of ``src``. A listed key narrower
than ``K`` (or, for PCA, with fewer rows than ``K``) is an error naming it.

**Stored with the features.** ``dst``'s attribute ``reduction`` (JSON) records the
method, ``K``, the seed, the chunk, the source and, per reduced key, its row shape
before; the fitted arrays are attached to ``dst``
(:meth:`~layertap.io.write.FeatureWriter.attach`) as ``reduction/<column>/<array>``:
PCA ``components`` (``components_``), ``mean``, ``var``, ``explained_variance``,
``explained_variance_ratio``, ``singular_values``; projection ``components`` (the
``K`` x width matrix). ``using=<reduced file>`` applies those instead of fitting, so a
later file (a test set, another model's copy) is reduced the same way
(:func:`load_reducers` gives them as fitted scikit-learn estimators).

``dst`` is written by the extraction's writer (:func:`~layertap.io.write.open_writer`):
an existing ``dst`` of another reduction is refused unless ``overwrite``; the same
reduction finished already is left as it is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layertap._errors import BadSpecError, FeatureFileError, OutputError, require
from layertap.io.read import DEFAULT_CHUNK, FeatureReader, open_features
from layertap.io.schema import RESERVED, TapColumn, TapSchema, safe_names
from layertap.io.write import check_output, open_writer

__all__ = ["METHODS", "LayerReduction", "Reduction", "load_reducers", "reduce"]

METHODS = ("pca", "projection")
_PREFIX = "reduction"
_PCA_ARRAYS = {
    "components": "components_",
    "mean": "mean_",
    "var": "var_",
    "explained_variance": "explained_variance_",
    "explained_variance_ratio": "explained_variance_ratio_",
    "singular_values": "singular_values_",
}
#: Run attributes of the source that describe the source file itself, not the run.
_OWN_ATTRS = frozenset({"taps", "rows", "complete", "fingerprint", "failed", "parts", "reduction"})


@dataclasses.dataclass(frozen=True)
class LayerReduction:
    """How one tap was reduced.

    Attributes:
        method: ``"pca"`` or ``"projection"``.
        shape: one row's shape before (it was flattened to ``dim`` values).
        components: values per row after (``K``).
        explained_variance_ratio: PCA: per component (``explained_variance_ratio_``).
        seed: projection: the ``random_state``.

    Example:
        >>> r = LayerReduction("pca", (4, 4, 8), 2, (0.5, 0.25))
        >>> r.dim, r.explained
        (128, 0.75)
    """

    method: str
    shape: tuple[int, ...]
    components: int
    explained_variance_ratio: tuple[float, ...] = ()
    seed: int | None = None

    @property
    def dim(self) -> int:
        """Values per row before (the row flattened)."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def explained(self) -> float | None:
        """PCA: the fraction of the variance the components keep (``None``: projection)."""
        return float(sum(self.explained_variance_ratio)) if self.method == "pca" else None


@dataclasses.dataclass(frozen=True)
class Reduction(Mapping[str, LayerReduction]):
    """What :func:`reduce` wrote: ``{key: LayerReduction}`` of the reduced taps.

    Attributes:
        path: the reduced file.
        format: ``"hdf5"``, ``"npz"`` or ``"parquet"``.
        rows: rows (the source's).
        layers: ``{key: LayerReduction}``, in the source's key order.
        copied: the keys copied as they are.
        source: the source, as its reader names it.
        using: the file whose components were applied (``None``: fitted here).
        already_complete: ``dst`` was this reduction, finished already.

    Example:
        >>> r = Reduction(Path("r.h5"), "hdf5", 10, {"emb": LayerReduction("projection",
        ...               (64,), 8, seed=0)}, ("logits",), "'f.h5'")
        >>> print(r.table())
        reduced 'f.h5' -> r.h5 (10 rows)
        key     method      dim  -> K  kept
        emb     projection  64   -> 8  seed 0
        logits  copied
    """

    path: Path
    format: str
    rows: int
    layers: Mapping[str, LayerReduction]
    copied: tuple[str, ...]
    source: str
    using: str | None = None
    already_complete: bool = False

    def __getitem__(self, key: str) -> LayerReduction:
        return self.layers[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def table(self) -> str:
        """One line per key: method, width before and after, variance kept (or seed)."""
        how = f", components from {self.using}" if self.using else ""
        lines = [f"reduced {self.source} -> {self.path} ({self.rows} rows{how})"]
        keys = [*self.layers, *self.copied]
        width = max([len("key"), *(len(k) for k in keys)])
        dims = [str(r.dim) for r in self.layers.values()]
        dim_width = max([len("dim"), *(len(d) for d in dims)])
        lines.append(f"{'key':<{width}}  {'method':<10}  {'dim':<{dim_width}}  -> K  kept")
        for key, r in self.layers.items():
            kept = f"{r.explained:.1%} of the variance" if r.explained is not None else ""
            kept = kept or f"seed {r.seed}"
            lines.append(
                f"{key:<{width}}  {r.method:<10}  {r.dim:<{dim_width}}  -> {r.components}  {kept}"
            )
        lines.extend(f"{key:<{width}}  copied" for key in self.copied)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@dataclasses.dataclass
class _Plan:
    """What is done to each key: its column in ``dst`` and its fitted reducer (or none)."""

    reader: FeatureReader
    columns: list[TapColumn]
    reducers: dict[str, Any]  # key -> a fitted scikit-learn estimator
    layers: dict[str, LayerReduction]
    chunk: int


def _flat(block: np.ndarray) -> np.ndarray:
    return np.asarray(block).reshape(len(block), -1)


def _fit_blocks(blocks: Iterable[np.ndarray], k: int) -> Iterator[np.ndarray]:
    """Blocks as they come, a last one of fewer than ``k`` rows folded into the one before."""
    held: np.ndarray | None = None
    for block in blocks:
        if held is not None and len(block) < k:
            held = np.concatenate([held, block])
            continue
        if held is not None:
            yield held
        held = block
    if held is not None:
        yield held


def _pca(reader: FeatureReader, key: str, k: int, chunk: int, bar: Any) -> Any:
    from sklearn.decomposition import IncrementalPCA

    pca = IncrementalPCA(n_components=k)
    for block in _fit_blocks(reader.chunks(key, rows=chunk), k):
        pca.partial_fit(_flat(block))
        bar.update(len(block))
    return pca


def _projection(dim: int, k: int, seed: int, dtype: str) -> Any:
    from sklearn.random_projection import GaussianRandomProjection

    fitted = np.dtype(dtype) if np.dtype(dtype) in (np.float32, np.float64) else np.float64
    return GaussianRandomProjection(k, random_state=seed).fit(np.zeros((1, dim), fitted))


def _check_k(reader: FeatureReader, key: str, method: str, k: int) -> None:
    dim = reader.dim(key)
    if k > dim:
        raise BadSpecError(
            f"{method}={k} is more than the {dim} values per row of {key!r} "
            f"{reader.shape(key)}; choose K <= {dim} or leave {key!r} out of layers"
        )
    if method == "pca" and k > reader.rows:
        raise BadSpecError(
            f"pca={k} is more than the {reader.rows} rows of {key!r}: PCA finds at most "
            "one component per row; choose a smaller K"
        )


def _chosen(reader: FeatureReader, layers: Sequence[str] | str | None) -> list[str] | None:
    if layers is None:
        return None
    keys = [layers] if isinstance(layers, str) else list(layers)
    for key in keys:
        reader.column(key)  # names the key and the close ones
    return keys


def _record(reader: FeatureReader) -> dict[str, Any]:
    raw = reader.attrs.get("reduction")
    if raw is None:
        raise FeatureFileError(
            f"{reader.source} holds no reduction (no 'reduction' record): give using= a "
            "file written by layertap reduce"
        )
    record: dict[str, Any] = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return record


def _stored(reader: FeatureReader, key: str, entry: Mapping[str, Any]) -> Any:
    """The fitted estimator ``entry`` (one key of a reduction record) describes."""
    name = f"{_PREFIX}/{entry['name']}"
    k = int(entry["components"])
    if entry["method"] == "projection":
        from sklearn.random_projection import GaussianRandomProjection

        est = GaussianRandomProjection(k, random_state=entry["seed"])
        est.components_ = reader.attached(f"{name}/components")
    else:
        from sklearn.decomposition import IncrementalPCA

        est = IncrementalPCA(n_components=k)
        for array, attribute in _PCA_ARRAYS.items():
            setattr(est, attribute, reader.attached(f"{name}/{array}"))
        est.n_samples_seen_ = int(entry["n_samples_seen"])
        est.noise_variance_ = float(entry["noise_variance"])
    est.n_components_ = k
    est.n_features_in_ = int(est.components_.shape[1])
    return est


def load_reducers(source: Any) -> dict[str, Any]:
    """``{key: fitted scikit-learn estimator}`` of a file :func:`reduce` wrote.

    ``IncrementalPCA`` or ``GaussianRandomProjection`` rebuilt from the stored arrays;
    their ``transform`` takes rows flattened (``x.reshape(len(x), -1)``).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "r.npz"
        >>> x = np.random.default_rng(0).normal(size=(20, 6))
        >>> _ = reduce({"emb": x}, out, pca=2)
        >>> est = load_reducers(out)["emb"]
        >>> type(est).__name__, est.transform(x[:3]).shape
        ('IncrementalPCA', (3, 2))
    """
    require("sklearn", "analysis", "reduction")
    with open_features(source) as reader:
        record = _record(reader)
        return {key: _stored(reader, key, e) for key, e in record["layers"].items()}


def _using(reader: FeatureReader, using: Any, keys: list[str] | None) -> dict[str, Any]:
    """The reducers ``using`` holds for ``keys`` (default: every key it reduced), checked."""
    with open_features(using) as other:
        record = _record(other)
        stored: Mapping[str, Any] = record["layers"]
        wanted = list(stored) if keys is None else keys
        out = {}
        for key in wanted:
            if key not in stored:
                have = ", ".join(stored) or "none"
                raise FeatureFileError(
                    f"{other.source} has no components for {key!r} (it reduced: {have})"
                )
            reader.column(key)
            est = _stored(other, key, stored[key])
            if est.n_features_in_ != reader.dim(key):
                raise FeatureFileError(
                    f"{key!r} has {reader.dim(key)} values per row in {reader.source}, but "
                    f"the components in {other.source} take {est.n_features_in_}"
                )
            out[key] = est
        return out


def _method(pca: int | None, projection: int | None, using: Any) -> tuple[str, int]:
    if using is not None:
        if pca is not None or projection is not None:
            raise BadSpecError("using= applies a file's components: give it without pca= or "
                               "projection= (the file says which and how many)")  # fmt: skip
        return "using", 0
    if (pca is None) == (projection is None):
        raise BadSpecError("give one of pca=K or projection=K (or using=<reduced file>)")
    method, k = ("pca", pca) if pca is not None else ("projection", projection)
    if k is None or k < 1:
        raise BadSpecError(f"{method}={k}: K must be at least 1")
    return method, k


def _layer(est: Any, method: str, shape: tuple[int, ...], seed: int | None) -> LayerReduction:
    if method == "pca":
        ratio = tuple(float(v) for v in est.explained_variance_ratio_)
        return LayerReduction("pca", shape, int(est.n_components_), ratio)
    return LayerReduction("projection", shape, int(est.n_components_), seed=seed)


def _plan(
    reader: FeatureReader, how: tuple[str, int], keys: list[str] | None, fitted: dict[str, Any],
    seed: int, chunk: int, bar: Any,
) -> _Plan:  # fmt: skip
    """Fit (or take from ``fitted``) a reducer per key to reduce; the columns of ``dst``."""
    method, k = how
    if method != "using":
        wide = [key for key in reader.keys if reader.dim(key) > k]
        for key in keys if keys is not None else wide:
            _check_k(reader, key, method, k)
            if method == "pca":
                fitted[key] = _pca(reader, key, k, chunk, bar)
            else:
                fitted[key] = _projection(reader.dim(key), k, seed, reader.dtype(key))
    taps = reader.attrs.get("taps", {})
    pools = json.loads(taps) if isinstance(taps, str) else taps
    columns, layers = [], {}
    for key in reader.keys + list(reader.masks.values()):
        c = reader.column(key)
        shape, dtype = c.shape, c.dtype
        if key in fitted:
            est = fitted[key]
            kind = "pca" if hasattr(est, "mean_") else "projection"
            layers[key] = _layer(est, kind, shape, getattr(est, "random_state", None))
            shape, dtype = (layers[key].components,), _reduced_dtype(dtype)
        pool = str(pools.get(key, {}).get("pool", "keep"))
        columns.append(TapColumn(key, c.layer, c.name, shape, dtype, pool))
    return _Plan(reader, columns, fitted, layers, chunk)


def _reduced_dtype(dtype: str) -> str:
    return "float64" if np.dtype(dtype) == np.float64 else "float32"


def _rows(plan: _Plan, chunk: int, skip: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(first row, {key: reduced chunk})``: every key's chunks in step, from row ``skip``."""
    keys = [c.key for c in plan.columns]
    streams = [plan.reader.chunks(key, rows=chunk) for key in keys]
    start = 0
    for blocks in zip(*streams, strict=True):
        if start >= skip:
            out = {}
            for c, block in zip(plan.columns, blocks, strict=True):
                est = plan.reducers.get(c.key)
                out[c.key] = block if est is None else est.transform(_flat(block))
                out[c.key] = np.asarray(out[c.key], dtype=c.dtype)
            yield start, out
        start += len(blocks[0])


def _attach(writer: Any, plan: _Plan) -> dict[str, Any]:
    """Attach each reducer's arrays to ``writer``; the record of each key."""
    entries = {}
    for c in plan.columns:
        est = plan.reducers.get(c.key)
        if est is None:
            continue
        r = plan.layers[c.key]
        entry: dict[str, Any] = {"name": c.name, "method": r.method, "shape": list(r.shape),
                                 "components": r.components, "seed": r.seed}  # fmt: skip
        arrays = {"components": "components_"}
        if r.method == "pca":
            arrays = _PCA_ARRAYS
            entry["n_samples_seen"] = int(est.n_samples_seen_)
            entry["noise_variance"] = float(est.noise_variance_)
        for array, attribute in arrays.items():
            writer.attach(f"{_PREFIX}/{c.name}/{array}", np.asarray(getattr(est, attribute)))
        entries[c.key] = entry
    return entries


def _progress(total: int, show: bool | None) -> Any:
    from tqdm import tqdm

    show = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, unit="row", disable=not show, file=sys.stderr, leave=False)


def reduce(
    src: Any,
    dst: str | Path,
    *,
    pca: int | None = None,
    projection: int | None = None,
    layers: Sequence[str] | str | None = None,
    chunk: int = DEFAULT_CHUNK,
    using: Any = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Reduction:
    """Write ``src`` to ``dst`` with its taps reduced to ``K`` values per row, streaming.

    Args:
        src: anything :func:`~layertap.io.read.open_features` takes.
        dst: the output file (``.h5``, ``.npz``, ``.parquet``); its suffix picks the format.
        pca: ``K`` principal components (``IncrementalPCA``, two passes).
        projection: ``K`` Gaussian random projections (one pass).
        layers: the keys to reduce (default: every tap wider than ``K``); others are copied.
        chunk: rows read (and fitted, and written) at a time.
        using: a file :func:`reduce` wrote: apply its components instead of fitting.
        seed: the projection's ``random_state``.
        overwrite: replace a ``dst`` written by another reduction.
        progress: show a progress bar (``None``: when stderr is a terminal).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> rng = np.random.default_rng(0)
        >>> feats = {"emb": rng.normal(size=(30, 4, 4)), "logits": rng.normal(size=(30, 3))}
        >>> r = reduce(feats, d / "small.h5", pca=5, chunk=10)
        >>> list(r), r.copied, open_features(d / "small.h5").shape("emb")
        (['emb'], ('logits',), (5,))
        >>> r2 = reduce(feats, d / "again.npz", using=d / "small.h5")
        >>> np.allclose(open_features(d / "again.npz").read("emb"),
        ...             open_features(d / "small.h5").read("emb"))
        True
    """
    require("sklearn", "analysis", "reduction")
    how = _method(pca, projection, using)
    if chunk < 1:
        raise BadSpecError(f"chunk={chunk}: at least 1 row per chunk")
    out = Path(dst)
    fmt = check_output(out)
    if isinstance(src, str | os.PathLike) and out.exists() and Path(src).resolve() == out.resolve():
        raise OutputError(f"dst {str(out)!r} is the source itself; write elsewhere")
    with open_features(src) as reader:
        if not reader.keys:
            raise FeatureFileError(f"{reader.source} holds no taps to reduce")
        keys = _chosen(reader, layers)
        fitted = _using(reader, using, keys) if using is not None else {}
        fits = keys if keys is not None else [k for k in reader.keys if reader.dim(k) > how[1]]
        passes = len(fits) if how[0] == "pca" else 0
        with _progress(reader.rows * (1 + passes), progress) as bar:
            plan = _plan(reader, how, keys, fitted, seed, chunk, bar)
            return _write(plan, out, fmt, _meta(reader, how, seed, chunk, using), overwrite, bar)


def _meta(reader: FeatureReader, how: tuple[str, int], seed: int, chunk: int, using: Any) -> Any:
    method, k = how
    return {
        "run": {k: v for k, v in reader.attrs.items() if k not in _OWN_ATTRS},
        "reduction": {
            "method": None if method == "using" else method,
            "components": k or None,
            "seed": seed if method == "projection" else None,
            "chunk": chunk,
            "source": reader.source,
            "source_fingerprint": reader.attrs.get("fingerprint"),
            "using": None if using is None else str(using),
        },
    }


def _write(
    plan: _Plan, out: Path, fmt: str, meta: dict[str, Any], overwrite: bool, bar: Any
) -> Reduction:
    reader = plan.reader
    names = safe_names([c.key for c in plan.columns], RESERVED[fmt])
    schema = TapSchema(tuple(dataclasses.replace(c, name=names[c.key]) for c in plan.columns))
    plan.columns = list(schema)
    record = dict(meta["reduction"])
    record["copied"] = [c.key for c in plan.columns if c.key not in plan.reducers]
    fingerprint = {**record, "keys": [c.key for c in plan.columns],
                   "shapes": [list(c.shape) for c in plan.columns]}  # fmt: skip
    record["layers"] = {}
    writer = open_writer(out, schema, {**meta["run"], "reduction": record},
                         fingerprint=fingerprint, overwrite=overwrite)  # fmt: skip
    result = Reduction(
        out, fmt, reader.rows, plan.layers,
        tuple(k for k in reader.keys if k not in plan.reducers), reader.source,
        meta["reduction"]["using"], writer.complete,
    )  # fmt: skip
    if writer.complete:
        return result
    try:
        record["layers"] = _attach(writer, plan)
        writer.meta["reduction"] = record
        paths = reader.paths
        failed = [] if writer.rows else list(reader.failed)
        bar.update(writer.rows)
        for start, values in _rows(plan, plan.chunk, writer.rows):
            ids = paths[start : start + len(next(iter(values.values())))].tolist()
            writer.write(ids, values, failed=failed)
            failed = []
            bar.update(len(ids))
        if reader.rows == 0:
            writer.write([], {c.key: np.zeros((0, *c.dims), c.dtype) for c in plan.columns},
                         failed=failed)  # fmt: skip
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return result
