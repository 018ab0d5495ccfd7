"""The Ray engine: the same run as the local engine, on Ray Data.

It takes the same :class:`~layertap.engines.run.Run`, decodes with the same
:class:`~layertap.io.data.Decoder`, reduces with the same reducers and writes Parquet
parts with the same :class:`~layertap.io.schema.TapSchema`. Public pieces, from the
lowest level up (re-exported by :mod:`layertap.ray`):

- :class:`FeatureMapper`, a callable class for ``Dataset.map_batches``: each actor
  loads the model once from a path or URI (a live model is never pickled), decodes
  the batch's files, runs one forward pass and applies the reducers. It returns
  ``path``, ``_failed`` (``""``, or why the input was skipped) and one column per
  tap, named as in the local Parquet file.
- :func:`extract_dataset`: paths or a ``ray.data.Dataset`` with a ``path`` column in,
  a lazy ``ray.data.Dataset`` of features out.
- :func:`extract_parquet`: the whole job, written to a directory of Parquet files;
  :class:`RayEngine` is the same for the command line (``--engine ray``), which also
  connects to (or starts) Ray.

Output directory::

    DIR/part-00000-1a2b3c4d.parquet   rows of the inputs that worked, one file per
                                      write task; the local file's schema (fields
                                      and field metadata); schema metadata
                                      ``layertap`` holds the run's attributes (with
                                      its fingerprint), this file's ``rows`` and the
                                      ``failed`` inputs of the batches it wrote
    DIR/_failed.parquet               every skipped input: ``path``, ``reason``
    DIR/_layertap.json                the run's attributes, rows, failed, parts;
                                      written last: the run is complete

Files starting with ``_`` are ignored by ``pyarrow.parquet.read_table(DIR)``,
``pandas.read_parquet(DIR)`` and ``ray.data.read_parquet(DIR)``. Rows come in no
particular order; join on ``path``.

**Resume.** A part is written under a ``_tmp-`` name and renamed when it is whole,
and it records the inputs it covers, so a run that is interrupted (even the driver
killed) leaves only whole parts. The same run again keeps them, runs the inputs no
part covers, and writes the summary: the result equals a clean run's. A directory
from a different run (or a ``Dataset`` input, which cannot be fingerprinted) is
refused unless ``overwrite``; a complete one from the same run is left as it is.

Retries (Ray's own mechanisms): the actors keep Ray Data's defaults
``max_restarts=-1`` and ``max_task_retries=-1`` (a lost actor is restarted, which
reloads the model, and its unfinished batches are resubmitted, without limit);
``ray_remote_args`` overrides them. Write tasks run with ``max_retries`` =
:data:`MAX_RETRIES`. A file that cannot be decoded is not an error: it is recorded
with its reason. An exception in the model itself fails the run (it would fail again
on a retry).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layertap._errors import BadInputError, BadSpecError, OutputError, require
from layertap.engines.run import (
    ModelSource,
    Output,
    Plan,
    RayOptions,
    Run,
    default_source,
    model_input_rows,
    open_model,
    plan,
    row_shapes,
    tap_schema,
)
from layertap.io.images import Decoder, ImageSpec, Preprocess
from layertap.io.inputs import InputOptions
from layertap.io.reduce import reduce_taps, resolve_pool
from layertap.io.schema import TapSchema, parquet_schema, parquet_table
from layertap.io.source import Source

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "FAILED_COLUMN",
    "MAX_RETRIES",
    "FeatureMapper",
    "RayEngine",
    "RayResult",
    "extract_dataset",
    "extract_parquet",
]

log = logging.getLogger("layertap")

#: The column holding why an input was skipped (``""`` for a row that worked).
FAILED_COLUMN = "_failed"
#: ``max_retries`` of the write tasks.
MAX_RETRIES = 3
_TMP = "_tmp-"

CustomObjects = Mapping[str, Any] | Sequence[str] | None
LayerSpecs = Any


def _need_ray() -> Any:
    return require("ray", "ray", "the Ray engine")


def _local_model(model: str | os.PathLike[str]) -> Path:
    """A model path, or a URI (``s3://``, ``gs://``, ...) copied to a local temp file."""
    text = os.fspath(model)
    if "://" not in text or text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    import pyarrow.fs as pafs

    folder = Path(tempfile.mkdtemp(prefix="layertap-model-"))
    target = folder / Path(text.rstrip("/")).name
    pafs.copy_files(text, str(target), destination_filesystem=pafs.LocalFileSystem())
    return target


def _check_columns(schema: TapSchema) -> None:
    for c in schema:
        if c.name == FAILED_COLUMN:
            raise BadSpecError(
                f"an output named {c.key!r} clashes with the {FAILED_COLUMN!r} column of the "
                "Ray engine; use another alias"
            )


def _use_backend(backend: str | None) -> None:
    """Set the actor's Keras backend before Keras is first imported (or check it)."""
    if backend is not None and "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
    import keras

    if backend is not None and keras.backend.backend() != backend:
        raise BadInputError(
            f"this worker runs Keras on {keras.backend.backend()!r}, not {backend!r}: "
            "Keras was imported before the backend could be set; set KERAS_BACKEND "
            "in the cluster's environment (ray start, or runtime_env env_vars)"
        )


class FeatureMapper:
    """A callable class for ``Dataset.map_batches``: a batch of paths -> features.

    Wide because it is a public entry point; inside, its options are one
    :class:`~layertap.engines.run.Run`.

    Each actor builds one instance: it loads the model from ``model`` (a path or a
    URI that ``pyarrow.fs`` reads), builds the :class:`~layertap.Extractor` once and
    keeps it. A batch is a dict with a ``path`` column (and optionally ``file`` and
    ``row``, as :func:`extract_dataset` makes them for ``.npy`` rows). The result
    has ``path``, ``_failed`` (``""`` or the reason the input was skipped; the tap
    columns of such a row hold zeros) and one column per tap, named as the local
    Parquet writer names it (:attr:`columns`).

    Args:
        model: the model file or URI.
        layers: layer specs as :class:`~layertap.Extractor` takes them.
        spec: what each image becomes (default: read from the model with
            ``preprocess``, ``size`` and ``resize``).
        preprocess: as in :func:`layertap.extract`, when ``spec`` is None.
        size: as in :func:`layertap.extract`, when ``spec`` is None.
        resize: as in :func:`layertap.extract`, when ``spec`` is None.
        pool: reducers as in :func:`layertap.extract`.
        custom_objects: ``{name: class}`` or ``PATH.py`` / ``module:attr`` specs,
            loaded in each actor.
        safe_mode: passed to :func:`~layertap.load_model`.
        backend: the Keras backend the actor must use (default: the creating
            process's ``KERAS_BACKEND``); set before Keras is first imported.
        workers: decoding threads per actor (default: min(8, CPUs)).

    Example:
        >>> import keras, numpy as np, tempfile, os
        >>> from PIL import Image
        >>> d = tempfile.mkdtemp()
        >>> m = keras.Sequential([keras.Input((8, 8, 3)),
        ...                       keras.layers.Conv2D(4, 3, name="conv")])
        >>> m.save(os.path.join(d, "m.keras"))
        >>> Image.new("RGB", (20, 20), (255, 0, 0)).save(os.path.join(d, "a.png"))
        >>> f = FeatureMapper(os.path.join(d, "m.keras"), {"c": "conv"}, pool="avg")
        >>> out = f({"path": np.array([os.path.join(d, "a.png"), "missing.png"])})
        >>> out["c"].shape, out["_failed"].tolist()
        ((2, 4), ['', 'no such file'])
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        layers: LayerSpecs,
        *,
        spec: ImageSpec | None = None,
        preprocess: str | Preprocess | None = None,
        size: tuple[int, int] | None = None,
        resize: str = "bilinear",
        pool: str | Mapping[str, str] | None = None,
        custom_objects: CustomObjects = None,
        safe_mode: bool = True,
        backend: str | None = None,
        workers: int | None = None,
    ) -> None:
        run = Run(
            ModelSource(model, custom_objects or (), safe_mode),
            None,
            layers,
            input=InputOptions(preprocess, size, resize, workers),
            pool=pool,
            engine="ray",
        )
        self._start(run, spec, None, backend)
        if self.encode is None:
            self._files()  # image files: check that the model takes images now

    def _start(
        self, run: Run, spec: ImageSpec | None, schema: TapSchema | None, backend: str | None
    ) -> None:
        _use_backend(backend)
        from layertap.graph.extractor import Extractor

        self.model, self.encode, self.input = open_model(run, _local_model(run.model.model))
        self.extractor = Extractor(self.model, run.layers)
        self.reducers = resolve_pool(run.pool, list(self.extractor.outputs))
        self.inputs = model_input_rows(self.model)
        self.spec = spec
        self._decoder: Decoder | None = None
        self.schema = schema or tap_schema(
            self.extractor, self.reducers, "parquet", None
        ).stored_as(run.output.dtype)
        _check_columns(self.schema)
        #: ``{tap key: column name}``.
        self.columns = {c.key: c.name for c in self.schema}
        self._rows = {c.key: (c.shape, c.dtype) for c in self.schema if c.known}

    def _files(self) -> Decoder:
        """The image and ``.npy`` decoder, made on first use."""
        if self._decoder is None:
            self.spec = self.spec or self.input.image_spec(self.model)
            self._decoder = Decoder(self.spec, self.input.workers)
        return self._decoder

    def _row(self, key: str) -> tuple[tuple[int, ...], str]:
        """A tap's row shape and dtype: the schema's, a batch's, or one zero image's."""
        if key not in self._rows:
            sample = np.zeros((1, *self._files().spec.shape), np.float32)
            self._rows.update(row_shapes(self.extractor, self.reducers, sample))
        shape, dtype = self._rows[key]
        return tuple(int(d) for d in shape if d is not None), dtype

    def _decode(self, files: list[str], rows: list[int]) -> tuple[list[Any], list[str]]:
        """One array (or None) and one reason (or "") per input, in order."""
        items = [(f, r) for f, r in zip(files, rows, strict=True)]
        bad = "a .npy file in a Dataset needs a 'row' column (its row index)"
        todo = [i for i, (f, r) in enumerate(items) if not (r < 0 and f.lower().endswith(".npy"))]
        xs: list[Any] = [None] * len(items)
        reasons = [bad] * len(items)
        for i, (x, why) in zip(todo, self._files().decode([items[i] for i in todo]), strict=True):
            xs[i], reasons[i] = x, why
        return xs, reasons

    def _inputs_of(self, batch: Mapping[str, Any], n: int) -> tuple[Any, list[int], list[str]]:
        """The model's input for the rows that work, their positions, a reason per row."""
        if "text" in batch and self.encode is not None:
            reasons = [str(r) for r in batch.get("reason", [""] * n)]
            ok = [i for i in range(n) if not reasons[i]]
            texts = [str(batch["text"][i]) for i in ok]
            return (self.encode(texts) if ok else None), ok, reasons
        if self.inputs and all(name in batch for name in self.inputs):
            x = {name: np.stack(list(batch[name])) for name in self.inputs}
            return x, list(range(n)), [""] * n
        paths = [str(p) for p in batch["path"]]
        files = [str(p) for p in batch["file"]] if "file" in batch else paths
        rows = [int(r) for r in batch["row"]] if "row" in batch else [-1] * n
        xs, reasons = self._decode(files, rows)
        ok = [i for i, x in enumerate(xs) if x is not None]
        return (np.stack([xs[i] for i in ok]) if ok else None), ok, reasons

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Features for one batch: ``path`` plus image paths, texts or one column per input."""
        paths = [str(p) for p in batch["path"]]
        x, ok, reasons = self._inputs_of(batch, len(paths))
        feats: dict[str, np.ndarray] = {}
        if ok:
            feats = reduce_taps(self.reducers, self.extractor(x), x)
            for key, value in feats.items():
                self._rows.setdefault(key, (value.shape[1:], value.dtype.name))
        out: dict[str, np.ndarray] = {
            "path": np.array(paths, dtype=object),
            FAILED_COLUMN: np.array(reasons, dtype=object),
        }
        for key, name in self.columns.items():
            shape, dtype = self._row(key)
            column = np.zeros((len(paths), *shape), dtype)
            if ok:
                column[ok] = feats[key]
            out[name] = column
        return out


class _RunMapper(FeatureMapper):
    """The driver's mapper: the driver's run, resolved taps, image spec and schema."""

    def __init__(self, run: Run, spec: ImageSpec, schema: TapSchema, backend: str | None) -> None:
        self._start(run, spec, schema, backend)


# --- driver side ----------------------------------------------------------------------


class _DatasetInputs(Source):
    """A ``ray.data.Dataset`` of paths: read by the actors, so only described here."""

    kind = "dataset"

    def __init__(self, spec: ImageSpec) -> None:
        self.spec = spec
        self.preprocessing = spec.describe()
        self.input_shape = spec.shape


def _is_dataset(obj: Any) -> bool:
    return any(
        c.__name__ == "Dataset" and c.__module__.startswith("ray.data") for c in type(obj).__mro__
    )


def _open_inputs(run: Run, model: Any) -> Source:
    """A ``Dataset`` of paths is described; anything else is the local engine's source,
    whose rows the driver lists and ships (image paths, texts, rows of input arrays)."""
    if _is_dataset(run.inputs):
        return _DatasetInputs(run.input.image_spec(model))
    source = default_source(run, model)
    if source.items() is None:
        source.close()
        raise BadInputError(
            f"the Ray engine takes paths, texts, a dict of arrays or a ray.data.Dataset with "
            f"a 'path' column, not {type(run.inputs).__name__}"
        )
    return source


def _plan(run: Run) -> Plan:
    p = plan(
        run,
        model_path=_local_model(run.model.model),
        open_source=_open_inputs,
        reserved=frozenset(),
    )
    p.close()  # the driver lists the inputs; the actors decode them
    _check_columns(p.schema)
    return p


def _entries(p: Plan) -> list[dict[str, Any]] | None:
    """The rows the driver ships (``None``: the input is a ``Dataset`` already)."""
    return None if isinstance(p.source, _DatasetInputs) or p.source is None else p.source.items()


def _dataset(p: Plan, entries: list[dict[str, Any]] | None) -> ray.data.Dataset:
    ray_module = _need_ray()
    if entries is None:
        inputs = p.run.inputs
        names = inputs.columns() or []
        if "path" not in names:
            raise BadInputError(
                f"the input Dataset has the columns {names!r}, not 'path': give one row per "
                "file with its path, e.g. ray.data.from_items([{'path': p} for p in paths]) "
                "(the actors decode the files themselves)"
            )
        selected: ray.data.Dataset = inputs.select_columns(
            [c for c in ("path", "file", "row") if c in names]
        )
        return selected
    made: ray.data.Dataset = ray_module.data.from_items(entries)
    return made


def _map(p: Plan, ds: ray.data.Dataset) -> ray.data.Dataset:
    """The actors' pass over ``ds``: decode, forward, reduce."""
    import keras
    from ray.data import ActorPoolStrategy

    run = p.run
    actor_run = run.replace(inputs=None, layers=p.layer_specs)
    spec = getattr(p.source, "spec", None)
    return ds.map_batches(
        _RunMapper,
        fn_constructor_args=(actor_run, spec, p.schema, keras.backend.backend()),
        batch_size=run.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=run.ray.concurrency or 1),
        num_cpus=run.ray.num_cpus,
        num_gpus=run.ray.num_gpus,
        # Ray Data's actor defaults (max_restarts=-1, max_task_retries=-1) apply
        # unless remote_args says otherwise.
        **dict(run.ray.remote_args),
    )


def _ray_run(
    model: str | os.PathLike[str],
    inputs: Any,
    layers: LayerSpecs,
    out: str | os.PathLike[str] | None,
    options: Mapping[str, Any],
) -> Run:
    """The :class:`Run` of :func:`extract_dataset`'s / :func:`extract_parquet`'s arguments."""
    o = dict(options)
    return Run(
        ModelSource(model, o["custom_objects"] or (), o["safe_mode"]),
        inputs,
        layers,
        input=InputOptions(o["preprocess"], o["size"], o["resize"]),
        pool=o["pool"],
        batch_size=o["batch_size"],
        output=Output(
            os.fspath(out) if out is not None else None,
            overwrite=o.get("overwrite", False),
            meta=dict(o.get("meta") or {}),
        ),
        engine="ray",
        ray=RayOptions(
            concurrency=o["concurrency"],
            num_cpus=o["num_cpus"],
            num_gpus=o["num_gpus"],
            remote_args=dict(o["ray_remote_args"] or {}),
        ),
    )


def extract_dataset(
    model: str | os.PathLike[str],
    inputs: Any,
    layers: LayerSpecs,
    *,
    batch_size: int = 32,
    preprocess: str | Preprocess | None = None,
    pool: str | Mapping[str, str] | None = None,
    size: tuple[int, int] | None = None,
    resize: str = "bilinear",
    custom_objects: CustomObjects = None,
    safe_mode: bool = True,
    concurrency: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    ray_remote_args: Mapping[str, Any] | None = None,
) -> ray.data.Dataset:
    """A lazy ``ray.data.Dataset`` of features: ``path``, ``_failed``, one column per tap.

    Wide because it is a public entry point; its options become one
    :class:`~layertap.engines.run.Run`. The model is loaded once here (to check the
    layer specs and image size before any actor starts) and once in each actor, from
    its path or URI.

    Args:
        model: a model file, or a URI ``pyarrow.fs`` reads (``s3://``, ``gs://``).
        inputs: what :func:`layertap.extract` takes as paths (files, folders, globs,
            ``.txt``/``.csv`` lists, ``.npy``), or a ``ray.data.Dataset`` with a
            ``path`` column (paths every node can read).
        layers: as in :func:`layertap.extract`.
        batch_size: as in :func:`layertap.extract`.
        preprocess: as in :func:`layertap.extract`.
        pool: as in :func:`layertap.extract`.
        size: as in :func:`layertap.extract`.
        resize: as in :func:`layertap.extract`.
        custom_objects: as in :func:`layertap.extract` (or a list of ``PATH.py`` /
            ``module:attr`` specs).
        safe_mode: as in :func:`layertap.extract`.
        concurrency: the number of actors (each holds one copy of the model).
        num_cpus: CPUs Ray reserves for each actor.
        num_gpus: GPUs Ray reserves for each actor.
        ray_remote_args: more ``ray.remote`` arguments for the actors, e.g.
            ``{"max_restarts": 3}`` to bound Ray Data's default of restarting a lost
            actor without limit.

    Example:
        >>> ds = extract_dataset("model.keras", ["photos/"], {"emb": "embedding"},
        ...                      pool="avg", concurrency=4)  # doctest: +SKIP
        >>> ds.filter(lambda r: r["_failed"] == "").take(1)[0]["emb"].shape  # doctest: +SKIP
        (128,)
    """
    options = dict(locals())
    run = _ray_run(model, inputs, layers, None, options)
    p = _plan(run)
    return _map(p, _dataset(p, _entries(p)))


# --- writing ---------------------------------------------------------------------------


def _filesystem(out: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in out and not out.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(out)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(out.removeprefix("file://"))


def _part_metadata(attrs: Mapping[str, Any], schema: TapSchema, rows: int, failed: Any) -> Any:
    """A file's ``layertap`` metadata: the run's attributes, its rows and failures."""
    return {
        **attrs,
        "taps": json.dumps(schema.taps_attribute(rows)),
        "rows": rows,
        "failed": [list(item) for item in failed],
    }


def _ray_attributes(p: Plan) -> dict[str, Any]:
    """The run's attributes as Parquet metadata holds them (values JSON where not scalar)."""
    attrs = {"fingerprint": p.fingerprint, "complete": True, **p.attributes(engine="ray")}
    return {k: v if isinstance(v, str | int | float) else json.dumps(v) for k, v in attrs.items()}


def _make_sink(out: str, schema: TapSchema, attrs: dict[str, Any]) -> Any:
    from ray.data import Datasink

    class _FeatureSink(Datasink):  # type: ignore[type-arg]
        """Each write task: one whole Parquet part (the local schema), its failures returned."""

        def __init__(self) -> None:
            self.parts: list[dict[str, Any]] = []

        def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
            paths, values, failed = _collect(blocks, schema)
            if not paths and not failed:
                return {"file": None, "rows": 0, "failed": []}
            name = f"part-{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}.parquet"
            meta = _part_metadata(attrs, schema, len(paths), failed)
            _write_part(out, name, schema, meta, paths, values)
            return {"file": name, "rows": len(paths), "failed": failed}

        def on_write_complete(self, write_result: Any) -> None:
            self.parts = [r for r in write_result.write_returns if r["file"] is not None]

    return _FeatureSink()


def _collect(
    blocks: Iterable[Any], schema: TapSchema
) -> tuple[list[str], dict[str, np.ndarray], list[tuple[str, str]]]:
    """The rows that worked (paths, ``{column: values}``) and the failed inputs of blocks."""
    from ray.data.block import BlockAccessor

    paths: list[str] = []
    parts: dict[str, list[np.ndarray]] = {c.name: [] for c in schema}
    failed: list[tuple[str, str]] = []
    for block in blocks:
        table = BlockAccessor.for_block(block).to_arrow()
        if table.num_rows == 0:
            continue
        batch = BlockAccessor.for_block(table).to_numpy()
        reasons = [str(r) for r in batch[FAILED_COLUMN]]
        ids = [str(p) for p in batch["path"]]
        ok = np.array([r == "" for r in reasons], bool)
        failed.extend((i, r) for i, r in zip(ids, reasons, strict=True) if r)
        paths.extend(i for i, r in zip(ids, reasons, strict=True) if not r)
        for c in schema:
            parts[c.name].append(np.asarray(batch[c.name])[ok])
    values = {
        c.name: np.concatenate(parts[c.name]) if parts[c.name] else np.zeros((0, *c.dims))
        for c in schema
    }
    return paths, values, failed


def _write_part(
    out: str,
    name: str,
    schema: TapSchema,
    meta: Mapping[str, Any],
    paths: Sequence[str],
    values: Mapping[str, np.ndarray],
) -> None:
    """Write one part under a ``_tmp-`` name, then rename it: a part is whole or absent."""
    import pyarrow.parquet as pq

    fs, root = _filesystem(out)
    arrow_schema = parquet_schema(schema, meta)
    table = parquet_table(arrow_schema, schema, paths, values)
    with fs.open_output_stream(f"{root}/{_TMP}{name}") as stream:
        pq.write_table(table, stream)
    fs.move(f"{root}/{_TMP}{name}", f"{root}/{name}")


@dataclasses.dataclass
class RayResult:
    """What the Ray engine wrote.

    Attributes:
        path: the output directory (or URI).
        rows: rows written, over all part files.
        failed: ``(path, reason)`` for every input that was skipped.
        parts: the part files' names, sorted.
        shapes: ``{column name: shape}`` (rows first), as the local result gives them.
        resumed: rows kept from an interrupted run of the same job.
        already_complete: the directory held this run's finished output; nothing was done.
        format: ``"parquet"``.
    """

    path: str
    rows: int
    failed: list[tuple[str, str]]
    parts: list[str]
    shapes: dict[str, tuple[int, ...]]
    resumed: int = 0
    already_complete: bool = False
    format: str = "parquet"


@dataclasses.dataclass
class _Found:
    """What an output directory already holds from the same run."""

    parts: list[dict[str, Any]]
    complete: dict[str, Any] | None = None

    @property
    def done(self) -> set[str]:
        return {i for part in self.parts for i in part["ids"]}


def _refuse(out: str, why: str) -> OutputError:
    return OutputError(
        f"output directory {out!r} {why}; it is neither overwritten nor appended to: "
        "remove it, choose another, or pass overwrite=True (--overwrite)"
    )


def _read_part(fs: Any, path: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as f:
        table = pq.read_table(f, columns=["path"])
        meta = json.loads((table.schema.metadata or {}).get(b"layertap", b"{}"))
    failed = [tuple(item) for item in meta.get("failed", [])]
    ids = table["path"].to_pylist() + [p for p, _ in failed]
    return {
        "file": path.rsplit("/", 1)[-1],
        "rows": table.num_rows,
        "failed": failed,
        "ids": ids,
        "fingerprint": meta.get("fingerprint"),
    }


def _prepare_out(out: str, overwrite: bool, fingerprint: Any) -> _Found:
    """Make the directory ready; return the whole parts a same-run attempt left there."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(out)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise OutputError(f"output {out!r} is a file; the Ray engine writes a directory")
    is_dir = info.type == pafs.FileType.Directory
    found = fs.get_file_info(pafs.FileSelector(root)) if is_dir else []
    if found and overwrite:
        fs.delete_dir_contents(root)
        found = []
    fs.create_dir(root, recursive=True)
    if not found:
        return _Found([])
    if fingerprint is None:
        raise _refuse(out, "is not empty, and these inputs (a Dataset) cannot be matched to it")
    names = {f.base_name: f for f in found}
    summary = None
    if "_layertap.json" in names:
        with fs.open_input_stream(f"{root}/_layertap.json") as stream:
            summary = json.loads(stream.read())
    parts = []
    for name, item in sorted(names.items()):
        if name.startswith(_TMP):  # a part the last attempt did not finish
            fs.delete_file(item.path)
        elif name.startswith("part-") and name.endswith(".parquet"):
            parts.append(_read_part(fs, item.path))
        elif name not in ("_layertap.json", "_failed.parquet"):
            raise _refuse(out, f"is not empty: it holds {name!r}, which layertap did not write")
    wanted = json.dumps(fingerprint)
    if any(part["fingerprint"] != wanted for part in parts) or (
        summary is not None and summary.get("fingerprint") != wanted
    ):
        raise _refuse(out, "is not empty: it was written by a different run")
    return _Found(parts, summary)


def _write_summary(
    out: str, attrs: Mapping[str, Any], schema: TapSchema, parts: list[dict[str, Any]]
) -> tuple[list[str], list[tuple[str, str]], int]:
    """``_failed.parquet`` and, last, ``_layertap.json``: the run is complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(parts, key=lambda part: str(part["file"]))
    failed = [(str(p), str(r)) for part in parts for p, r in part["failed"]]
    rows = sum(int(part["rows"]) for part in parts)
    names = [str(part["file"]) for part in parts]
    fs, root = _filesystem(out)
    if not names:  # every input failed: one empty part keeps the schema readable
        names = ["part-00000-empty.parquet"]
        empty = {c.name: np.zeros((0, *c.dims)) for c in schema}
        _write_part(out, names[0], schema, _part_metadata(attrs, schema, 0, failed), [], empty)
    table = pa.table(
        {
            "path": pa.array([p for p, _ in failed], pa.string()),
            "reason": pa.array([r for _, r in failed], pa.string()),
        }
    )
    with fs.open_output_stream(f"{root}/_failed.parquet") as stream:
        pq.write_table(table, stream)
    summary = {**_part_metadata(attrs, schema, rows, failed), "parts": names}
    with fs.open_output_stream(f"{root}/_layertap.json") as stream:
        stream.write(json.dumps(summary, indent=1).encode())
    return names, failed, rows


def _shapes(schema: TapSchema, rows: int) -> dict[str, tuple[int, ...]]:
    return {c.name: (rows, *c.dims) for c in schema}


def _write(run: Run) -> RayResult:
    """The Ray run to its directory: plan, keep whole parts, run the rest, summarise."""
    _need_ray()  # a clear error before any work when Ray is missing
    out = run.output.path or ""
    p = _plan(run)
    found = _prepare_out(out, run.output.overwrite, p.fingerprint)
    if found.complete is not None:
        s = found.complete
        failed = [(str(a), str(b)) for a, b in s["failed"]]
        shapes = _shapes(p.schema, int(s["rows"]))
        return RayResult(out, int(s["rows"]), failed, s["parts"], shapes, int(s["rows"]), True)
    resumed = sum(int(part["rows"]) for part in found.parts)
    if found.parts:
        log.info("resuming %s after %d rows in %d parts", out, resumed, len(found.parts))
    attrs = _ray_attributes(p)
    entries = _entries(p)
    done = found.done
    todo = None if entries is None else [e for e in entries if e["path"] not in done]
    new: list[dict[str, Any]] = []
    if todo is None or todo:
        sink = _make_sink(out, p.schema, attrs)
        _map(p, _dataset(p, todo)).write_datasink(
            sink, ray_remote_args={"max_retries": MAX_RETRIES}
        )
        new = sink.parts
    names, failed, rows = _write_summary(out, attrs, p.schema, found.parts + new)
    return RayResult(out, rows, failed, names, _shapes(p.schema, rows), resumed)


def extract_parquet(
    model: str | os.PathLike[str],
    inputs: Any,
    layers: LayerSpecs,
    out: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    preprocess: str | Preprocess | None = None,
    pool: str | Mapping[str, str] | None = None,
    size: tuple[int, int] | None = None,
    resize: str = "bilinear",
    custom_objects: CustomObjects = None,
    safe_mode: bool = True,
    concurrency: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    overwrite: bool = False,
    meta: Mapping[str, Any] | None = None,
    ray_remote_args: Mapping[str, Any] | None = None,
) -> RayResult:
    """Extract on the current Ray cluster and write a directory of Parquet files.

    Wide because it is a public entry point; its options become one
    :class:`~layertap.engines.run.Run`. Arguments as in :func:`extract_dataset`;
    ``out`` is a directory (local, on a file system every node shares, or a
    ``pyarrow.fs`` URI). A directory left by an interrupted run of the same job is
    resumed; one from another run is refused unless ``overwrite``. Every part file
    has the local engine's Parquet schema; the skipped inputs are in
    ``_failed.parquet`` too (see the module docstring). Call ``ray.init`` first (or
    Ray Data starts a local Ray).

    Example:
        >>> r = extract_parquet("model.keras", ["photos/"], ["gap"], "feats/",
        ...                     concurrency=8, num_gpus=1)  # doctest: +SKIP
        >>> r.rows, len(r.failed)  # doctest: +SKIP
        (99998, 2)
    """
    options = dict(locals())
    return _write(_ray_run(model, inputs, layers, out, options))


class RayEngine:
    """Runs a :class:`~layertap.engines.run.Run` on Ray Data, connecting first.

    ``run.ray.address`` is a running cluster's (``auto``, ``ray://host:10001``,
    ``host:6379``); ``None`` starts a Ray on this machine, on loopback, for this run
    only (unless Ray is already initialised). ``run.ray.concurrency`` defaults to the
    cluster's CPUs (or GPUs) divided by each actor's ``num_cpus`` (``num_gpus``), and
    ``run.ray.logs`` says whether Ray's own INFO lines reach the console.

    Example:
        >>> result = RayEngine().extract(run)  # doctest: +SKIP
    """

    name = "ray"

    def extract(self, run: Run, on_failed: Any = None) -> RayResult:
        """Connect, run, disconnect; ``on_failed(path, reason)`` for each skipped input."""
        with _connected(run) as concurrency:
            ray_options = dataclasses.replace(run.ray, concurrency=concurrency)
            result = _write(run.replace(ray=ray_options))
        if on_failed is not None:
            for item in result.failed:
                on_failed(*item)
        return result


@contextlib.contextmanager
def _connected(run: Run) -> Iterator[int]:
    """Ray initialised (started here when needed), as quiet as asked; the actors.

    ``run.quiet``: no progress bars, no output of the workers, Ray Data's errors only.
    Not ``run.ray.logs``: Ray's start shows errors only, Ray Data's console its warnings.
    """
    ray = _need_ray()
    from ray.data import DataContext

    quiet = run.quiet
    started = False
    if not ray.is_initialized():
        where: dict[str, Any] = (
            {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
            if run.ray.address is None
            else {"address": run.ray.address}
        )
        start_level = logging.WARNING if run.ray.logs else logging.ERROR
        ray.init(**where, log_to_driver=not quiet, logging_level=start_level)
        logging.getLogger("ray").setLevel(logging.WARNING)  # after the start, as before
        started = True
    context = DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = not quiet
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    if quiet:
        data_log.setLevel(logging.ERROR)
    consoles = [] if run.ray.logs else _console_handlers(data_log)
    console_levels = [h.level for h in consoles]
    for handler in consoles:
        handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield run.ray.concurrency or _default_concurrency(ray, run.ray)
    finally:
        context.enable_progress_bars = bars
        data_log.setLevel(level)
        for handler, console_level in zip(consoles, console_levels, strict=True):
            handler.setLevel(console_level)
        if started:
            ray.shutdown()


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers of ``logger`` that print to a stream (Ray Data's console, not its files)."""
    return [
        h
        for h in logger.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


def _default_concurrency(ray: Any, options: RayOptions) -> int:
    resources = ray.cluster_resources()
    if options.num_gpus > 0:
        return max(1, int(resources.get("GPU", 0) // options.num_gpus))
    return max(1, int(resources.get("CPU", 1) // max(options.num_cpus, 1e-9)))
