"""Attention probabilities at every Keras ``MultiHeadAttention``, fused or not.

Without dropout, ``MultiHeadAttention`` calls the fused ``ops.dot_product_attention`` and
its softmax sublayer never runs. layertap lists the place ``<attention>/<softmax name>``
(alias ``<attention>/scores``) anyway, runs the layer unfused only in calls whose scores
are tapped, and leaves every other call fused. The oracle is the layer itself asked for
its scores (``return_attention_scores=True``) on the tapped inputs; the model's output
with the scores tapped equals its own fused output.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
from keras import layers

import layertap
from tests.conftest import assert_close, to_numpy

TOL = 1e-5
HEADS, KEY_DIM = 2, 4


def _scores(mha: Any, query: Any, value: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    out, scores = mha(query, value, return_attention_scores=True, **kwargs)
    return to_numpy(out), to_numpy(scores)


@pytest.fixture
def padded_model() -> tuple[keras.Model, Any]:
    """Self-attention over a padded batch: the padding mask is an attention mask input."""
    x = keras.Input((6, 8), name="x")
    mask = keras.Input((6, 6), dtype="bool", name="mask")
    mha = layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")
    h = mha(x, x, attention_mask=mask)
    return keras.Model([x, mask], layers.Dense(3, name="head")(h)), mha


def _padded_inputs(rng: np.random.Generator) -> list[np.ndarray]:
    x = rng.normal(size=(3, 6, 8)).astype("float32")
    lengths = np.array([6, 4, 2])
    valid = np.arange(6)[None, :] < lengths[:, None]
    # Padded keys are masked for every query, as keras-hub's padding masks do (a query
    # row with every key masked is where Keras's fused op and its softmax path differ).
    return [x, np.repeat(valid[:, None, :], 6, axis=1)]


def test_scores_of_fused_attention_equal_the_layer_asked_for_them(
    padded_model: tuple[keras.Model, Any], rng: np.random.Generator
) -> None:
    model, mha = padded_model
    inputs = _padded_inputs(rng)
    records = {r.path: r for r in layertap.list_layers(model)}
    softmax = f"mha/{mha._softmax.name}"
    assert records[softmax].alias == "mha/scores"
    assert records[softmax].output_shape == (None, HEADS, 6, 6)

    ex = layertap.Extractor(model, {"by_name": softmax, "scores": "mha/scores", "out": "head"})
    expected_out, expected = _scores(mha, inputs[0], inputs[0], attention_mask=inputs[1])
    for got in (ex(inputs), ex.predict(inputs, batch_size=2)):
        assert_close(got["scores"], expected, TOL)
        assert_close(got["by_name"], expected, TOL)
        # The output comes from the same (unfused) call and equals the fused model's.
        assert_close(got["out"], model.predict(inputs, verbose=0), TOL)
    # Padded keys get no attention; every row of real queries sums to 1.
    scores = ex(inputs)["scores"]
    assert np.all(scores[2, :, :2, 2:] == 0)
    np.testing.assert_allclose(scores[1, :, :4].sum(-1), 1.0, atol=1e-6)
    assert "_compute_attention" not in vars(mha) and "call" not in vars(mha)  # left as found


def test_only_calls_whose_scores_are_tapped_run_unfused(
    padded_model: tuple[keras.Model, Any], rng: np.random.Generator, monkeypatch: Any
) -> None:
    """Counted at the fused op: a tap beside the attention keeps it; a scores tap does not."""
    model, _ = padded_model
    inputs = _padded_inputs(rng)
    ops_module = pytest.importorskip("keras.src.ops")
    fused = ops_module.dot_product_attention
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(ops_module, "dot_product_attention", counted)
    query_only = layertap.Extractor(model, ["mha/query", "head"])
    with_scores = layertap.Extractor(model, ["mha/scores", "head"])
    calls.clear()
    query_only.model(inputs)
    assert calls, "without a scores tap the attention stays fused"
    calls.clear()
    with_scores.model(inputs)
    assert not calls
    assert_close(query_only(inputs)["head"], with_scores(inputs)["head"], TOL)


def test_causal_and_cross_attention() -> None:
    """A causal mask from ``use_causal_mask``, and cross-attention (query 3, key 5)."""
    rng = np.random.default_rng(1)
    q_in, kv_in = keras.Input((3, 8), name="q"), keras.Input((5, 8), name="kv")
    causal = layers.MultiHeadAttention(HEADS, KEY_DIM, name="causal")
    cross = layers.MultiHeadAttention(HEADS, KEY_DIM, name="cross")
    h = causal(q_in, q_in, use_causal_mask=True)
    model = keras.Model([q_in, kv_in], cross(h, kv_in))
    q, kv = rng.normal(size=(2, 3, 8)).astype("float32"), rng.normal(size=(2, 5, 8)).astype("f4")

    records = {r.path: r for r in layertap.list_layers(model)}
    assert records[f"cross/{cross._softmax.name}"].output_shape == (None, HEADS, 3, 5)
    taps = {"causal/scores": "causal/scores", "cross/scores": "cross/scores", "causal": "causal"}
    got = layertap.Extractor(model, taps)([q, kv])
    expected_h, expected = _scores(causal, q, q, use_causal_mask=True)
    assert_close(got["causal/scores"], expected, TOL)
    assert np.all(np.triu(got["causal/scores"][0, 0], 1) == 0)
    assert_close(got["causal"], expected_h, TOL)
    assert_close(got["cross/scores"], _scores(cross, expected_h, kv)[1], TOL)
    assert got["cross/scores"].shape == (2, HEADS, 3, 5)


class Block(layers.Layer):
    """A pre-norm transformer block written as a custom layer, its MHA called twice."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.norm = layers.LayerNormalization(name="norm")
        self.attn = layers.MultiHeadAttention(HEADS, KEY_DIM, name="self_attn")

    def call(self, x: Any) -> Any:
        x = x + self.attn(self.norm(x), self.norm(x))
        return x + self.attn(x, x)


def test_attention_inside_a_custom_layer_called_twice() -> None:
    rng = np.random.default_rng(2)
    x_in = keras.Input((4, 8), name="x")
    block = Block(name="block")
    model = keras.Model(x_in, block(x_in))
    x = rng.normal(size=(2, 4, 8)).astype("float32")
    softmax = block.attn._softmax.name
    paths = {r.path for r in layertap.list_layers(model)}
    assert {f"block/self_attn@0/{softmax}", f"block/self_attn@1/{softmax}"} <= paths

    got = layertap.Extractor(
        model, {"first": "block/self_attn@0/scores", "second": "block/attn@1/scores"}
    )(x)
    normed = block.norm(x)
    first_out, first = _scores(block.attn, normed, normed)
    assert_close(got["first"], first, TOL)
    _, second = _scores(block.attn, x + first_out, x + first_out)
    assert_close(got["second"], second, TOL)


def test_scores_glob_and_gradients(padded_model: tuple[keras.Model, Any]) -> None:
    """``**/scores`` finds every attention layer; gradients flow at the scores."""
    model, mha = padded_model
    inputs = _padded_inputs(np.random.default_rng(3))
    ex = layertap.Extractor(model, {"s": "**/scores"})
    assert [p.path for p in ex.places.values()] == [f"mha/{mha._softmax.name}"]
    g = ex.gradients(inputs, target=0)
    assert g.gradients["s"].shape == (3, HEADS, 6, 6)
    # d(score)/d(scores) by finite differences through the rest of the layer by hand.
    x, mask = (keras.ops.convert_to_tensor(a) for a in inputs)
    value = mha._value_dense(x)
    head = model.get_layer("head")

    i, h, r, c = 1, 0, 0, 3

    def score(probs: np.ndarray) -> float:
        context = keras.ops.einsum(mha._combine_equation, probs, value)
        out = head(mha._output_dense(context))
        return float(to_numpy(out)[i, 0, 0])  # target 0: the first of each row's outputs

    probs = g.activations["s"].astype("float64")
    step = 1e-2
    bumped = [probs.copy(), probs.copy()]
    bumped[0][i, h, r, c] += step
    bumped[1][i, h, r, c] -= step
    numeric = (score(bumped[0].astype("f4")) - score(bumped[1].astype("f4"))) / (2 * step)
    np.testing.assert_allclose(g.gradients["s"][i, h, r, c], numeric, rtol=1e-2, atol=1e-4)
