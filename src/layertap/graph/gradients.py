"""Stage 4c, gradients: a scalar target differentiated at every tap and at the input.

The gradient model is the tap model built with probes (``build_model(probes=True,
score=True)``): every tapped tensor passes through :func:`~layertap.graph.capture.probe`
before later layers use it, and the model's score (its first output, before a final
softmax) is one more output. One forward and one backward pass then give the
activations and the gradients of every tap, and the gradient at the input, with each
backend's own autodiff:

* TensorFlow: a ``GradientTape`` over the forward pass; the tape differentiates at the
  tensors the probes saw (the same tensors later layers used);
* torch: ``torch.autograd.grad`` at those tensors;
* JAX: ``jax.vjp`` of a pure function of the inputs and of one zero *perturbation* per
  tap, which the probes add: the gradient at a tap is the gradient at its perturbation.
  The pass runs through ``stateless_call`` under ``jax.jit``, compiled once per shape.

A pass may also *scale* taps (``run(x, target, scale={key: alpha})``): the probe passes
``alpha * value`` on, so the rest of the model runs from the scaled value, and the
gradient is taken at the scaled value (the tape's and autograd's tensor is the scaled
one; JAX's perturbation is added after the scaling). The factors are arguments of the
compiled step (a ``tf.function`` input, a ``jax.jit`` argument), so a sweep over alpha
compiles once. This is what layer integrated gradients runs on.

The user's layers are never changed: the probes and the logits head are new layers of
the gradient model, which re-calls the user's layers as the tap model does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import tree

from layertap._errors import BadInputError, BadSpecError
from layertap.graph.build import SCORE_KEY
from layertap.graph.capture import probing

__all__ = [
    "SCORE",
    "GradientRunner",
    "Gradients",
    "Target",
    "check_rows",
    "join_gradients",
    "slice_target",
]

#: The key of the model's score (its first output, before a final softmax) in the dict
#: a callable ``target`` receives.
SCORE = SCORE_KEY

#: What ``target`` may be: ``None`` (each row's top-scoring class), a class index, one
#: index per row, ``(tap key, index or indices)`` for a tap's flattened row, or a callable
#: on the dict of tensors (the taps, and :data:`SCORE`) returning one score per row.
Target = Any


@dataclasses.dataclass
class Gradients:
    """The activations at every tap and the gradients of one score per row there.

    Attributes:
        activations: ``{key: array}``, as :class:`~layertap.Extractor` returns them.
        gradients: ``{key: array}`` of the same shapes: d(score of each row) / d(tap).
            Taps of an integer dtype have no gradient and are left out.
        input_gradients: the gradient at the model's input, shaped as the input was
            given (one array, a list or a dict); ``None`` for integer inputs.
        scores: ``(n,)``, the differentiated score of each row.
        targets: ``(n,)`` flat indices of the scored entries (``None`` for a callable).
        output: the model's score output (logits where the model ends in a softmax).
        masks: ``{key: bool array}``, the Keras mask that came with a tap (an
            ``Embedding(mask_zero=True)`` and the layers after it), for the taps that
            had one.
    """

    activations: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray]
    input_gradients: Any
    scores: np.ndarray
    targets: np.ndarray | None
    output: np.ndarray
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _flat_rows(x: Any) -> Any:
    n = keras.ops.shape(x)[0]
    return keras.ops.reshape(x, (n, -1))


def _pick(rows: Any, index: Any) -> Any:
    return keras.ops.take_along_axis(rows, keras.ops.expand_dims(index, 1), axis=1)[:, 0]


@dataclasses.dataclass(frozen=True)
class _Score:
    """How a batch's outputs become one score per row (see :data:`Target`)."""

    key: str  # the output indexed (SCORE or a tap key); unused for a callable
    fn: Callable[[dict[str, Any]], Any] | None = None
    top: bool = False  # each row's argmax of ``key``

    def __call__(self, outputs: dict[str, Any], index: Any) -> tuple[Any, Any]:
        """``(per-row scores, flat indices used)``."""
        if self.fn is not None:
            scores = keras.ops.convert_to_tensor(self.fn(outputs))
            if len(keras.ops.shape(scores)) != 1:
                scores = keras.ops.reshape(scores, (-1,))
            return scores, index
        rows = _flat_rows(outputs[self.key])
        if self.top:
            index = keras.ops.argmax(rows, axis=1)
        return _pick(rows, index), index


def _score_for(target: Target, keys: Sequence[str], n: int) -> tuple[_Score, np.ndarray]:
    """The score of ``target`` and its per-row indices (a placeholder for ``None``)."""
    zeros = np.zeros((n,), "int32")
    if target is None:
        return _Score(SCORE, top=True), zeros
    if callable(target):
        return _Score(SCORE, fn=target), zeros
    key = SCORE
    if isinstance(target, tuple):
        if len(target) != 2 or target[0] not in keys:
            raise BadSpecError(
                f"target {target!r}: a tuple target is (tap key, index or indices), with a "
                f"key from {list(keys)!r}"
            )
        key, target = target
    index = np.asarray(target)
    if not np.issubdtype(index.dtype, np.integer) or index.ndim > 1:
        raise BadSpecError(
            f"target {target!r}: give a class index, one index per row, (tap key, "
            "indices), a callable on the taps, or None for each row's top class"
        )
    index = np.broadcast_to(index, (n,)) if index.ndim == 0 else index
    if index.shape != (n,):
        raise BadSpecError(f"target has {index.shape[0]} indices for a batch of {n} rows")
    return _Score(key), index.astype("int32")


def _floating(x: Any) -> bool:
    return bool(keras.backend.is_float_dtype(keras.backend.standardize_dtype(x.dtype)))


class GradientRunner:
    """One forward and one backward pass of a gradient model, per backend.

    Example:
        >>> from layertap.graph.build import build_model
        >>> from layertap.graph.walk import walk
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> g = build_model(m, {"d": walk(m)[0]}, name="g", probes=True, score=True)
        >>> out = GradientRunner(g, ["d"]).run(np.ones((4, 3), "float32"), 1)
        >>> out.gradients["d"][0].tolist(), out.targets.tolist()
        ([0.0, 1.0], [1, 1, 1, 1])
    """

    def __init__(self, model: keras.Model, keys: Sequence[str]) -> None:
        self.model = model
        self.keys = [k for k in keys if _floating(model.output[k])]
        self._jitted: dict[Any, Any] = {}

    def run(
        self, x: Any, target: Target = None, scale: Mapping[str, float] | None = None
    ) -> Gradients:
        """Differentiate one batch ``x`` (what the gradient model takes) at its taps.

        ``scale`` (``{tap key: factor}``) multiplies those taps' values for this pass:
        the model runs on from ``factor * value``, and the activations and gradients
        reported there are the scaled value's.
        """
        n = int(keras.ops.shape(tree.flatten(x)[0])[0])
        score, index = _score_for(target, [k for k in self.model.output if k != SCORE], n)
        scales = self._scales(scale)
        backend = keras.backend.backend()
        if backend == "jax":
            out, grads, gx, scores, used, masks = self._jax(x, score, index, scales)
        elif backend == "torch":
            out, grads, gx, scores, used, masks = self._torch(x, score, index, scales)
        else:
            out, grads, gx, scores, used, masks = self._tensorflow(x, score, index, scales)
        numpy = keras.ops.convert_to_numpy
        return Gradients(
            activations={k: numpy(v) for k, v in out.items() if k != SCORE},
            gradients={k: numpy(grads[k]) for k in self.keys},
            input_gradients=tree.map_structure(
                lambda g: None if g is None else numpy(g), gx, none_is_leaf=False
            ),
            scores=numpy(scores),
            targets=None if score.fn is not None else numpy(used),
            output=numpy(out[SCORE]),
            masks={k: numpy(m).astype(bool) for k, m in masks.items() if k != SCORE},
        )

    def _scales(self, scale: Mapping[str, float] | None) -> dict[str, np.ndarray]:
        """``scale`` checked: float taps of this model, one number each (float32)."""
        if not scale:
            return {}
        unknown = sorted(k for k in scale if k not in self.keys)
        if unknown:
            raise BadSpecError(
                f"scale= names taps {unknown!r}; a pass scales the floating-point taps "
                f"{self.keys!r}"
            )
        out = {k: np.asarray(v, np.float32) for k, v in scale.items()}
        bad = sorted(k for k, v in out.items() if v.ndim != 0)
        if bad:
            raise BadSpecError(f"scale= takes one number per tap; {bad!r} got arrays")
        return out

    def _tensorflow(
        self, x: Any, score: _Score, index: np.ndarray, scales: dict[str, np.ndarray]
    ) -> tuple[Any, ...]:
        import tensorflow as tf

        xs = tree.map_structure(tf.convert_to_tensor, x)
        signature = (score, tuple(sorted(scales)))
        step = self._jitted.get(signature)
        if step is None:  # one tf.function per score and scaled taps, traced per shape
            step = self._jitted[signature] = tf.function(
                self._tensorflow_step(score), reduce_retracing=True
            )
        factors = {k: tf.constant(v) for k, v in scales.items()}
        out, tap_grads, input_grads, scores, used, masks = step(xs, tf.constant(index), factors)
        it = iter(input_grads)
        gx = [next(it) if _floating(t) else None for t in tree.flatten(xs)]
        return out, dict(tap_grads), tree.pack_sequence_as(x, gx), scores, used, dict(masks)

    def _tensorflow_step(self, score: _Score) -> Any:
        import tensorflow as tf

        model, keys = self.model, self.keys

        def step(xs: Any, index: Any, scales: Any) -> Any:
            floats = [t for t in tree.flatten(xs) if _floating(t)]
            with tf.GradientTape() as tape:
                tape.watch(floats)
                with probing(scales=scales or None) as seen:
                    out = model(xs, training=False)
                scores, used = score(out, index)
                total = tf.reduce_sum(scores)
            at = [seen.seen[k] for k in keys]
            grads = tape.gradient(total, [*at, *floats])
            # An unconnected tap or input (after the score, or beside it) has gradient 0.
            wanted = [*at, *floats]
            grads = [
                tf.zeros_like(t) if g is None else g for g, t in zip(grads, wanted, strict=True)
            ]
            taps = dict(zip(keys, grads[: len(at)], strict=True))
            return out, taps, grads[len(at) :], scores, used, dict(seen.masks)

        return step

    def _torch(
        self, x: Any, score: _Score, index: np.ndarray, scales: dict[str, np.ndarray]
    ) -> tuple[Any, ...]:
        import torch

        def leaf(a: Any) -> Any:
            t = keras.ops.convert_to_tensor(a).detach()
            return t.requires_grad_(True) if t.is_floating_point() else t

        xs = tree.map_structure(leaf, x)
        flat = tree.flatten(xs)
        factors = {k: keras.ops.convert_to_tensor(v) for k, v in scales.items()}
        with torch.enable_grad(), probing(scales=factors or None) as seen:
            out = self.model(xs, training=False)
            scores, used = score(out, keras.ops.convert_to_tensor(index))
            total = scores.sum()
        at = [seen.seen[k] for k in self.keys]
        float_inputs = [t for t in flat if t.requires_grad]
        grads = torch.autograd.grad(total, [*at, *float_inputs], allow_unused=True)
        tap_grads = dict(zip(self.keys, grads[: len(at)], strict=True))
        rest = iter(grads[len(at) :])
        gx = [next(rest) if t.requires_grad else None for t in flat]
        gx = [None if t is None else t.detach() for t in gx]
        out = {k: v.detach() for k, v in out.items()}
        return (
            out,
            _zeros_for_none(tap_grads, out),
            tree.pack_sequence_as(x, gx),
            scores.detach(),
            used,
            {k: m.detach() for k, m in seen.masks.items()},
        )

    def _jax(
        self, x: Any, score: _Score, index: np.ndarray, scales: dict[str, np.ndarray]
    ) -> tuple[Any, ...]:
        import jax

        model = self.model
        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]
        xs = tree.map_structure(keras.ops.convert_to_tensor, x)
        # Hashable for a list or dict of inputs too: the structure spelled out.
        shapes = repr(tree.map_structure(lambda t: (tuple(t.shape), str(t.dtype)), xs))
        signature = (score, shapes, tuple(sorted(scales)))
        step = self._jitted.get(signature)
        if step is None:
            step = self._jitted[signature] = jax.jit(self._jax_step(score, xs, trainable, frozen))
        return tuple(step(trainable, frozen, xs, index, scales))

    def _jax_step(self, score: _Score, xs: Any, trainable: Any, frozen: Any) -> Any:
        import jax
        import jax.numpy as jnp

        model, keys = self.model, self.keys

        def forward(tv: Any, ntv: Any, inputs: Any, deltas: Any, index: Any, scales: Any) -> Any:
            with probing(deltas, scales or None) as seen:
                out, _ = model.stateless_call(tv, ntv, inputs, training=False)
            scores, used = score(out, index)
            return jnp.sum(scores), (out, scores, used, dict(seen.masks))

        shapes = jax.eval_shape(
            lambda tv, ntv, inputs: model.stateless_call(tv, ntv, inputs, training=False)[0],
            trainable,
            frozen,
            xs,
        )
        floats = [_floating(t) for t in tree.flatten(xs)]

        def step(tv: Any, ntv: Any, inputs: Any, index: Any, scales: Any) -> Any:
            deltas = {k: jnp.zeros(shapes[k].shape, shapes[k].dtype) for k in keys}
            flat = tree.flatten(inputs)

            def of(float_inputs: Any, deltas: Any) -> Any:
                it = iter(float_inputs)
                full = [next(it) if f else t for t, f in zip(flat, floats, strict=True)]
                return forward(tv, ntv, tree.pack_sequence_as(inputs, full), deltas, index, scales)

            float_inputs = [t for t, f in zip(flat, floats, strict=True) if f]
            _, vjp, (out, scores, used, masks) = jax.vjp(of, float_inputs, deltas, has_aux=True)
            g_inputs, g_taps = vjp(jnp.ones((), jnp.float32))
            it = iter(g_inputs)
            gx = [next(it) if f else None for f in floats]
            return out, g_taps, tree.pack_sequence_as(inputs, gx), scores, used, masks

        return step


def _zeros_for_none(grads: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, Any]:
    """A tap the score does not depend on (after it, or beside it) has gradient zero."""
    return {k: keras.ops.zeros_like(out[k]) if g is None else g for k, g in grads.items()}


def check_rows(x: Any) -> int:
    """The number of rows of a batch (all inputs must agree).

    Example:
        >>> check_rows({"a": np.ones((3, 2)), "b": np.ones((3,))})
        3
    """
    lengths = {int(a.shape[0] if hasattr(a, "shape") else np.shape(a)[0]) for a in tree.flatten(x)}
    if len(lengths) != 1:
        raise BadInputError(
            f"input arrays have different numbers of rows {sorted(lengths)}; "
            "every input needs one row per example"
        )
    return lengths.pop()


def slice_target(target: Target, rows: slice, n: int) -> Target:
    """The part of ``target`` for ``rows`` of an ``n``-row input (per-row indices are cut).

    Example:
        >>> slice_target([4, 5, 6], slice(1, 3), 3), slice_target(2, slice(0, 1), 3)
        ([5, 6], 2)
    """
    key, index = target if isinstance(target, tuple) and len(target) == 2 else (None, target)
    if index is None or callable(index) or np.ndim(index) == 0:
        return target
    if np.shape(index)[0] != n:
        raise BadSpecError(f"target has {np.shape(index)[0]} indices for {n} rows")
    part = list(np.asarray(index)[rows]) if isinstance(index, list) else np.asarray(index)[rows]
    part = [int(i) for i in part] if isinstance(index, list) else part
    return (key, part) if key is not None else part


def join_gradients(parts: Sequence[Gradients]) -> Gradients:
    """Batches' results, rows joined in order.

    Example:
        >>> one = Gradients({"h": np.ones((1, 2))}, {"h": np.zeros((1, 2))}, np.ones((1, 3)),
        ...                 np.ones(1), np.zeros(1, "int32"), np.ones((1, 4)))
        >>> join_gradients([one, one]).activations["h"].shape
        (2, 2)
    """
    if len(parts) == 1:
        return parts[0]

    def cat(*arrays: Any) -> Any:
        return None if arrays[0] is None else np.concatenate(arrays)

    first = parts[0]
    return Gradients(
        activations={k: cat(*(p.activations[k] for p in parts)) for k in first.activations},
        gradients={k: cat(*(p.gradients[k] for p in parts)) for k in first.gradients},
        input_gradients=tree.map_structure(cat, *(p.input_gradients for p in parts)),
        scores=cat(*(p.scores for p in parts)),
        targets=None if first.targets is None else cat(*(p.targets for p in parts)),
        output=cat(*(p.output for p in parts)),
        masks={k: cat(*(p.masks[k] for p in parts)) for k in first.masks},
    )
