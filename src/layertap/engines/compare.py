"""Two models, the same taps, the same inputs, batch by batch: where do they part?

:func:`compare` builds one :class:`~layertap.Extractor` per model over the same layer
specs, runs every batch of ``inputs`` through both, and feeds each tap's pair of
batches to a :class:`~layertap.analysis.compare.DiffStats` (relative error, max error,
minibatch CKA); nothing but one batch of each model is held. The result is a
:class:`~layertap.analysis.compare.Comparison`, keyed in model order, as
:func:`~layertap.analysis.compare.compare_files` gives for two feature files.

Both models run in this process, so on one Keras backend; to compare backends, extract
to a file on each and compare the files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from layertap._errors import BadInputError, BadSpecError, LayertapError
from layertap.analysis.compare import Comparison, DiffStats, check_batch_size

__all__ = ["compare"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _open(model: Any, which: str, safe_mode: bool) -> tuple[Any, str]:
    """``(keras.Model or Preset, label)`` for a model, a model file or a preset."""
    from layertap.graph.load import load_model
    from layertap.graph.preset import Preset, is_preset, load_preset

    if isinstance(model, str | os.PathLike):
        text = os.fspath(model)
        try:
            if is_preset(text):
                return load_preset(text), text
            return load_model(text, safe_mode=safe_mode), text
        except LayertapError as exc:
            raise type(exc)(f"model {which} ({text}): {exc}") from exc
    if isinstance(model, Preset):
        return model, model.source or str(model.model.name)
    if not hasattr(model, "layers"):
        raise BadInputError(
            f"model {which} is a {type(model).__name__}; give a keras.Model, a model file "
            "(.keras, .h5, a SavedModel) or a keras-hub preset"
        )
    return model, str(model.name)


def _extractor(model: Any, layers: Any, which: str, label: str, options: Mapping[str, Any]) -> Any:
    from layertap.graph.extractor import Extractor

    try:
        return Extractor(model, layers, **options)
    except LayertapError as exc:  # a spec it lacks, an ambiguous one: say which model
        raise type(exc)(f"in model {which} ({label}): {exc}") from exc


def _model_order(ex: Any) -> list[str]:
    """The extractor's keys sorted by where their layer is in the model (walk order)."""
    from layertap.graph.walk import walk

    try:
        order = {p.path: i for i, p in enumerate(walk(ex.source))}
    except LayertapError:  # pragma: no cover (the extractor walked it already)
        order = {}
    keys = list(ex.outputs)
    return sorted(keys, key=lambda k: order.get(ex.places[k].path, len(order) + keys.index(k)))


def _check_taps(ex_a: Any, ex_b: Any, labels: tuple[str, str]) -> None:
    ka, kb = list(ex_a.outputs), list(ex_b.outputs)
    if set(ka) != set(kb):
        only_a = [k for k in ka if k not in kb]
        only_b = [k for k in kb if k not in ka]
        raise BadSpecError(
            f"the layer specs give different taps in the two models: only in A "
            f"({labels[0]}): {only_a}; only in B ({labels[1]}): {only_b}; give specs both "
            "models have, or a dict alias -> spec"
        )
    for key in ka:
        sa, sb = ex_a.outputs[key].shape[1:], ex_b.outputs[key].shape[1:]
        if len(sa) != len(sb) or any(
            x is not None and y is not None and x != y for x, y in zip(sa, sb, strict=True)
        ):
            raise BadSpecError(
                f"tap {key!r} has shape {sa} in A ({labels[0]}) and {sb} in B "
                f"({labels[1]}): compare layers whose outputs have the same shape"
            )


def _rows(x: Any) -> int:
    if isinstance(x, Mapping):
        x = next(iter(x.values()))
    elif isinstance(x, list | tuple):
        x = x[0]
    return len(x)


def _slice(x: Any, rows: slice) -> Any:
    if isinstance(x, Mapping):
        return {k: np.asarray(v[rows]) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [np.asarray(v[rows]) for v in x]
    return np.asarray(x[rows])


def _items(inputs: Any, text: bool) -> Any:
    """``inputs`` as a list of raw items, or arrays (a path to ``.npy``: memory-mapped)."""
    from PIL import Image

    if isinstance(inputs, str | os.PathLike) and not (text and isinstance(inputs, str)):
        path = Path(inputs)
        if path.suffix.lower() == ".npy" and path.is_file():
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if text and path.suffix.lower() == ".txt" and path.is_file():
            return [line for line in path.read_text().splitlines() if line.strip()]
        if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES:
            return [path]
        from layertap.io.data import expand_inputs

        return expand_inputs([path])
    if isinstance(inputs, str | Image.Image):
        return [inputs]
    return inputs


def _batches(inputs: Any, batch_size: int) -> Iterator[Any]:
    if isinstance(inputs, list) and inputs and not hasattr(inputs[0], "shape"):
        for i in range(0, len(inputs), batch_size):
            yield inputs[i : i + batch_size]
        return
    n = _rows(inputs)
    for i in range(0, n, batch_size):
        yield _slice(inputs, slice(i, i + batch_size))


def compare(
    model_a: Any,
    model_b: Any,
    inputs: Any,
    layers: Any,
    *,
    batch_size: int = 32,
    unbiased: bool = True,
    preprocess: Any = None,
    size: tuple[int, int] | None = None,
    resize: str = "bilinear",
    safe_mode: bool = True,
) -> Comparison:
    """Run the same taps of two models over the same inputs; how far apart is each layer?

    Wide because it is a public entry point: the models, what they take and the
    Extractor's input options.

    Args:
        model_a: the reference: a ``keras.Model``, a model file (loaded with
            :func:`~layertap.load_model`) or a keras-hub preset (a directory or a
            :class:`~layertap.Preset`).
        model_b: the model compared with it (the same kinds).
        inputs: what both models take: arrays (one, a list or a dict; a ``.npy`` path),
            image files (a list, a folder, a glob; decoded as :class:`~layertap.Extractor`
            decodes them), PIL images, or texts for a preset with a text preprocessor (a
            list of strings, or a ``.txt`` file, one text a line).
        layers: layer specs as :class:`~layertap.Extractor` takes them; each must exist
            in both models (an error names the one that lacks it).
        batch_size: inputs per forward pass and per CKA block.
        unbiased: CKA with the unbiased HSIC estimator (Nguyen et al.'s minibatch CKA).
        preprocess: for image files: as :class:`~layertap.Extractor` takes it.
        size: for image files: as :class:`~layertap.Extractor` takes it.
        resize: for image files: as :class:`~layertap.Extractor` takes it.
        safe_mode: for model files: refuse stored code (Lambda layers) unless False.

    Returns:
        a :class:`~layertap.analysis.compare.Comparison` ``{key: LayerDiff(rel_error,
        max_abs, cka)}`` in model order, with ``.first_divergent(threshold)``,
        ``.table()`` and ``.plot()``.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="h"),
        ...                       keras.layers.Dense(2, name="out")])
        >>> copy = keras.models.clone_model(m)
        >>> copy.set_weights(m.get_weights())
        >>> _ = copy.get_layer("out").kernel.assign(m.get_layer("out").kernel * 1.1)
        >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
        >>> c = compare(m, copy, x, ["h", "out"], batch_size=8)
        >>> c["h"].rel_error, c.first_divergent(1e-3), round(c["out"].cka, 3) > 0.9
        (0.0, 'out', True)
    """
    check_batch_size(batch_size, unbiased)
    source_a, label_a = _open(model_a, "A", safe_mode)
    source_b, label_b = _open(model_b, "B", safe_mode)
    options = {"preprocess": preprocess, "size": size, "resize": resize}
    ex_a = _extractor(source_a, layers, "A", label_a, options)
    ex_b = _extractor(source_b, layers, "B", label_b, options)
    _check_taps(ex_a, ex_b, (label_a, label_b))
    keys = _model_order(ex_a)
    stats = {key: DiffStats(unbiased) for key in keys}
    items = _items(inputs, ex_a.preprocessor is not None)
    rows = 0
    for batch in _batches(items, batch_size):
        out_a, out_b = ex_a(batch), ex_b(batch)
        for key in keys:
            stats[key].update(out_a[key], out_b[key])
        rows += len(out_a[keys[0]]) if keys else 0
    if rows == 0:
        raise BadInputError("compare got no inputs: give at least one row")
    layer_paths = {key: ex_a.places[key].path for key in keys}
    diffs = {key: stats[key].result() for key in keys}
    return Comparison(diffs, rows, batch_size, unbiased, (label_a, label_b), layer_paths)
