"""Stage 6, explain: ``explain(model, x, layer, method=...)``, maps per image in [0, 1].

Each method is a small function over activations and gradients from
:meth:`layertap.Extractor.gradients` (one forward and one backward pass per batch), or
over forward passes only (Score-CAM), or over several gradient passes at the input
(SmoothGrad, integrated gradients). The maps are computed at the layer's resolution,
then upsampled to the input's (``upsample=True``) and normalised to [0, 1] per image.

At a ``(batch, tokens, dim)`` layer (an embedding, a transformer block) the
:data:`TOKEN_METHODS` give one signed, raw attribution per token instead, padding 0;
layer integrated gradients runs the rest of the model from the scaled tap
(``Extractor.gradients(..., scale=)``).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import tree

from layertap._errors import BadInputError, BadSpecError, LayerNotFoundError
from layertap.explainer import maps
from layertap.graph.extractor import Extractor
from layertap.graph.gradients import Gradients, Target, check_rows
from layertap.io.reduce import MASK_INPUT

__all__ = [
    "ALL_SCORES",
    "ATTENTION_METHODS",
    "CAM_METHODS",
    "INPUT_METHODS",
    "METHODS",
    "TOKEN_METHODS",
    "Explanation",
    "explain",
]

logger = logging.getLogger(__name__)

#: Methods on a layer's activations and gradients: name -> map function.
CAM_METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "gradcam": maps.gradcam,
    "gradcam++": maps.gradcam_plus_plus,
    "layercam": maps.layercam,
    "gradxact": maps.grad_times_activation,
}
#: Methods at the input (they take no layer).
INPUT_METHODS = ("saliency", "smoothgrad", "integrated_gradients")
#: Methods over attention probabilities (forward only; ``layer=`` the attention places).
ATTENTION_METHODS = ("rollout",)
#: Every method ``explain`` takes.
METHODS = (*CAM_METHODS, "scorecam", *INPUT_METHODS, *ATTENTION_METHODS)
#: Methods that give one signed attribution per token at a ``(batch, tokens, dim)`` layer.
TOKEN_METHODS = ("gradxact", "integrated_gradients", "saliency")
#: The spec ``rollout`` taps by default: every attention layer's probabilities.
ALL_SCORES = "**/scores"

_KEY = "layer"


class Explanation(np.ndarray):
    """The maps, ``(n, H, W)`` float32 in [0, 1], with what made them in ``info``; or,
    at a token layer, the attributions ``(n, tokens)``, float32, signed and raw.

    ``info`` holds ``method``, ``layer``, ``targets`` (the class of each row) and
    ``scores`` (its pre-softmax score), and for integrated gradients ``completeness``:
    the attributions' sum next to ``score(x) - score(baseline)``, per row, and the
    largest relative gap. Token attributions add ``tokens`` (each row's token strings,
    padding included, or ``None`` without a tokenizer) and ``mask`` (per row, ``True``
    for a real token, or ``None`` when the model has no padding mask).
    """

    info: dict[str, Any]

    def __new__(cls, maps_: np.ndarray, info: dict[str, Any]) -> Explanation:
        out = np.asarray(maps_, np.float32).view(cls)
        out.info = info
        return out

    def __array_finalize__(self, obj: Any) -> None:
        self.info = getattr(obj, "info", {})

    def _repr_png_(self) -> bytes | None:
        """The maps side by side, in Jupyter (needs the ``viz`` extra)."""
        if self.ndim != 3:
            return None
        from layertap.explainer.viz import heatmap_row

        titles = [f"class {t}" for t in self.info.get("targets") or []] or None
        return heatmap_row(np.asarray(self), titles).png


#: The last few extractors ``explain`` built, by (model, layer): a second call on the same
#: model reuses the walk, the gradient model and its compiled step. Holding the model
#: keeps its id from being reused while it is here.
_CACHE: collections.OrderedDict[tuple[int, str], tuple[Any, Extractor]] = collections.OrderedDict()
_CACHE_SIZE = 4


def _extractor(model: Any, taps: Any) -> Extractor:
    key = (id(model), repr(taps))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is model:
        _CACHE.move_to_end(key)
        return hit[1]
    ex = Extractor(model, taps)
    _CACHE[key] = (model, ex)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return ex


def _image_input(ex: Extractor, x: Any) -> np.ndarray:
    """The one image-like input array the maps are drawn over: ``(n, H, W, C)``."""
    arrays = ex.inputs(x)
    if isinstance(arrays, dict | list | tuple) and len(tree.flatten(arrays)) == 1:
        (arrays,) = tree.flatten(arrays)  # one input, kept in a dict (keras-hub) or list
    if isinstance(arrays, dict | list | tuple):
        raise BadInputError(
            "explain takes a model with one image input (n, height, width, channels); "
            f"this one takes {len(tree.flatten(arrays))} inputs"
        )
    array = np.asarray(keras.ops.convert_to_numpy(arrays), np.float32)
    if array.ndim != 4:
        raise BadInputError(
            f"explain draws maps over images (n, height, width, channels); got an input of "
            f"shape {array.shape}"
        )
    return array


def _finish(raw: np.ndarray, size: tuple[int, int] | None, info: dict[str, Any]) -> Explanation:
    out = maps.upsample(raw, size) if size is not None else raw.astype(np.float32)
    return Explanation(maps.normalize(out), info)


def _layer_maps(
    ex: Extractor, x: np.ndarray, method: str, target: Target, batch_size: int
) -> tuple[np.ndarray, Gradients]:
    g = ex.gradients(x, target, batch_size=batch_size)
    acts, grads = g.activations[_KEY], g.gradients[_KEY]
    if acts.ndim != 4:
        raise _not_spatial(ex, method, acts.shape)
    return CAM_METHODS[method](acts, grads), g


def _not_spatial(ex: Extractor, method: str, shape: tuple[int | None, ...]) -> BadSpecError:
    """The error for a map method at a layer that is not ``(n, height, width, channels)``."""
    hint = " (for token attributions: gradxact)" if len(shape) == 3 else ""
    return BadSpecError(
        f"{method} needs a spatial layer (n, height, width, channels); the tapped layer "
        f"{ex.places[_KEY].path!r} gives {tuple(shape)}: pick a convolutional layer "
        f"(layertap layers MODEL){hint}"
    )


def _classes(target: Target, top: np.ndarray) -> np.ndarray:
    """Score-CAM's class per row: ``top`` (each row's best) for ``None``, else ``target``."""
    if target is None:
        return top
    index = np.asarray(target)
    if callable(target) or isinstance(target, tuple) or not np.issubdtype(index.dtype, np.integer):
        raise BadSpecError(
            f"scorecam target {target!r}: give None (each image's top class), a class index "
            "or one index per image"
        )
    index = np.broadcast_to(index, top.shape) if index.ndim == 0 else index
    if index.shape != top.shape:
        raise BadSpecError(f"target has {index.size} indices for {len(top)} images")
    return index.astype(np.int64)


def _scorecam(
    ex: Extractor, x: np.ndarray, target: Target, batch_size: int, max_channels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score-CAM, forward passes only: the layer's channels weighted by the model's output
    (``ex`` taps the layer and ``"out"``, the last layer) for the input masked by each
    channel's map. Returns maps, classes and scores."""
    first = ex.predict(x, batch_size=batch_size)
    acts, outputs = first[_KEY], first["out"].reshape(len(x), -1)
    if acts.ndim != 4:
        raise BadSpecError(
            f"scorecam needs a spatial layer; {ex.places[_KEY].path!r} gives {acts.shape}"
        )
    classes = _classes(target, outputs.argmax(axis=1))
    out = np.zeros(acts.shape[:3], np.float32)
    for i in range(len(x)):
        order = np.argsort(-acts[i].var(axis=(0, 1)))[:max_channels]
        masks = maps.normalize(maps.upsample(np.moveaxis(acts[i][..., order], -1, 0), x.shape[1:3]))
        scores = []
        for start in range(0, len(order), batch_size):
            masked = x[i][None] * masks[start : start + batch_size, ..., None]
            rows = ex(masked)["out"].reshape(len(masked), -1)
            scores.append(rows[:, classes[i]])
        weights = np.zeros(acts.shape[-1], np.float32)
        weights[order] = np.concatenate(scores)
        out[i] = maps.weighted_sum(acts[i][None], weights[None])[0]
    return out, classes, outputs[np.arange(len(x)), classes]


def _input_grads(
    ex: Extractor, x: np.ndarray, target: Target, batch_size: int
) -> tuple[np.ndarray, Gradients]:
    g = ex.gradients(x, target, batch_size=batch_size)
    return np.asarray(g.input_gradients), g


def _smoothgrad(
    ex: Extractor, x: np.ndarray, target: Target, batch_size: int, samples: int, noise: float
) -> tuple[np.ndarray, Gradients]:
    """SmoothGrad: mean |gradient| over noisy copies (sigma = noise x each image's range)."""
    _, g = _input_grads(ex, x, target, batch_size)  # fixes each row's class
    classes = g.targets if g.targets is not None else target
    rng = np.random.default_rng(0)
    sigma = noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    total = np.zeros_like(x)
    for _ in range(samples):
        noisy = x + rng.normal(size=x.shape).astype(np.float32) * sigma[:, None, None, None]
        total += np.abs(_input_grads(ex, noisy, classes, batch_size)[0])
    return (total / samples).max(axis=-1), g


def _completeness(
    sums: np.ndarray, expected: np.ndarray, steps: int, baseline: str
) -> dict[str, Any]:
    """Integrated gradients' check: the attributions' sums against ``expected``
    (score(x) - score(baseline)), logged as a warning when off by over 5%."""
    gap = np.abs(sums - expected) / np.maximum(np.abs(expected), 1e-6)
    if gap.max() > 0.05:
        logger.warning(
            "integrated gradients: attributions miss score(x) - score(%s) by up to "
            "%.1f%% with %d steps; pass steps= higher",
            baseline,
            100 * gap.max(),
            steps,
        )
    return {
        "attributions": sums.tolist(),
        "score_minus_baseline": expected.tolist(),
        "max_relative_gap": float(gap.max()),
        "steps": steps,
    }


def _integrated(
    ex: Extractor, x: np.ndarray, target: Target, batch_size: int, steps: int
) -> tuple[np.ndarray, Gradients, dict[str, Any]]:
    """Integrated gradients from a black baseline, trapezoid rule, completeness checked."""
    g = ex.gradients(x, target, batch_size=batch_size)
    classes = g.targets if g.targets is not None else target
    baseline = np.zeros_like(x)
    total = np.zeros_like(x)
    for j in range(steps + 1):
        alpha = j / steps
        step = (
            g  # the path ends at x: its gradients are the first pass's
            if j == steps
            else ex.gradients(baseline + alpha * (x - baseline), classes, batch_size=batch_size)
        )
        weight = 0.5 if j in (0, steps) else 1.0
        total += weight * np.asarray(step.input_gradients)
        if j == 0:
            at_baseline = step.scores
    attributions = (x - baseline) * total / steps
    sums = attributions.sum(axis=(1, 2, 3))
    check = _completeness(sums, g.scores - at_baseline, steps, "baseline")
    return np.abs(attributions).sum(axis=-1), g, check


def _token_layer(ex: Extractor, method: str) -> bool:
    """Whether the tap is a token layer ``(batch, tokens, dim)``, for a token method.

    ``gradxact`` also takes a spatial layer (a map); any other shape is an error naming
    the layer and its shape.
    """
    shape = tuple(ex.outputs[_KEY].shape)
    if len(shape) == 3:
        return True
    if method in CAM_METHODS and len(shape) == 4:
        return False
    also = " (or a spatial layer (batch, height, width, channels) for a map)"
    raise BadSpecError(
        f"{method} at a layer gives token attributions and needs a (batch, tokens, dim) "
        f"layer{also if method in CAM_METHODS else ''}; {ex.places[_KEY].path!r} gives "
        f"{shape}: pick an embedding or a transformer block (layertap layers MODEL)"
        + ("" if method in CAM_METHODS else f", or leave layer out for {method} at the input")
    )


def _token_mask(arrays: Any, g: Gradients, shape: tuple[int, int]) -> np.ndarray | None:
    """``(n, tokens)`` True for real tokens: the ``padding_mask`` input and the tap's
    Keras mask, where either is token-aligned; ``None`` when neither is."""
    found = []
    if isinstance(arrays, dict) and MASK_INPUT in arrays:
        found.append(np.asarray(keras.ops.convert_to_numpy(arrays[MASK_INPUT])) != 0)
    if _KEY in g.masks:
        found.append(np.asarray(g.masks[_KEY], bool))
    found = [m for m in found if m.shape == shape]
    return np.logical_and.reduce(found) if found else None


def _token_strings(ex: Extractor, arrays: Any, shape: tuple[int, int]) -> list[list[str]] | None:
    """Each row's tokens (``tokenizer.id_to_token``, padding included) for a model with a
    keras-hub tokenizer; ``None`` for one without."""
    tokenizer = getattr(ex.preprocessor, "tokenizer", None)
    if tokenizer is None:
        return None
    ids = arrays.get("token_ids") if isinstance(arrays, dict) else arrays
    ids = None if ids is None else np.asarray(keras.ops.convert_to_numpy(ids))
    if ids is None or ids.shape != shape or not np.issubdtype(ids.dtype, np.integer):
        return None
    return [[str(tokenizer.id_to_token(int(i))) for i in row] for row in ids]


def _layer_integrated(
    ex: Extractor, arrays: Any, g: Gradients, target: Target, batch_size: int, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Layer integrated gradients from a zero baseline at the tap, trapezoid rule.

    Pass ``j`` scales the tap by ``alpha = j / steps`` (the rest of the model runs from
    ``alpha * a``) and takes the gradient there; the attributions are ``a`` times the
    mean gradient. Returns ``(attributions like a, score with the tap zeroed)``.
    """
    if not isinstance(steps, int) or steps < 1:
        raise BadSpecError(f"integrated_gradients steps={steps!r}: give a whole number >= 1")
    classes = g.targets if g.targets is not None else target
    acts = g.activations[_KEY]
    total = np.zeros_like(acts)
    at_baseline = g.scores
    for j in range(steps + 1):
        step = (
            g  # alpha = 1: the first pass's gradients
            if j == steps
            else ex.gradients(arrays, classes, batch_size=batch_size, scale={_KEY: j / steps})
        )
        total += (0.5 if j in (0, steps) else 1.0) * step.gradients[_KEY]
        if j == 0:
            at_baseline = step.scores
    return acts * total / steps, at_baseline


def _tokens(
    ex: Extractor, x: Any, method: str, layer: Any, target: Target, batch_size: int, steps: int
) -> Explanation:
    """Token attributions at the tapped ``(batch, tokens, dim)`` layer (see :func:`explain`)."""
    arrays = ex.inputs(x)
    check_rows(arrays)
    g = ex.gradients(arrays, target, batch_size=batch_size)
    if _KEY not in g.gradients:
        raise BadSpecError(
            f"{method}: the layer {ex.places[_KEY].path!r} gives integers "
            f"({ex.outputs[_KEY].dtype}), which have no gradient: tap the embedding's output"
        )
    acts, grads = g.activations[_KEY], g.gradients[_KEY]
    extra: dict[str, Any] = {}
    if method == "gradxact":
        raw = (acts * grads).sum(axis=-1)
    elif method == "saliency":
        raw = np.sqrt((grads.astype(np.float64) ** 2).sum(axis=-1))
    else:
        attributions, at_baseline = _layer_integrated(ex, arrays, g, target, batch_size, steps)
        raw = attributions.sum(axis=-1)
    shape = (int(raw.shape[0]), int(raw.shape[1]))
    mask = _token_mask(arrays, g, shape)
    if mask is not None:
        raw = np.where(mask, raw, 0.0)
    if method == "integrated_gradients":
        sums = raw.sum(axis=1)
        extra["completeness"] = _completeness(sums, g.scores - at_baseline, steps, "layer = 0")
    info = {
        "method": method,
        "layer": layer,
        "targets": None if g.targets is None else g.targets.tolist(),
        "scores": g.scores.tolist(),
        "tokens": _token_strings(ex, arrays, shape),
        "mask": None if mask is None else mask.tolist(),
        **extra,
    }
    return Explanation(raw.astype(np.float32), info)


def _rollout(
    model: Any, x: Any, layer: Any, size: bool, batch_size: int, options: dict[str, Any]
) -> Explanation:
    """Attention rollout of a vision transformer: the class token's rolled-out attention
    over the patches, one map per image (see :func:`~layertap.explainer.maps.attention_rollout`)."""
    head_fusion = options.get("head_fusion", "mean")
    discard_ratio = float(options.get("discard_ratio", 0.0))
    prefix = options.get("prefix_tokens")
    if head_fusion not in maps.HEAD_FUSIONS:
        raise BadSpecError(f"head_fusion {head_fusion!r}: valid: {', '.join(maps.HEAD_FUSIONS)}")
    if not 0.0 <= discard_ratio < 1.0:
        raise BadSpecError(f"discard_ratio {discard_ratio!r}: give a share in [0, 1)")
    specs = [layer] if isinstance(layer, str | int) else list(layer or [ALL_SCORES])
    try:
        ex = _extractor(model, specs)
    except LayerNotFoundError:
        if layer is not None:
            raise
        name = getattr(getattr(model, "model", model), "name", "the model")
        raise BadSpecError(
            f"rollout explains a vision transformer; {name!r} has no attention layer "
            f"(no place matches {ALL_SCORES!r}: layertap layers MODEL lists them)"
        ) from None
    blocks = list(ex.places)
    for key in blocks:
        shape = ex.outputs[key].shape
        if len(shape) < 4 or shape[-1] != shape[-2]:
            raise BadSpecError(
                f"rollout needs self-attention probabilities (batch, heads, tokens, tokens); "
                f"{ex.places[key].path!r} gives {shape}: tap attention scores "
                f"('<attention layer>/scores', default {ALL_SCORES!r})"
            )
    images = _image_input(ex, x)
    out: list[np.ndarray] = []
    grid: tuple[int, tuple[int, int]] | None = None
    for start in range(0, len(images), batch_size):
        probs = ex(images[start : start + batch_size])
        joint = maps.attention_rollout(
            [probs[key] for key in blocks],
            head_fusion=head_fusion,
            discard_ratio=discard_ratio,
        )
        if grid is None:
            try:
                grid = maps.patch_grid(joint.shape[-1], images.shape[1:3], prefix)
            except ValueError as error:
                raise BadSpecError(str(error)) from None
        extra, (rows, cols) = grid
        # The class token's row (for prefix_tokens=0, no class token: every row's mean).
        row = joint[:, 0] if extra > 0 else joint.mean(axis=1)
        out.append(row[:, extra:].reshape(len(joint), rows, cols))
    if grid is None:
        raise BadInputError("rollout got no images")
    info = {
        "method": "rollout",
        "layer": [ex.places[key].path for key in blocks],
        "head_fusion": head_fusion,
        "discard_ratio": discard_ratio,
        "prefix_tokens": grid[0],
        "grid": list(grid[1]),
        "targets": None,
        "scores": None,
    }
    return _finish(np.concatenate(out), images.shape[1:3] if size else None, info)


def _image_maps(
    model: Any,
    x: Any,
    method: str,
    layer: Any,
    target: Target,
    upsample: bool,
    batch_size: int,
    options: dict[str, Any],
) -> Explanation:
    """The image methods of :func:`explain`: one map per image, in [0, 1]."""
    # The input methods tap the last layer only to have a tap: they read input gradients.
    taps = {_KEY: layer if layer is not None else -1}
    ex = _extractor(model, {**taps, "out": -1} if method == "scorecam" else taps)
    shape = tuple(ex.outputs[_KEY].shape)
    if layer is not None and len(shape) != 4:  # before the inputs: a text model's are ids
        raise _not_spatial(ex, method, shape)
    images = _image_input(ex, x)
    size = images.shape[1:3] if upsample else None
    extra: dict[str, Any] = {}
    if method == "scorecam":
        raw, classes, scores = _scorecam(
            ex, images, target, batch_size, options.get("max_channels", 64)
        )
        info = {"targets": classes.tolist(), "scores": scores.tolist()}
        return _finish(raw, size, {"method": method, "layer": layer, **info})
    if method in CAM_METHODS:
        raw, g = _layer_maps(ex, images, method, target, batch_size)
    elif method == "saliency":
        grads, g = _input_grads(ex, images, target, batch_size)
        raw = np.abs(grads).max(axis=-1)
    elif method == "smoothgrad":
        samples, noise = options.get("samples", 20), options.get("noise", 0.15)
        raw, g = _smoothgrad(ex, images, target, batch_size, samples, noise)
    else:
        raw, g, extra["completeness"] = _integrated(
            ex, images, target, batch_size, options.get("steps", 32)
        )
    info = {
        "method": method,
        "layer": layer,
        "targets": None if g.targets is None else g.targets.tolist(),
        "scores": g.scores.tolist(),
        **extra,
    }
    return _finish(raw, size, info)


def explain(
    model: Any,
    x: Any,
    layer: Any = None,
    *,
    method: str = "gradcam",
    target: Target = None,
    upsample: bool = True,
    batch_size: int = 32,
    **options: Any,
) -> Explanation:
    """Maps of where ``model`` looks for its ``target``, one per image, in [0, 1]; or, at a
    token layer, one signed attribution per token.

    Args:
        model: a ``keras.Model`` (nested sub-models, shared and custom layers
            included) or a :class:`~layertap.Preset`, taking one image input (for the
            token methods: any inputs, such as a keras-hub text model's).
        x: images: an array ``(n, H, W, C)`` as the model takes it, image paths or
            PIL images (decoded as :class:`~layertap.Extractor` decodes them); for the
            token methods what the model takes (token ids, a dict of keras-hub inputs),
            or a list of strings for a text preset (tokenized by its preprocessor).
        layer: the spatial layer spec for the CAM methods (``"backbone/block_13"``);
            ``None`` for the input methods; a ``(batch, tokens, dim)`` layer (an
            embedding, a transformer block) for token attributions.
        method: ``"gradcam"``, ``"gradcam++"``, ``"layercam"``, ``"gradxact"``,
            ``"scorecam"`` (forward passes only; ``max_channels=`` the most varied
            channels, default 64), ``"saliency"``, ``"smoothgrad"`` (``samples=``
            20, ``noise=`` 0.15) or ``"integrated_gradients"`` (``steps=`` 32; the
            completeness check is in ``.info`` and logged when off by over 5%), or
            ``"rollout"`` (attention rollout of a vision transformer, forward only:
            ``layer=`` the attention probabilities to roll out, a spec or a list in
            block order, default every attention layer's, ``"**/scores"``;
            ``head_fusion=`` ``"mean"``, ``"max"`` or ``"min"``; ``discard_ratio=``
            0.0, the share of each row's smallest weights dropped, the class token's
            kept; ``prefix_tokens=`` the tokens before the patches, by default the
            fewest, at least one, that leave a patch grid with the image's aspect:
            a class token, DINOv2's registers; 0 for a model without a class token,
            whose map is the mean of every token's row). At a token layer:
            ``"gradxact"`` (gradient x activation, summed over ``dim``),
            ``"integrated_gradients"`` (from the layer zeroed: the model runs on from
            ``alpha * a``; ``a`` x the mean gradient, summed over ``dim``; completeness
            against ``score(x) - score(layer = 0)``) or ``"saliency"`` (the gradient's
            L2 norm over ``dim``); padding tokens (``padding_mask``, a Keras mask) get 0.
        target: ``None`` for each image's top class, or what
            :meth:`~layertap.Extractor.gradients` takes.
        upsample: maps at the input's resolution (``True``) or the layer's.
        batch_size: images per forward and backward pass.

    Returns:
        An :class:`Explanation`: a float32 array ``(n, H, W)`` with ``.info``; at a
        token layer ``(n, tokens)``, signed and raw, ``.info["tokens"]`` and ``["mask"]``
        as :class:`Explanation` says (padding tokens kept: they line up with columns).

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((8, 8, 3)),
        ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
        >>> x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
        >>> cam = explain(m, x, "conv")
        >>> cam.shape, float(cam.max()) <= 1.0, explain(m, x, "conv", upsample=False).shape
        ((2, 8, 8), True, (2, 6, 6))

        Token attributions at an embedding (token 0 is padding):

        >>> t = keras.Sequential([keras.Input((5,), dtype="int32"),
        ...     keras.layers.Embedding(20, 4, mask_zero=True, name="emb"),
        ...     keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)])
        >>> ids = np.array([[3, 7, 9, 0, 0], [1, 2, 3, 4, 5]], "int32")
        >>> a = explain(t, ids, "emb", method="integrated_gradients", steps=8)
        >>> a.shape, a[0, 3:].tolist(), a.info["mask"][0]
        ((2, 5), [0.0, 0.0], [True, True, True, False, False])
    """
    if method not in METHODS:
        raise BadSpecError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if method == "rollout":
        return _rollout(model, x, layer, upsample, batch_size, options)
    if method in TOKEN_METHODS and layer is not None:
        ex = _extractor(model, {_KEY: layer})
        if _token_layer(ex, method):
            steps = options.get("steps", 32)
            return _tokens(ex, x, method, layer, target, batch_size, steps)
    elif method in INPUT_METHODS and layer is not None:
        raise BadSpecError(f"{method} explains at the input; leave layer out (it got {layer!r})")
    if method not in INPUT_METHODS and layer is None:
        raise BadSpecError(f"{method} needs layer=, a spatial layer of the model")
    return _image_maps(model, x, method, layer, target, upsample, batch_size, options)
