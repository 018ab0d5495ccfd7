"""One run description that both engines and the command line take.

A :class:`Run` is frozen and holds the whole job: the model source, the taps, the
input options, the reducers, the batch size, the output and its format, and the
engine options. It is built once (from :func:`layertap.extract`'s arguments, from
:func:`layertap.ray.extract_parquet`'s, or from the command line's flags), and
validated when it is built, before any model is loaded.

:func:`plan` turns a run into a :class:`Plan`: the loaded model, the
:class:`~layertap.Extractor`, the resolved reducers, the inputs as a
:class:`~layertap.io.data.Source`, the :class:`~layertap.io.schema.TapSchema` and the
run's fingerprint, each worked out once. The local engine runs a plan; the Ray driver
makes one and its actors rebuild the same extractor from the plan's resolved taps.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layertap._errors import BadInputError, BadSpecError, OutputError
from layertap.io.inputs import InputOptions, is_text_preprocessor, make_source
from layertap.io.reduce import (
    MASK_INPUT,
    check_reducer,
    masked_keys,
    reduce_taps,
    resolve_pool,
)
from layertap.io.schema import STORAGE_DTYPES, TapSchema
from layertap.io.source import Source
from layertap.io.text import Encode
from layertap.io.write import check_output

if TYPE_CHECKING:
    from layertap.graph.extractor import Extractor

__all__ = [
    "ENGINES",
    "LayerOptions",
    "ModelSource",
    "Output",
    "Plan",
    "RayOptions",
    "Run",
    "model_fingerprint",
    "model_input_rows",
    "default_source",
    "open_model",
    "plan",
    "row_shapes",
    "run_fingerprint",
    "tap_schema",
]

#: The engines a run can name.
ENGINES = ("local", "ray")

CustomObjects = Mapping[str, Any] | Sequence[str]
_INDEX = re.compile(r"^-?\d+$")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: a live ``keras.Model`` or a file, directory or URI.

    Attributes:
        model: the model, or its path (``.keras``, ``.h5``, a SavedModel directory; the
            Ray engine also takes a ``pyarrow.fs`` URI).
        custom_objects: ``{name: class}``, or ``PATH.py`` / ``module:attr`` specs.
        safe_mode: refuse stored code (Lambda layers) unless False.

    Example:
        >>> ModelSource("model.keras").label
        'model.keras'
    """

    model: Any
    custom_objects: CustomObjects = ()
    safe_mode: bool = True

    @property
    def is_path(self) -> bool:
        """The model is given by its path (so a worker can load it)."""
        return isinstance(self.model, str | os.PathLike)

    @property
    def label(self) -> str:
        """The path (a URI as given), or the live model's name."""
        if not self.is_path:
            return str(self.model.name)
        text = os.fspath(self.model)
        return text if "://" in text else str(Path(text))

    def objects(self) -> dict[str, Any]:
        """``{name: class}`` of the custom objects (specs imported here)."""
        if isinstance(self.custom_objects, Mapping):
            return dict(self.custom_objects)
        from layertap.graph.load import load_custom_objects

        found: dict[str, Any] = {}
        for spec in self.custom_objects:
            found.update(load_custom_objects(spec))
        return found

    def load(self, path: Path | None = None) -> Any:
        """The ``keras.Model`` (loaded from ``path`` or the source's path; a live one as is)."""
        if not self.is_path:
            return self.model
        from layertap.graph.load import load_model

        return load_model(
            path or Path(self.model), custom_objects=self.objects(), safe_mode=self.safe_mode
        )


@dataclasses.dataclass(frozen=True)
class LayerOptions:
    """``--layer [ALIAS=]SPEC`` values, parsed; keyed once the model is loaded.

    Example:
        >>> LayerOptions.parse(["emb=embedding", "-1"]).pairs
        (('emb', 'embedding'), (None, -1))
    """

    pairs: tuple[tuple[str | None, str | int], ...]

    @classmethod
    def parse(cls, options: Sequence[str]) -> LayerOptions:
        """Parse the command line's ``--layer`` values (an all-digit SPEC is an index)."""
        parsed: list[tuple[str | None, str | int]] = []
        for text in options:
            alias, sep, spec = text.partition("=")
            if not sep:
                alias, spec = "", text
            elif not alias or not spec:
                raise BadSpecError(
                    f"--layer {text!r} is malformed: expected SPEC or ALIAS=SPEC, both non-empty"
                )
            parsed.append((alias or None, int(spec) if _INDEX.match(spec) else spec))
        return cls(tuple(parsed))

    def specs(self, model: Any) -> list[str | int] | dict[str, str | int]:
        """What :class:`~layertap.Extractor` takes: a list, or a dict when aliases are given.

        A spec given without an alias among aliased ones is keyed by the canonical path
        of each place it resolves to, as it would be in a list.
        """
        if all(alias is None for alias, _ in self.pairs):
            return [spec for _, spec in self.pairs]
        from layertap.graph.resolve import resolve_one
        from layertap.graph.walk import walk

        places = walk(model)
        layers: dict[str, str | int] = {}
        for alias, spec in self.pairs:
            keys = [alias] if alias else [p.path for p in resolve_one(spec, model, places)]
            for key in keys:
                if key in layers:
                    raise BadSpecError(
                        f"--layer output name {key!r} is given twice; use distinct aliases"
                    )
                layers[key] = spec if alias is not None else key
        return layers


@dataclasses.dataclass(frozen=True)
class Output:
    """Where features go.

    Attributes:
        path: a file (local engine: ``.h5``, ``.npz``, ``.parquet``), a directory or URI
            (Ray engine), or ``None`` for arrays in memory.
        format: ``"hdf5"``, ``"npz"`` or ``"parquet"`` (default: by the suffix).
        overwrite: replace an output written by a different run.
        meta: extra attributes stored in the output.
        dtype: ``"float32"`` (the default: the taps' values as the model gives them) or
            ``"float16"`` (floating-point taps stored as float16, half the bytes; part of
            the run's fingerprint, so a file is resumed only with the same dtype).

    Example:
        >>> Output("feats.npz").path
        'feats.npz'
        >>> Output("feats.h5", dtype="bfloat16")
        Traceback (most recent call last):
        ...
        layertap._errors.BadInputError: unknown storage dtype 'bfloat16'; valid: float32, float16
    """

    path: str | None = None
    format: str | None = None
    overwrite: bool = False
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE_DTYPES:
            raise BadInputError(
                f"unknown storage dtype {self.dtype!r}; valid: {', '.join(STORAGE_DTYPES)}"
            )


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """The Ray engine's options.

    Attributes:
        address: a running cluster's address (``None``: start a Ray here, for this run).
        concurrency: actors (``None``: the cluster's CPUs, or GPUs, per actor's share).
        num_cpus: CPUs reserved by each actor.
        num_gpus: GPUs reserved by each actor.
        remote_args: more ``ray.remote`` arguments for the actors.
        logs: Ray's console output as Ray prints it. ``False`` (the command line without
            ``--verbose``): while Ray starts (or connects) its logger shows errors only,
            and Ray Data's console its warnings and errors, not its INFO lines (its log
            files in the session directory keep them); progress bars are left as they are.
    """

    address: str | None = None
    concurrency: int | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    remote_args: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    logs: bool = True

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise BadInputError(f"concurrency must be at least 1 actor, not {self.concurrency}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise BadInputError(
                f"num_cpus and num_gpus cannot be negative ({self.num_cpus}, {self.num_gpus})"
            )


Spec = Any  # a layer spec, a list of them, a dict alias -> spec, or LayerOptions


@dataclasses.dataclass(frozen=True)
class Run:
    """One extraction, validated when it is made.

    Attributes:
        model: the :class:`ModelSource`.
        inputs: paths, an array, an iterable of batches (local), or a
            ``ray.data.Dataset`` with a ``path`` column (Ray).
        layers: layer specs as :class:`~layertap.Extractor` takes them, or
            :class:`LayerOptions` from the command line.
        input: the :class:`~layertap.io.data.InputOptions`.
        pool: a pool spec (:mod:`layertap.io.reduce`).
        batch_size: inputs per forward pass.
        output: the :class:`Output`.
        engine: ``"local"`` or ``"ray"``.
        ray: the :class:`RayOptions`.
        progress: show progress (``None``: when stderr is a terminal).

    Example:
        >>> Run(ModelSource("m.keras"), ["photos/"], ["gap"], batch_size=0)
        Traceback (most recent call last):
        ...
        layertap._errors.BadInputError: batch size must be at least 1, not 0
    """

    model: ModelSource
    inputs: Any = dataclasses.field(compare=False)
    layers: Spec
    input: InputOptions = InputOptions()
    pool: str | Mapping[str, str] | None = None
    batch_size: int = 32
    output: Output = Output()
    engine: str = "local"
    ray: RayOptions = RayOptions()
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise BadInputError(f"batch size must be at least 1, not {self.batch_size}")
        if self.engine not in ENGINES:
            raise BadInputError(f"unknown engine {self.engine!r}; valid: {', '.join(ENGINES)}")
        _check_pool(self.pool)
        if self.engine == "local" and self.output.path is not None:
            fmt = check_output(self.output.path, self.output.format)
            object.__setattr__(self, "output", dataclasses.replace(self.output, format=fmt))
        if self.engine == "ray":
            _check_ray_run(self)
            object.__setattr__(self, "output", dataclasses.replace(self.output, format="parquet"))

    @property
    def quiet(self) -> bool:
        """No progress shown."""
        return self.progress is False

    def replace(self, **changes: Any) -> Run:
        """A copy with ``changes`` (validated again).

        Example:
            >>> Run(ModelSource("m.keras"), ["a.png"], ["gap"]).replace(batch_size=8).batch_size
            8
        """
        return dataclasses.replace(self, **changes)


def _check_pool(pool: str | Mapping[str, str] | None) -> None:
    """Reducer names checked before the model loads (the taps' keys are not known yet)."""
    keys = [] if pool is None or isinstance(pool, str) else list(pool)  # "*" checks the default
    resolve_pool(pool, keys)


def _check_ray_run(run: Run) -> None:
    if not run.model.is_path:
        raise BadInputError(
            f"the Ray engine takes the model's file path or URI, not a "
            f"{type(run.model.model).__name__}: each actor loads it once (a live model is "
            "never sent to the workers); save it first with model.save('model.keras')"
        )
    if run.output.path is not None and Path(run.output.path).suffix.lower() in (".h5", ".npz"):
        raise OutputError(
            f"the Ray engine writes a directory of Parquet files, not {run.output.path!r}"
        )


# --- planning ------------------------------------------------------------------------------


def model_fingerprint(model: Any, path: Path | None) -> str:
    """A hash of the model file's bytes, or of an in-memory model's weights.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> len(model_fingerprint(m, None))
        64
    """
    h = hashlib.sha256()
    if path is not None and not path.exists():
        path = None  # a handle (kaggle://, hf://, a preset name): hash the weights
    if path is not None and path.is_file():
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    if path is not None:  # a SavedModel or preset directory: every file, in sorted order
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(item.relative_to(path).as_posix().encode() + b"\0")
            h.update(item.read_bytes())
        return h.hexdigest()
    h.update(model.name.encode())
    for w in model.weights:
        h.update(w.path.encode())
        h.update(np.ascontiguousarray(np.asarray(w.numpy())).data)
    return h.hexdigest()


def run_fingerprint(
    model_hash: str, schema: TapSchema, preprocessing: Any, inputs: str | None
) -> dict[str, Any] | None:
    """What makes two runs the same run: model, taps, reducers, preprocessing, inputs.

    ``None`` when the inputs cannot be fingerprinted (an iterable), so the run cannot
    resume. Every engine records this, so their outputs can be compared.

    Example:
        >>> from layertap.io.schema import TapInfo
        >>> s = TapSchema.build([TapInfo("d", "d", (None, 1), "float32")], {"d": "keep"}, None)
        >>> sorted(run_fingerprint("ab12", s, {}, "cd34"))
        ['inputs', 'model', 'pool', 'preprocessing', 'taps']
    """
    if inputs is None:
        return None
    return {
        "model": model_hash,
        "taps": schema.layers(),
        "pool": schema.reducers(),
        "preprocessing": preprocessing,
        "inputs": inputs,
    }


def row_shapes(
    extractor: Extractor, reducers: Mapping[str, str], sample: Any
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tap's reduced row shape and dtype, from one ``sample`` row of the inputs.

    For taps whose shape the graph leaves open (a model that takes any image size, a
    sequence length the preprocessor sets): one row gives the size a batch will have.
    """
    reduced = reduce_taps(reducers, extractor(sample), sample)
    return {k: (tuple(int(d) for d in v.shape[1:]), v.dtype.name) for k, v in reduced.items()}


def tap_schema(
    extractor: Extractor,
    reducers: Mapping[str, str],
    fmt: str | None,
    sample: Any,
    reserved: frozenset[str] = frozenset(),
) -> TapSchema:
    """The run's :class:`~layertap.io.schema.TapSchema`, row shapes known where they can be.

    Shapes come from the feature model's outputs after the reducers; a shape still
    open is found by running ``sample`` (one row of the inputs, when they give one).
    """
    for key, info in extractor.outputs.items():
        check_reducer(reducers[key], info.shape, key)  # names the tap a reducer cannot take
    schema = TapSchema.build(list(extractor.outputs.values()), reducers, fmt, reserved)
    mask = sample.get(MASK_INPUT) if isinstance(sample, Mapping) else None
    if mask is not None:
        shapes = {key: info.shape for key, info in extractor.outputs.items()}
        tokens = int(np.asarray(mask).shape[1])
        schema = schema.with_masks(masked_keys(reducers, shapes, tokens), tokens, fmt)
    if schema.known or sample is None:
        return schema
    return schema.with_rows(row_shapes(extractor, reducers, sample))


@dataclasses.dataclass
class Plan:
    """A run worked out once: the model loaded, the taps resolved, the inputs opened.

    Attributes:
        run: the :class:`Run`.
        model: the loaded ``keras.Model``.
        model_path: the local model file (``None``: a live model).
        extractor: the :class:`~layertap.Extractor` of the taps.
        reducers: ``{key: reducer}``.
        schema: the :class:`~layertap.io.schema.TapSchema`.
        source: the inputs (``None`` when an engine reads them itself).
        fingerprint: :func:`run_fingerprint` (``None``: the run cannot resume).
    """

    run: Run
    model: Any
    model_path: Path | None
    extractor: Extractor
    reducers: dict[str, str]
    schema: TapSchema
    source: Source | None
    fingerprint: dict[str, Any] | None

    @property
    def layer_specs(self) -> dict[str, str]:
        """``{key: canonical path}``: specs that give the same taps, for another process."""
        return self.schema.layers()

    def attributes(self, **extra: Any) -> dict[str, Any]:
        """The attributes every output of the run records (before ``taps`` and ``rows``).

        ``extra`` (such as the engine's name) comes before the run's ``meta``.
        """
        from layertap import __version__

        preprocessing = self.source.preprocessing if self.source is not None else {}
        return {
            "model": self.run.model.label,
            "layers": self.schema.layers(),
            "pool": self.reducers,
            "preprocessing": preprocessing,
            "layertap_version": __version__,
            **extra,
            **self.run.output.meta,
        }

    def close(self) -> None:
        """Release the source's threads."""
        if self.source is not None:
            self.source.close()


def plan(
    run: Run,
    *,
    model_path: Path | None = None,
    open_source: Callable[[Run, Any], Source | None] | None = None,
    reserved: frozenset[str] = frozenset(),
) -> Plan:
    """Load the model, resolve the taps and reducers, open the inputs, build the schema.

    ``model_path`` is a local copy of a model given by URI; ``open_source`` replaces
    :func:`~layertap.io.data.make_source` (the Ray engine opens a ``Dataset`` itself).

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4, 4, 2)),
        ...                       keras.layers.Conv2D(3, 1, name="conv")])
        >>> p = plan(Run(ModelSource(m), np.ones((5, 4, 4, 2), "float32"), ["conv"],
        ...              pool="avg"))
        >>> [(c.key, c.shape, c.reducer) for c in p.schema], p.fingerprint["pool"]
        ([('conv', (3,), 'avg')], {'conv': 'avg'})
    """
    from layertap.graph.extractor import Extractor

    path = model_path or (Path(run.model.model) if run.model.is_path else None)
    model, encode, options = open_model(run, path)
    run = dataclasses.replace(run, input=options)
    layers = run.layers.specs(model) if isinstance(run.layers, LayerOptions) else run.layers
    extractor = Extractor(model, layers)
    keys = list(extractor.outputs)
    if run.output.path is None and "paths" in keys:
        raise BadSpecError("an output named 'paths' clashes with the row ids; use another alias")
    reducers = resolve_pool(run.pool, keys)
    opener = open_source or default_source
    source = opener(run, model) if encode is None else _open_text(run, encode)
    try:
        fmt = run.output.format if run.output.path is not None else None
        sample = source.sample() if source is not None else None
        schema = tap_schema(extractor, reducers, fmt, sample, reserved)
        schema = schema.stored_as(run.output.dtype)
        fingerprint = None
        if source is not None and source.fingerprint is not None:
            model_hash = model_fingerprint(model, path)
            fingerprint = run_fingerprint(
                model_hash, schema, source.preprocessing, source.fingerprint
            )
            if fingerprint is not None and run.output.dtype != "float32":
                fingerprint["dtype"] = run.output.dtype  # float32 files predate the option
    except BaseException:
        if source is not None:
            source.close()
        raise
    return Plan(run, model, path, extractor, reducers, schema, source, fingerprint)


def default_source(run: Run, model: Any) -> Source:
    """The run's inputs as a :class:`~layertap.io.data.Source` for ``model``."""
    expected = model_input_rows(model)
    return make_source(run.inputs, model, run.input, batch_size=run.batch_size, expected=expected)


def model_input_rows(model: Any) -> dict[str, tuple[int | None, ...]]:
    """``{input name: row shape}`` of a model with a graph (``{}`` for one without).

    Example:
        >>> import keras
        >>> a, b = keras.Input((3,), name="a"), keras.Input((2, 4), name="b")
        >>> m = keras.Model([a, b], keras.layers.Concatenate()([a, keras.layers.Flatten()(b)]))
        >>> model_input_rows(m)
        {'a': (3,), 'b': (2, 4)}
    """
    from layertap.graph.walk import inner_graph, input_names

    graph = inner_graph(model)
    if graph is None:
        return {}
    shapes = [tuple(x.shape[1:]) for x in graph.inputs]
    return dict(zip(input_names(graph), shapes, strict=True))


def _open_text(run: Run, encode: Encode) -> Source:
    return make_source(run.inputs, None, run.input, batch_size=run.batch_size, encode=encode)


def open_model(run: Run, path: Path | None) -> tuple[Any, Encode | None, InputOptions]:
    """The model; the text encoder its keras-hub preset (or ``preprocess=``) brings; and
    the run's input options, holding the preset's image converter when it has one."""
    from layertap.graph.preset import Preset, is_preset, load_preset, text_inputs

    source = run.model.model
    preset: Preset | None = None
    if isinstance(source, Preset):
        preset = source
    elif run.model.is_path and is_preset(os.fspath(source)):
        preset = load_preset(os.fspath(path or source), sequence_length=run.input.sequence_length)
    model = preset.model if preset is not None else run.model.load(path)
    options = run.input
    if preset is not None and preset.kind == "image":
        converter = preset.image_preprocess(options.size)
        options = dataclasses.replace(options, preset_images=converter)
    preprocessor = preset.preprocessor if preset is not None and preset.kind == "text" else None
    if is_text_preprocessor(options.preprocess):
        preprocessor = options.preprocess
    if preprocessor is None:
        return model, None, options
    # Through a Preset, the encoder gives exactly the backbone's inputs in its dtypes.
    text = Preset(model, preprocessor, "text", options.sequence_length, run.model.label)
    encode = functools.partial(text_inputs, text, sequence_length=options.sequence_length)
    return model, encode, options
