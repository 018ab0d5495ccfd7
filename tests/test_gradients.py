"""Gradients through taps, on every backend: each gradient against central finite
differences of the score, computed by re-running the rest of the model from the tapped
value with plain Keras; the score is the pre-softmax logit; the user's model is left
as it was."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest
from keras import layers

import layertap
from layertap.graph.gradients import SCORE
from tests.conftest import to_numpy

EPS = 1e-2  # float32: central differences of smooth functions, error ~EPS**2


def finite_differences(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """d sum(f(x)) / dx by central differences, entry by entry (float64 accumulation)."""
    grad = np.zeros(x.shape, "float64")
    for i in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[i] += EPS
        down[i] -= EPS
        grad[i] = (np.sum(f(up), dtype="float64") - np.sum(f(down), dtype="float64")) / (2 * EPS)
    return grad


def assert_grad(got: np.ndarray, want: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * scale)


def picked(logits: Any, target: np.ndarray) -> np.ndarray:
    rows = to_numpy(logits).reshape(len(target), -1)
    return rows[np.arange(len(target)), target]


# --- a head of Dense layers ------------------------------------------------------------------


@pytest.fixture
def mlp() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((4,)),
            layers.Dense(5, activation="tanh", name="h"),
            layers.Dense(6, activation="gelu", name="g"),
            layers.Dense(3, activation="softmax", name="out"),
        ]
    )


def logits_from(model: keras.Model, start: int) -> Callable[[np.ndarray], Any]:
    """The model's layers from ``start`` on, the final softmax left out: the score."""
    head = model.layers[-1]

    def run(x: np.ndarray) -> Any:
        y = keras.ops.convert_to_tensor(x.astype("float32"))
        for layer in model.layers[start:-1]:
            y = layer(y)
        return keras.ops.matmul(y, head.kernel) + head.bias

    return run


def test_gradients_at_taps_and_input_equal_finite_differences(
    mlp: keras.Model, rng: np.random.Generator
) -> None:
    x = rng.normal(size=(3, 4)).astype("float32")
    target = np.array([2, 0, 1])
    g = layertap.Extractor(mlp, ["h", "g"]).gradients(x, target=target)
    np.testing.assert_array_equal(g.targets, target)
    logits = to_numpy(logits_from(mlp, 0)(x))
    np.testing.assert_allclose(g.output, logits, rtol=1e-5, atol=1e-5)  # before the softmax
    np.testing.assert_allclose(g.scores, picked(logits, target), rtol=1e-5, atol=1e-5)
    h, gg = g.activations["h"], g.activations["g"]
    np.testing.assert_allclose(h, to_numpy(mlp.layers[0](x)), rtol=1e-5, atol=1e-5)
    assert_grad(
        g.gradients["h"], finite_differences(lambda v: picked(logits_from(mlp, 1)(v), target), h)
    )
    assert_grad(
        g.gradients["g"], finite_differences(lambda v: picked(logits_from(mlp, 2)(v), target), gg)
    )
    assert_grad(
        g.input_gradients, finite_differences(lambda v: picked(logits_from(mlp, 0)(v), target), x)
    )


def test_target_none_is_each_rows_top_class_and_batches_join(
    mlp: keras.Model, rng: np.random.Generator
) -> None:
    x = rng.normal(size=(7, 4)).astype("float32")
    ex = layertap.Extractor(mlp, {"hidden": "h"})
    g = ex.gradients(x, batch_size=3)  # batches of 3, 3 and 1
    logits = to_numpy(logits_from(mlp, 0)(x))
    np.testing.assert_array_equal(g.targets, logits.argmax(1))
    whole = ex.gradients(x, target=logits.argmax(1), batch_size=None)
    np.testing.assert_allclose(
        g.gradients["hidden"], whole.gradients["hidden"], rtol=1e-5, atol=1e-6
    )
    assert g.gradients["hidden"].shape == (7, 5)


def test_a_tap_target_and_a_callable_target(mlp: keras.Model, rng: np.random.Generator) -> None:
    x = rng.normal(size=(2, 4)).astype("float32")
    ex = layertap.Extractor(mlp, ["h", "g"])
    # (tap, index): d g[:, 4] / d h, and nothing of the output.
    g = ex.gradients(x, target=("g", 4))
    h = g.activations["h"]
    layer_g = mlp.get_layer("g")
    want = finite_differences(lambda v: to_numpy(layer_g(v.astype("float32")))[:, 4], h)
    assert_grad(g.gradients["h"], want)
    np.testing.assert_array_equal(g.gradients["g"][:, :4], 0)
    # A callable on the taps and the score: here the squared norm of g plus logit 0.
    fn = lambda t: keras.ops.sum(t["g"] ** 2, axis=1) + t[SCORE][:, 0]  # noqa: E731
    got = ex.gradients(x, target=fn)
    assert got.targets is None
    gg = got.activations["g"]
    want_g = 2 * gg + finite_differences(lambda v: to_numpy(logits_from(mlp, 2)(v))[:, 0], gg)
    assert_grad(got.gradients["g"], want_g)


def test_bad_targets_name_what_is_valid(mlp: keras.Model) -> None:
    ex = layertap.Extractor(mlp, ["h"])
    x = np.zeros((2, 4), "float32")
    with pytest.raises(layertap.BadSpecError, match="class index, one index per row"):
        ex.gradients(x, target=1.5)
    with pytest.raises(layertap.BadSpecError, match="3 indices for 2 rows"):
        ex.gradients(x, target=[0, 1, 2])
    with pytest.raises(layertap.BadSpecError, match=r"\(tap key, index or indices\)"):
        ex.gradients(x, target=("nope", 1))


def test_the_users_model_is_left_as_it_was(mlp: keras.Model) -> None:
    head = mlp.get_layer("out")
    before = (head.activation, head.output, head.input, mlp.get_config(), len(mlp.layers))
    layertap.Extractor(mlp, ["h"]).gradients(np.zeros((1, 4), "float32"))
    assert head.activation is before[0] is keras.activations.softmax
    assert head.output is before[1] and head.input is before[2]
    assert mlp.get_config() == before[3] and len(mlp.layers) == before[4]
    assert not mlp.compiled


@pytest.mark.parametrize("ending", ["softmax_layer", "activation_layer"])
def test_a_softmax_layer_at_the_end_is_skipped(ending: str, rng: np.random.Generator) -> None:
    x = keras.Input((4,))
    z = layers.Dense(3, name="z")(layers.Dense(5, activation="tanh", name="h")(x))
    last = layers.Softmax() if ending == "softmax_layer" else layers.Activation("softmax")
    model = keras.Model(x, last(z))
    data = rng.normal(size=(2, 4)).astype("float32")
    g = layertap.Extractor(model, ["h"]).gradients(data, target=1)
    z_model = keras.Model(x, z)
    np.testing.assert_allclose(g.output, to_numpy(z_model(data)), rtol=1e-5, atol=1e-5)
    dense = model.get_layer("z")
    want = finite_differences(
        lambda v: to_numpy(dense(v.astype("float32")))[:, 1], g.activations["h"]
    )
    assert_grad(g.gradients["h"], want)


# --- nested sub-models, shared layers, custom layers -----------------------------------------


def test_a_tap_inside_a_nested_cnn(rng: np.random.Generator) -> None:
    inner_in = keras.Input((6, 6, 2))
    conv = layers.Conv2D(3, 3, activation="tanh", name="conv")(inner_in)
    inner = keras.Model(inner_in, layers.Conv2D(4, 3, activation="sigmoid", name="conv2")(conv),
                        name="backbone")  # fmt: skip
    model = keras.Sequential(
        [keras.Input((6, 6, 2)), inner, layers.GlobalAveragePooling2D(),
         layers.Dense(3, activation="softmax", name="head")]
    )  # fmt: skip
    x = rng.normal(size=(2, 6, 6, 2)).astype("float32")
    g = layertap.Extractor(model, {"c": "backbone/conv"}).gradients(x, target=[0, 2])
    head, pool, conv2 = model.get_layer("head"), model.layers[1], inner.get_layer("conv2")

    def rest(c: np.ndarray) -> np.ndarray:
        logits = keras.ops.matmul(pool(conv2(c.astype("float32"))), head.kernel) + head.bias
        return picked(logits, np.array([0, 2]))

    assert g.activations["c"].shape == (2, 4, 4, 3)
    assert_grad(g.gradients["c"], finite_differences(rest, g.activations["c"]))


def test_each_call_of_a_shared_layer(rng: np.random.Generator) -> None:
    x = keras.Input((3,))
    shared = layers.Dense(3, activation="tanh", name="shared")
    first = shared(x)
    second = shared(layers.Dense(3, activation="sigmoid", name="mid")(first))
    model = keras.Model(x, layers.Dense(2, name="out")(second))
    data = rng.normal(size=(2, 3)).astype("float32")
    g = layertap.Extractor(model, ["shared@0", "shared@1"]).gradients(data, target=0)
    mid, out = model.get_layer("mid"), model.get_layer("out")
    after_second = lambda v: to_numpy(out(v.astype("float32")))[:, 0]  # noqa: E731
    after_first = lambda v: after_second(to_numpy(shared(mid(v.astype("float32")))))  # noqa: E731
    assert_grad(
        g.gradients["shared@1"], finite_differences(after_second, g.activations["shared@1"])
    )
    assert_grad(g.gradients["shared@0"], finite_differences(after_first, g.activations["shared@0"]))
    assert not np.allclose(g.gradients["shared@0"], g.gradients["shared@1"])


class Block(layers.Layer):
    """A custom layer: a sublayer's output goes on through code with no graph."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proj = layers.Dense(4, name="proj")

    def call(self, x: Any) -> Any:
        p = self.proj(x)
        return keras.ops.tanh(p * 2.0 + 1.0) * layertap.tap(self, "gate", keras.ops.sigmoid(p))


def test_taps_captured_inside_a_custom_layer(rng: np.random.Generator) -> None:
    x = keras.Input((3,))
    block = Block(name="block")
    model = keras.Model(x, layers.Dense(2, name="out")(block(x)))
    data = rng.normal(size=(2, 3)).astype("float32")
    g = layertap.Extractor(model, ["block/proj", "block/gate"]).gradients(data, target=1)
    out = model.get_layer("out")
    score = lambda y: to_numpy(out(y.astype("float32")))[:, 1]  # noqa: E731
    p = g.activations["block/proj"]
    gate = g.activations["block/gate"]
    # At proj: both of the block's uses of p (the tanh branch and the gate's sigmoid).
    via_p = lambda v: score(np.tanh(v * 2 + 1) * (1 / (1 + np.exp(-v))))  # noqa: E731
    assert_grad(g.gradients["block/proj"], finite_differences(via_p, p))
    # At the gate: the gate's value only.
    via_gate = lambda v: score(np.tanh(p * 2 + 1) * v)  # noqa: E731
    assert_grad(g.gradients["block/gate"], finite_differences(via_gate, gate))


def test_an_integer_input_has_no_gradient_but_its_embedding_does(
    rng: np.random.Generator,
) -> None:
    ids = keras.Input((5,), dtype="int32")
    emb = layers.Embedding(11, 4, name="emb")(ids)
    pooled = layers.GlobalAveragePooling1D()(layers.Dense(4, activation="tanh", name="d")(emb))
    model = keras.Model(ids, layers.Dense(2, name="out")(pooled))
    data = rng.integers(0, 11, (2, 5)).astype("int32")
    g = layertap.Extractor(model, ["emb"]).gradients(data, target=1)
    assert g.input_gradients is None
    d, out = model.get_layer("d"), model.get_layer("out")
    rest = lambda e: to_numpy(out(keras.ops.mean(d(e.astype("float32")), axis=1)))[:, 1]  # noqa: E731
    assert_grad(g.gradients["emb"], finite_differences(rest, g.activations["emb"]))


def test_the_logits_of_a_softmax_dense_inside_a_nested_head(rng: np.random.Generator) -> None:
    head = keras.Sequential(
        [keras.Input((5,)), layers.Dense(4, activation="tanh", name="h2"),
         layers.Dense(3, activation="softmax", name="cls")], name="headnet"
    )  # fmt: skip
    model = keras.Sequential(
        [keras.Input((4,)), layers.Dense(5, activation="tanh", name="h"), head]
    )
    x = rng.normal(size=(2, 4)).astype("float32")
    g = layertap.gradients(model, x, ["h"], target=1)
    cls, h2 = head.get_layer("cls"), head.get_layer("h2")
    logits = lambda v: keras.ops.matmul(h2(v.astype("float32")), cls.kernel) + cls.bias  # noqa: E731
    np.testing.assert_allclose(g.output, to_numpy(logits(g.activations["h"])), rtol=1e-5, atol=1e-5)
    assert cls.activation is keras.activations.softmax  # the user's layer is unchanged
    want = finite_differences(lambda v: to_numpy(logits(v))[:, 1], g.activations["h"])
    assert_grad(g.gradients["h"], want)


def test_a_list_of_nested_paths_keys_gradients_by_path(nested_model: keras.Model) -> None:
    """A list spec keys by canonical path ("mid/inner/d1"): the probes' layer names must
    not carry the "/" (Keras refuses it in layer names)."""
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    g = layertap.gradients(nested_model, x, ["mid/inner/d1", "head"], target=1)
    assert set(g.gradients) == {"mid/inner/d1", "head"}
    assert g.gradients["head"][:, 1].tolist() == [1.0, 1.0, 1.0]
