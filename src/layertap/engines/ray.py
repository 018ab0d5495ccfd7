"""Stage 9 (Ray), engine: the same extraction as :func:`layertap.extract` on Ray Data.

Three public pieces, from the lowest level up:

- :class:`FeatureMapper`, a callable class for ``Dataset.map_batches``: each actor
  loads the model once from a path or URI (a live model is never pickled), decodes
  the batch's files with the local engine's :class:`~layertap.io.data.FileSource`
  (same EXIF turn, resize and preprocessing), runs one forward pass and applies the
  local reducers. It returns ``path``, ``_failed`` (``""``, or why the input was
  skipped) and one column per tap, named as in the local Parquet file.
- :func:`extract_dataset`: paths or a ``ray.data.Dataset`` with a ``path`` column in,
  a lazy ``ray.data.Dataset`` of features out, with the actor pool's size, batch size
  and per-actor CPUs / GPUs as arguments.
- :func:`extract_parquet`: the whole job, written to a directory of Parquet files
  whose schema is the local engine's (:func:`~layertap.io.write.parquet_schema`);
  :func:`run_extract` is the command line's entry (``--engine ray``).

Output directory::

    DIR/part-00000-1a2b3c4d.parquet   rows of the inputs that worked, one file per
                                      write task; the local file's schema (fields
                                      and field metadata); schema metadata
                                      ``layertap`` holds the run's attributes, this
                                      file's ``rows`` and the ``failed`` inputs of
                                      the batches it wrote
    DIR/_failed.parquet               every skipped input: ``path``, ``reason``
    DIR/_layertap.json                the run's attributes, rows, failed, parts

Files starting with ``_`` are ignored by ``pyarrow.parquet.read_table(DIR)``,
``pandas.read_parquet(DIR)`` and ``ray.data.read_parquet(DIR)``. Rows come in no
particular order; join on ``path``.

Retries (Ray's own mechanisms): the actors keep Ray Data's defaults
``max_restarts=-1`` and ``max_task_retries=-1`` (a lost actor is restarted, which
reloads the model, and its unfinished batches are resubmitted, without limit);
``ray_remote_args`` overrides them. Write tasks run with ``max_retries`` =
:data:`MAX_RETRIES`. A file that cannot be decoded is not an
error: it is recorded with its reason. An exception in the model itself fails the
run (it would fail again on a retry).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layertap._errors import BadInputError, BadSpecError, OutputError
from layertap.io.data import FileSource, ImageSpec, Preprocess, make_source, resolve_preprocess
from layertap.io.reduce import reduce, resolve_pool
from layertap.io.write import RESERVED, parquet_schema, safe_names

if TYPE_CHECKING:
    import ray.data

    # Type hints only: layertap.graph.resolve imports Keras, which a write task must not
    # import (it would start a backend in every worker that only writes Parquet).
    from layertap.graph.resolve import Spec

__all__ = [
    "FAILED_COLUMN",
    "MAX_RETRIES",
    "FeatureMapper",
    "RayResult",
    "extract_dataset",
    "extract_parquet",
    "run_extract",
]

log = logging.getLogger("layertap")

#: The column holding why an input was skipped (``""`` for a row that worked).
FAILED_COLUMN = "_failed"
#: ``max_retries`` of the write tasks.
MAX_RETRIES = 3

CustomObjects = Mapping[str, Any] | Sequence[str] | None


def _need_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover (the tests skip without ray)
        raise BadInputError("the Ray engine needs Ray Data: pip install 'layertap[ray]'") from exc
    return ray


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


def _custom_objects(custom_objects: CustomObjects) -> dict[str, Any]:
    if custom_objects is None:
        return {}
    if isinstance(custom_objects, Mapping):
        return dict(custom_objects)
    from layertap.graph.load import load_custom_objects

    objects: dict[str, Any] = {}
    for spec in custom_objects:
        objects.update(load_custom_objects(spec))
    return objects


def _check_model_arg(model: Any) -> None:
    if not isinstance(model, str | os.PathLike):
        raise BadInputError(
            f"the Ray engine takes the model's file path or URI, not a "
            f"{type(model).__name__}: each actor loads it once (a live model is never "
            "sent to the workers); save it first with model.save('model.keras')"
        )


def _column_names(keys: Sequence[str]) -> dict[str, str]:
    names = safe_names(list(keys), RESERVED["parquet"])
    for key, name in names.items():
        if name == FAILED_COLUMN:
            raise BadSpecError(
                f"an output named {key!r} clashes with the {FAILED_COLUMN!r} column of the "
                "Ray engine; use another alias"
            )
    return names


class FeatureMapper:
    """A callable class for ``Dataset.map_batches``: a batch of paths -> features.

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
        preprocess, size, resize: as in :func:`layertap.extract`, when ``spec`` is None.
        pool: reducers as in :func:`layertap.extract`.
        custom_objects: ``{name: class}`` or specs for
            :func:`~layertap.graph.load.load_custom_objects` (``PATH.py``, ``module:attr``),
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
        layers: Spec | Sequence[Spec] | Mapping[str, Spec],
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
        _check_model_arg(model)
        if backend is not None:
            if "keras" not in sys.modules:
                os.environ["KERAS_BACKEND"] = backend
        import keras

        from layertap.graph.load import load_model

        if backend is not None and keras.backend.backend() != backend:
            raise BadInputError(
                f"this worker runs Keras on {keras.backend.backend()!r}, not {backend!r}: "
                "Keras was imported before the backend could be set; set KERAS_BACKEND "
                "in the cluster's environment (ray start, or runtime_env env_vars)"
            )
        self._setup(
            load_model(
                _local_model(model),
                custom_objects=_custom_objects(custom_objects),
                safe_mode=safe_mode,
            ),
            layers,
            spec=spec,
            preprocess=preprocess,
            size=size,
            resize=resize,
            pool=pool,
            workers=workers,
        )

    def _setup(
        self,
        model: Any,
        layers: Spec | Sequence[Spec] | Mapping[str, Spec],
        *,
        spec: ImageSpec | None,
        preprocess: str | Preprocess | None,
        size: tuple[int, int] | None,
        resize: str,
        pool: str | Mapping[str, str] | None,
        workers: int | None,
    ) -> None:
        from layertap.graph.extractor import Extractor

        self.model = model
        self.extractor = Extractor(self.model, layers)
        keys = list(self.extractor.outputs)
        self.reducers = resolve_pool(pool, keys)
        #: ``{tap key: column name}``.
        self.columns = _column_names(keys)
        self.spec = spec or ImageSpec.from_model(
            self.model, preprocess=preprocess or "rescale", size=size, resize=resize
        )
        self._preprocess = resolve_preprocess(self.spec.preprocess)[1]
        self.workers = workers
        self._arrays: dict[str, np.ndarray] = {}
        self._rows: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}

    def _npy_row(self, file: str, row: int) -> np.ndarray:
        if file not in self._arrays:
            self._arrays[file] = np.load(file, mmap_mode="r", allow_pickle=False)
        x = np.asarray(self._arrays[file][row], dtype=np.float32)
        return np.asarray(self._preprocess(x), dtype=np.float32)

    def _decode(self, files: list[str], rows: list[int]) -> tuple[list[Any], list[str]]:
        """One array (or None) and one reason (or "") per input, in order."""
        n = len(files)
        xs: list[Any] = [None] * n
        reasons = [""] * n
        images = [i for i in range(n) if rows[i] < 0 and not files[i].lower().endswith(".npy")]
        for i in range(n):
            if rows[i] < 0 and files[i].lower().endswith(".npy"):
                reasons[i] = "a .npy file in a Dataset needs a 'row' column (its row index)"
        for i in range(n):
            if rows[i] >= 0:
                xs[i] = self._npy_row(files[i], rows[i])
        if not images:
            return xs, reasons
        # The local engine's decoder: same threads, same reasons for a bad file.
        source = FileSource(
            [files[i] for i in images], self.spec, batch_size=len(images), workers=self.workers
        )
        try:
            ok_ids: list[str] = []
            ok_x: list[np.ndarray] = []
            failed: list[tuple[str, str]] = []
            for batch in source.batches():
                ok_ids.extend(batch.ids)
                ok_x.extend(batch.x[j] for j in range(len(batch.ids)))
                failed.extend(batch.failed)
        finally:
            source.close()
        s = f = 0
        for i in images:  # successes and failures come back in input order
            if s < len(ok_ids) and ok_ids[s] == files[i]:
                xs[i] = ok_x[s]
                s += 1
            else:
                reasons[i] = failed[f][1]
                f += 1
        return xs, reasons

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Features for one batch (a dict of columns with at least ``path``)."""
        paths = [str(p) for p in batch["path"]]
        files = [str(p) for p in batch["file"]] if "file" in batch else paths
        rows = [int(r) for r in batch["row"]] if "row" in batch else [-1] * len(paths)
        xs, reasons = self._decode(files, rows)
        ok = [i for i, x in enumerate(xs) if x is not None]
        feats: dict[str, np.ndarray] = {}
        if ok:
            x = np.stack([xs[i] for i in ok])
            for key, value in self.extractor(x).items():
                feats[key] = reduce(self.reducers[key], np.asarray(value))
                self._rows[key] = (feats[key].shape[1:], feats[key].dtype)
        out: dict[str, np.ndarray] = {
            "path": np.array(paths, dtype=object),
            FAILED_COLUMN: np.array(reasons, dtype=object),
        }
        for key, name in self.columns.items():
            if key not in self._rows:
                self._rows[key] = self._dry_row(key)
            shape, dtype = self._rows[key]
            column = np.zeros((len(paths), *shape), dtype)
            if ok:
                column[ok] = feats[key]
            out[name] = column
        return out

    def _dry_row(self, key: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
        """A tap's row shape and dtype, from one zero input (a batch where all failed)."""
        s = self.spec
        shape = (
            (s.channels, s.height, s.width) if s.channels_first else (s.height, s.width, s.channels)
        )
        value = np.asarray(self.extractor(np.zeros((1, *shape), np.float32))[key])
        reduced = reduce(self.reducers[key], value)
        return reduced.shape[1:], reduced.dtype


# --- driver side ----------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """What the driver works out once: the model path, taps, inputs, schema."""

    model: Path
    model_arg: str
    layers: Any
    spec: ImageSpec
    reducers: dict[str, str]
    columns: dict[str, tuple[str, str, tuple[int, ...], str]]
    names: dict[str, str]
    entries: list[tuple[str, str, int]] | None
    preprocessing: dict[str, Any]
    fingerprint: str | None
    probe: FeatureMapper


def _plan(
    model: str | os.PathLike[str],
    inputs: Any,
    layers: Spec | Sequence[Spec] | Mapping[str, Spec],
    *,
    batch_size: int,
    preprocess: str | Preprocess | None,
    pool: str | Mapping[str, str] | None,
    size: tuple[int, int] | None,
    resize: str,
    custom_objects: CustomObjects,
    safe_mode: bool,
) -> _Plan:
    _check_model_arg(model)
    path = _local_model(model)
    if _is_dataset(inputs):
        probe = FeatureMapper(
            path,
            layers,
            preprocess=preprocess,
            size=size,
            resize=resize,
            pool=pool,
            custom_objects=custom_objects,
            safe_mode=safe_mode,
        )
        entries = None
        spec = probe.spec
        preprocessing = spec.describe()
        fingerprint = None
    else:
        if isinstance(inputs, str | os.PathLike):
            inputs = [inputs]
        if not (
            isinstance(inputs, list | tuple)
            and all(isinstance(i, str | os.PathLike) for i in inputs)
        ):
            raise BadInputError(
                f"the Ray engine takes paths or a ray.data.Dataset with a 'path' column, "
                f"not {type(inputs).__name__}"
            )
        from layertap.graph.load import load_model

        m = load_model(path, custom_objects=_custom_objects(custom_objects), safe_mode=safe_mode)
        source = make_source(
            list(inputs), m, batch_size=batch_size, preprocess=preprocess, size=size, resize=resize
        )
        if not isinstance(source, FileSource):  # pragma: no cover (paths give files)
            raise BadInputError("the Ray engine reads files only")
        entries, spec = source.entries, source.spec
        preprocessing, fingerprint = source.preprocessing, source.fingerprint
        source.close()
        probe = FeatureMapper.__new__(FeatureMapper)
        probe._setup(
            m, layers, spec=spec, preprocess=None, size=None, resize=resize, pool=pool, workers=None
        )
    # One zero input through the taps: the row shapes and dtypes the files will hold.
    if entries is not None and entries and entries[0][2] >= 0:
        first = probe._npy_row(entries[0][1], entries[0][2])[None]
        dry = {
            k: reduce(probe.reducers[k], np.asarray(v)) for k, v in probe.extractor(first).items()
        }
        rows = {k: (v.shape[1:], v.dtype) for k, v in dry.items()}
    else:
        rows = {k: probe._dry_row(k) for k in probe.columns}
    probe._rows.update(rows)
    columns = {
        name: (
            key,
            probe.extractor.outputs[key].path,
            tuple(int(d) for d in rows[key][0]),
            np.dtype(rows[key][1]).name,
        )
        for key, name in probe.columns.items()
    }
    return _Plan(
        model=path,
        model_arg=os.fspath(model),
        layers=layers,
        spec=spec,
        reducers=probe.reducers,
        columns=columns,
        names=probe.columns,
        entries=entries,
        preprocessing=preprocessing,
        fingerprint=fingerprint,
        probe=probe,
    )


def _is_dataset(obj: Any) -> bool:
    return any(
        c.__name__ == "Dataset" and c.__module__.startswith("ray.data") for c in type(obj).__mro__
    )


def _dataset(plan: _Plan, inputs: Any) -> ray.data.Dataset:
    ray_module = _need_ray()
    if plan.entries is None:
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
    items = [{"path": i, "file": f, "row": r} for i, f, r in plan.entries]
    made: ray.data.Dataset = ray_module.data.from_items(items)
    return made


def _run_dataset(
    plan: _Plan,
    inputs: Any,
    *,
    batch_size: int,
    concurrency: int,
    num_cpus: float,
    num_gpus: float,
    custom_objects: CustomObjects,
    safe_mode: bool,
    ray_remote_args: Mapping[str, Any] | None,
) -> ray.data.Dataset:
    import keras
    from ray.data import ActorPoolStrategy

    if batch_size < 1:
        raise BadInputError(f"batch size must be at least 1, not {batch_size}")
    if concurrency < 1:
        raise BadInputError(f"concurrency must be at least 1 actor, not {concurrency}")
    return _dataset(plan, inputs).map_batches(
        FeatureMapper,
        fn_constructor_args=(plan.model_arg, plan.layers),
        fn_constructor_kwargs={
            "spec": plan.spec,
            "pool": plan.reducers,
            "custom_objects": custom_objects,
            "safe_mode": safe_mode,
            "backend": keras.backend.backend(),
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        # Ray Data's actor defaults (max_restarts=-1, max_task_retries=-1) apply
        # unless ray_remote_args says otherwise.
        **dict(ray_remote_args or {}),
    )


def extract_dataset(
    model: str | os.PathLike[str],
    inputs: Any,
    layers: Spec | Sequence[Spec] | Mapping[str, Spec],
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

    The model is loaded once here (to check the layer specs and image size before
    any actor starts) and once in each actor, from its path or URI.

    Args:
        model: a model file, or a URI ``pyarrow.fs`` reads (``s3://``, ``gs://``).
        inputs: what :func:`layertap.extract` takes as paths (files, folders, globs,
            ``.txt``/``.csv`` lists, ``.npy``), or a ``ray.data.Dataset`` with a
            ``path`` column (paths every node can read).
        layers, batch_size, preprocess, pool, size, resize, custom_objects, safe_mode:
            as in :func:`layertap.extract` (``custom_objects`` may also be a list of
            ``PATH.py`` / ``module:attr`` specs).
        concurrency: the number of actors (each holds one copy of the model).
        num_cpus, num_gpus: Ray resources reserved by each actor.
        ray_remote_args: more ``ray.remote`` arguments for the actors, e.g.
            ``{"max_restarts": 3}`` to bound Ray Data's default of restarting a lost
            actor without limit (Ray 2.60 warns that these are deprecated).

    Example:
        >>> ds = extract_dataset("model.keras", ["photos/"], {"emb": "embedding"},
        ...                      pool="avg", concurrency=4)  # doctest: +SKIP
        >>> ds.filter(lambda r: r["_failed"] == "").take(1)[0]["emb"].shape  # doctest: +SKIP
        (128,)
    """
    plan = _plan(
        model,
        inputs,
        layers,
        batch_size=batch_size,
        preprocess=preprocess,
        pool=pool,
        size=size,
        resize=resize,
        custom_objects=custom_objects,
        safe_mode=safe_mode,
    )
    return _run_dataset(
        plan,
        inputs,
        batch_size=batch_size,
        concurrency=concurrency,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        custom_objects=custom_objects,
        safe_mode=safe_mode,
        ray_remote_args=ray_remote_args,
    )


# --- writing ---------------------------------------------------------------------------


def _filesystem(out: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in out and not out.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(out)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(out.removeprefix("file://"))


def _part_metadata(attrs: Mapping[str, Any], rows: int, failed: list[tuple[str, str]]) -> Any:
    """A file's ``layertap`` metadata: the run's attributes, its rows and failures.

    ``attrs["taps"]`` holds row shapes; each file's ``shape`` starts with its rows,
    as the local writer's does.
    """
    taps = json.loads(attrs["taps"])
    for tap in taps.values():
        tap["shape"] = [rows, *tap["shape"]]
    return {
        **attrs,
        "taps": json.dumps(taps),
        "rows": rows,
        "failed": [list(item) for item in failed],
    }


def _make_sink(
    out: str, columns: Mapping[str, tuple[str, str, tuple[int, ...], str]], attrs: dict[str, Any]
) -> Any:
    from ray.data import Datasink

    class _FeatureSink(Datasink):  # type: ignore[type-arg]
        """Each write task: one Parquet part (the local schema), its failures returned."""

        def __init__(self) -> None:
            self.out = out
            self.columns = dict(columns)
            self.attrs = attrs
            self.parts: list[dict[str, Any]] = []

        def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
            import pyarrow as pa
            import pyarrow.parquet as pq
            from ray.data.block import BlockAccessor

            tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            paths: list[str] = []
            feats: dict[str, list[np.ndarray]] = {name: [] for name in self.columns}
            failed: list[tuple[str, str]] = []
            for table in tables:
                if table.num_rows == 0:
                    continue
                batch = BlockAccessor.for_block(table).to_numpy()
                reasons = [str(r) for r in batch[FAILED_COLUMN]]
                ok = np.array([r == "" for r in reasons], bool)
                ids = [str(p) for p in batch["path"]]
                failed.extend(
                    (p, r) for p, r, good in zip(ids, reasons, ok, strict=True) if not good
                )
                paths.extend(p for p, good in zip(ids, ok, strict=True) if good)
                for name in self.columns:
                    feats[name].append(np.asarray(batch[name])[ok])
            if not paths and not failed:
                return {"file": None, "rows": 0, "failed": []}
            schema = parquet_schema(self.columns, _part_metadata(self.attrs, len(paths), failed))
            arrays = [pa.array(paths, pa.string())]
            for name, (_, _, shape, _) in self.columns.items():
                size = int(np.prod(shape, dtype=np.int64))
                flat = (
                    np.concatenate(feats[name]).astype(np.float32, copy=False).reshape(-1)
                    if feats[name]
                    else np.zeros(0, np.float32)
                )
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), size))
            fs, root = _filesystem(self.out)
            name = f"part-{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}.parquet"
            with fs.open_output_stream(f"{root}/{name}") as stream:
                pq.write_table(pa.Table.from_arrays(arrays, schema=schema), stream)
            return {"file": name, "rows": len(paths), "failed": failed}

        def on_write_complete(self, write_result: Any) -> None:
            self.parts = [r for r in write_result.write_returns if r["file"] is not None]

    return _FeatureSink()


@dataclasses.dataclass
class RayResult:
    """What :func:`extract_parquet` wrote.

    Attributes:
        path: the output directory (or URI).
        rows: rows written, over all part files.
        failed: ``(path, reason)`` for every input that was skipped.
        parts: the part files' names, sorted.
        shapes: ``{column name: shape}`` (rows first), as the local result gives them.
    """

    path: str
    rows: int
    failed: list[tuple[str, str]]
    parts: list[str]
    shapes: dict[str, tuple[int, ...]]


def _prepare_out(out: str, overwrite: bool) -> None:
    import pyarrow.fs as pafs

    fs, root = _filesystem(out)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise OutputError(f"output {out!r} is a file; the Ray engine writes a directory")
    if info.type == pafs.FileType.Directory:
        found = fs.get_file_info(pafs.FileSelector(root))
        if found and not overwrite:
            raise OutputError(
                f"output directory {out!r} is not empty; the Ray engine does not resume or "
                "append: remove it, choose another, or pass overwrite=True (--overwrite)"
            )
        if found:
            fs.delete_dir_contents(root)
    fs.create_dir(root, recursive=True)


def extract_parquet(
    model: str | os.PathLike[str],
    inputs: Any,
    layers: Spec | Sequence[Spec] | Mapping[str, Spec],
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

    Arguments as in :func:`extract_dataset`; ``out`` is a directory (local, on a
    file system every node shares, or a ``pyarrow.fs`` URI) that must be empty
    unless ``overwrite``. Every part file has the local engine's Parquet schema;
    the skipped inputs are in ``_failed.parquet`` too (see the module docstring).
    Call ``ray.init`` first (or it starts a local Ray).

    Example:
        >>> r = extract_parquet("model.keras", ["photos/"], ["gap"], "feats/",
        ...                     concurrency=8, num_gpus=1)  # doctest: +SKIP
        >>> r.rows, len(r.failed)  # doctest: +SKIP
        (99998, 2)
    """
    from layertap import __version__
    from layertap.engines.local import run_fingerprint

    _need_ray()  # a clear error before any work when Ray is missing
    out_text = os.fspath(out)
    plan = _plan(
        model,
        inputs,
        layers,
        batch_size=batch_size,
        preprocess=preprocess,
        pool=pool,
        size=size,
        resize=resize,
        custom_objects=custom_objects,
        safe_mode=safe_mode,
    )
    _prepare_out(out_text, overwrite)
    taps = {
        key: {
            "dataset": name,
            "layer": plan.columns[name][1],
            "shape": list(plan.columns[name][2]),
            "dtype": plan.columns[name][3],
            "pool": plan.reducers[key],
        }
        for key, name in plan.names.items()
    }
    fingerprint = run_fingerprint(
        plan.probe.model,
        plan.model,
        {k: plan.columns[n][1] for k, n in plan.names.items()},
        plan.reducers,
        plan.preprocessing,
        plan.fingerprint,
    )
    attrs: dict[str, Any] = {
        "fingerprint": json.dumps(fingerprint),
        "complete": True,
        "model": plan.model_arg,
        "layers": json.dumps({k: plan.columns[n][1] for k, n in plan.names.items()}),
        "pool": json.dumps(plan.reducers),
        "preprocessing": json.dumps(plan.preprocessing),
        "layertap_version": __version__,
        "engine": "ray",
    }
    for k, v in (meta or {}).items():
        attrs[k] = v if isinstance(v, str | int | float) else json.dumps(v)
    attrs["taps"] = json.dumps(taps)
    ds = _run_dataset(
        plan,
        inputs,
        batch_size=batch_size,
        concurrency=concurrency,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        custom_objects=custom_objects,
        safe_mode=safe_mode,
        ray_remote_args=ray_remote_args,
    )
    sink = _make_sink(out_text, plan.columns, attrs)
    ds.write_datasink(sink, ray_remote_args={"max_retries": MAX_RETRIES})
    parts = sorted(sink.parts, key=lambda p: p["file"])
    failed = [(str(p), str(r)) for part in parts for p, r in part["failed"]]
    rows = sum(int(p["rows"]) for p in parts)
    names = _write_summary(out_text, attrs, plan, rows, failed, [str(p["file"]) for p in parts])
    shapes = {name: (rows, *c[2]) for name, c in plan.columns.items()}
    return RayResult(out_text, rows, failed, names, shapes)


def _write_summary(
    out: str,
    attrs: Mapping[str, Any],
    plan: _Plan,
    rows: int,
    failed: list[tuple[str, str]],
    parts: list[str],
) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = _filesystem(out)
    if not parts:  # every input failed: one empty part keeps the schema readable
        name = "part-00000-empty.parquet"
        schema = parquet_schema(plan.columns, _part_metadata(attrs, 0, failed))
        with fs.open_output_stream(f"{root}/{name}") as stream:
            pq.write_table(schema.empty_table(), stream)
        parts = [name]
    table = pa.table(
        {
            "path": pa.array([p for p, _ in failed], pa.string()),
            "reason": pa.array([r for _, r in failed], pa.string()),
        }
    )
    with fs.open_output_stream(f"{root}/_failed.parquet") as stream:
        pq.write_table(table, stream)
    summary = {**_part_metadata(attrs, rows, failed), "parts": parts}
    with fs.open_output_stream(f"{root}/_layertap.json") as stream:
        stream.write(json.dumps(summary, indent=1).encode())
    return parts


def run_extract(
    model: str | os.PathLike[str],
    inputs: Sequence[str],
    layers: Spec | Sequence[Spec] | Mapping[str, Spec],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    preprocess: str | None = None,
    pool: str | Mapping[str, str] | None = None,
    size: tuple[int, int] | None = None,
    resize: str = "bilinear",
    custom_objects: Sequence[str] = (),
    safe_mode: bool = True,
    overwrite: bool = False,
    quiet: bool = False,
    address: str | None = None,
    concurrency: int | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    meta: Mapping[str, Any] | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    """The command line's ``--engine ray``: connect (or start Ray), extract, disconnect.

    ``address`` is a running cluster's (``auto``, ``ray://host:10001``, ``host:6379``);
    ``None`` starts a Ray on this machine, on loopback, for this run only.
    ``concurrency`` defaults to the cluster's CPUs (or GPUs) divided by the per-actor
    ``num_cpus`` (``num_gpus``). Returns ``(rows written, [(path, reason), ...])``.

    Example:
        >>> rows, failed = run_extract("model.keras", ["photos/"], ["gap"], "feats/",
        ...                            address="auto")  # doctest: +SKIP
    """
    ray = _need_ray()
    from ray.data import DataContext

    started = False
    if not ray.is_initialized():
        if address is None:
            ray.init(
                include_dashboard=False,
                log_to_driver=not quiet,
                logging_level=logging.WARNING,
                _node_ip_address="127.0.0.1",
            )
        else:
            ray.init(address=address, log_to_driver=not quiet, logging_level=logging.WARNING)
        started = True
    context = DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = not quiet
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    if quiet:
        data_log.setLevel(logging.ERROR)
    try:
        if concurrency is None:
            resources = ray.cluster_resources()
            if num_gpus > 0:
                concurrency = max(1, int(resources.get("GPU", 0) // num_gpus))
            else:
                concurrency = max(1, int(resources.get("CPU", 1) // max(num_cpus, 1e-9)))
        result = extract_parquet(
            model,
            list(inputs),
            layers,
            out,
            batch_size=batch_size,
            preprocess=preprocess,
            pool=pool,
            size=size,
            resize=resize,
            custom_objects=list(custom_objects),
            safe_mode=safe_mode,
            concurrency=concurrency,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            overwrite=overwrite,
            meta=meta,
        )
    finally:
        context.enable_progress_bars = bars
        data_log.setLevel(level)
        if started:
            ray.shutdown()
    return result.rows, result.failed
