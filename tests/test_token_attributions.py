"""explain() at a (batch, tokens, dim) layer: one signed attribution per token.

Oracles, written apart from the code under test:

* a closed form: ``Embedding(mask_zero=True) -> masked mean -> Dense``, where the
  gradient at token ``t`` is ``W[:, c] / L_real``, so gradient x activation is
  ``e_t . W[:, c] / L_real`` and the saliency ``||W[:, c]|| / L_real`` (0 on padding);
  the model is linear in the embedding, so layer integrated gradients equals gradient x
  activation and is complete;
* central finite differences on a small keras-hub BERT task (random weights, built
  offline): the embedding *table*'s row of a token is perturbed and the task is called
  by Keras itself; with every id once per row, that is the embedding output perturbed
  at that token (a row scaled by ``1 +- eps`` gives gradient x activation, one entry
  moved by ``+- eps`` one gradient entry);
* completeness of layer integrated gradients on BERT (64 steps, within 1%);
* the preset's own tokenizer and preprocessor for ``.info["tokens"]`` and the padding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import layers

import layertap
from layertap.explainer.methods import TOKEN_METHODS, explain
from layertap.graph.gradients import SCORE
from tests.conftest import to_numpy

L, V, D, C = 6, 12, 5, 3
IDS = np.array([[3, 1, 4, 0, 0, 0], [5, 9, 2, 6, 5, 3], [7, 0, 0, 0, 0, 0]], "int32")


@pytest.fixture
def averaged() -> keras.Model:
    """Embedding (0 is padding) -> masked mean over tokens -> Dense, a bias off zero."""
    ids = keras.Input((L,), dtype="int32", name="ids")
    h = layers.Embedding(V, D, mask_zero=True, name="emb")(ids)
    h = layers.GlobalAveragePooling1D(name="mean")(h)
    model = keras.Model(ids, layers.Dense(C, name="head")(h), name="averaged")
    head = model.get_layer("head")
    head.bias.assign(np.random.default_rng(1).normal(size=C).astype("float32"))
    return model


def closed_form(model: keras.Model, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(e_t . W[:, c] / L_real, ||W[:, c]|| / L_real)`` per token, 0 on padding."""
    table = to_numpy(model.get_layer("emb").embeddings)
    kernel = to_numpy(model.get_layer("head").kernel)
    real = IDS != 0
    count = real.sum(axis=1, keepdims=True)
    w = kernel[:, targets].T  # (n, D)
    gxa = np.einsum("ntd,nd->nt", table[IDS], w) / count
    saliency = np.linalg.norm(w, axis=1)[:, None] / count
    return np.where(real, gxa, 0.0), np.where(real, saliency, 0.0)


def test_gradxact_and_saliency_at_an_embedding_are_the_closed_form(
    averaged: keras.Model,
) -> None:
    targets = np.array([2, 0, 1])
    gxa, saliency = closed_form(averaged, targets)
    got = explain(averaged, IDS, "emb", method="gradxact", target=targets.tolist())
    assert got.shape == (3, L) and got.dtype == np.float32
    np.testing.assert_allclose(got, gxa, rtol=1e-5, atol=1e-6)
    assert got.min() < 0 < got.max()  # signed, not normalised
    assert got.info["mask"] == (IDS != 0).tolist() and got.info["tokens"] is None
    assert got.info["method"] == "gradxact" and got.info["layer"] == "emb"
    assert got.info["targets"] == targets.tolist()
    logits = to_numpy(averaged(IDS))
    np.testing.assert_allclose(got.info["scores"], logits[np.arange(3), targets], rtol=1e-5)
    sal = explain(averaged, IDS, "emb", method="saliency", target=targets)
    np.testing.assert_allclose(sal, saliency, rtol=1e-5, atol=1e-6)


def test_targets_as_for_the_image_methods(averaged: keras.Model) -> None:
    top = to_numpy(averaged(IDS)).argmax(axis=1)
    by_default = explain(averaged, IDS, "emb", method="gradxact")
    assert by_default.info["targets"] == top.tolist()
    np.testing.assert_allclose(by_default, closed_form(averaged, top)[0], rtol=1e-5, atol=1e-6)
    one = explain(averaged, IDS, "emb", method="gradxact", target=1)
    called = explain(averaged, IDS, "emb", method="gradxact", target=lambda t: t[SCORE][:, 1])
    np.testing.assert_allclose(one, closed_form(averaged, np.ones(3, int))[0], atol=1e-6)
    np.testing.assert_allclose(called, one, atol=1e-7)
    assert called.info["targets"] is None


def test_layer_integrated_gradients_on_a_linear_model_is_gradxact_and_complete(
    averaged: keras.Model,
) -> None:
    gxa = explain(averaged, IDS, "emb", method="gradxact", target=0)
    ig = explain(averaged, IDS, "emb", method="integrated_gradients", target=0, steps=64)
    np.testing.assert_allclose(ig, gxa, rtol=1e-5, atol=1e-6)
    check = ig.info["completeness"]
    bias = to_numpy(averaged.get_layer("head").bias)[0]
    # The layer zeroed: the mean is 0, the score is the bias.
    np.testing.assert_allclose(check["score_minus_baseline"], np.asarray(ig.info["scores"]) - bias,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(check["attributions"], ig.sum(axis=1), rtol=1e-5, atol=1e-6)
    assert check["max_relative_gap"] < 1e-3 and check["steps"] == 64


def test_a_keras_mask_on_a_later_layer_zeroes_padding() -> None:
    ids = keras.Input((L,), dtype="int32")
    h = layers.Embedding(V, D, mask_zero=True, name="emb")(ids)
    h = layers.Dense(4, activation="tanh", name="proj")(h)  # passes the mask on
    h = layers.GlobalAveragePooling1D()(h)
    model = keras.Model(ids, layers.Dense(C)(h))
    for method in TOKEN_METHODS:
        got = explain(model, IDS, "proj", method=method, steps=4)
        assert np.all(got[IDS == 0] == 0) and np.all(got[IDS != 0] != 0), method


def test_scaled_taps_run_the_model_on_from_the_scaled_value(averaged: keras.Model) -> None:
    ex = layertap.Extractor(averaged, {"e": "emb"})
    full = ex.gradients(IDS, 0)
    half = ex.gradients(IDS, 0, scale={"e": 0.5}, batch_size=2)
    np.testing.assert_allclose(half.activations["e"], 0.5 * full.activations["e"], atol=1e-7)
    bias = to_numpy(averaged.get_layer("head").bias)[0]
    np.testing.assert_allclose(half.scores - bias, 0.5 * (full.scores - bias), atol=1e-6)
    np.testing.assert_allclose(half.gradients["e"], full.gradients["e"], atol=1e-7)
    assert half.masks["e"].tolist() == (IDS != 0).tolist()
    with pytest.raises(layertap.BadSpecError, match="'nope'"):
        ex.gradients(IDS, 0, scale={"nope": 0.5})


def test_bad_uses_name_the_layer_and_its_shape(averaged: keras.Model) -> None:
    for method in ("gradcam", "gradcam++", "layercam"):
        with pytest.raises(layertap.BadSpecError, match=r"'emb' gives \(None, 6, 5\)"):
            explain(averaged, IDS, "emb", method=method)
    for method in TOKEN_METHODS:
        with pytest.raises(layertap.BadSpecError, match=r"'mean' gives \(None, 5\)") as info:
            explain(averaged, IDS, "mean", method=method)
        assert isinstance(info.value, layertap.LayertapError)
        assert "(batch, tokens, dim)" in str(info.value)
    with pytest.raises(layertap.BadSpecError, match="explains at the input"):
        explain(averaged, IDS, "emb", method="smoothgrad")


@keras.saving.register_keras_serializable(package="layertap_tests")
class Encoder(layers.Layer):
    """A custom layer (no graph inside): its token embedding is captured, not replayed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tok = layers.Embedding(V, D, name="tok")
        self.proj = layers.Dense(D, activation="tanh", name="proj")

    def call(self, ids: Any) -> Any:
        return self.proj(self.tok(ids))


def test_layer_integrated_gradients_inside_a_custom_layer() -> None:
    """The scaled tap through a capture: score(tap zeroed) is the head on proj(0)."""
    ids = keras.Input((L,), dtype="int32")
    h = layers.GlobalAveragePooling1D()(Encoder(name="enc")(ids))
    model = keras.Model(ids, layers.Dense(C, name="head")(h))
    encoder = model.get_layer("enc")
    encoder.proj.bias.assign(np.random.default_rng(2).normal(size=D).astype("float32"))
    ig = explain(model, IDS, "enc/tok", method="integrated_gradients", target=1, steps=64)
    zeroed = model.get_layer("head")(encoder.proj(np.zeros((1, 1, D), "float32"))[:, 0])
    expected = to_numpy(model(IDS))[:, 1] - to_numpy(zeroed)[0, 1]
    check = ig.info["completeness"]
    np.testing.assert_allclose(check["score_minus_baseline"], expected, rtol=1e-4, atol=1e-6)
    assert check["max_relative_gap"] < 0.01 and ig.info["mask"] is None


# --- a keras-hub BERT task preset ------------------------------------------------------------

EMBEDDING = "bert_backbone/token_embedding"
#: Every word once per line: a table row perturbed is the embedding output at one token.
TEXTS = ["a dog sat on my log", "the cat", "big red fish swam in blue water"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, dict[str, np.ndarray]]:
    pytest.importorskip("keras_hub")
    from tests.hub_presets import bert_classifier_preset

    keras.utils.set_random_seed(0)
    directory: Path = tmp_path_factory.mktemp("bert_task")
    _, preprocessor = bert_classifier_preset(directory)
    preset = layertap.load_preset(directory)
    x = {k: to_numpy(v) for k, v in preprocessor(TEXTS).items()}
    return preset, preprocessor, x


class TableDifferences:
    """Central differences of the task's score (Keras calling the task) with one row of
    the token embedding table moved: with every id once per line, the embedding output
    moved at the tokens holding that id."""

    def __init__(self, preset: Any, x: dict[str, np.ndarray], target: int) -> None:
        self.model, self.x, self.target = preset.model, x, target
        self.table = preset.model.backbone.get_layer("token_embedding").embeddings
        self.start = to_numpy(self.table).copy()

    def __call__(self, token: int, change: np.ndarray, eps: float) -> np.ndarray:
        """d(score of each row) along ``change`` (of ``token``'s row), by ``+- change``."""
        out = []
        try:
            for sign in (1, -1):
                moved = self.start.copy()
                moved[token] += sign * change
                self.table.assign(moved)
                out.append(to_numpy(self.model(self.x, training=False))[:, self.target])
        finally:
            self.table.assign(self.start)
        return (out[0] - out[1]) / (2 * eps)

    def gradxact(self, eps: float = 1e-2) -> np.ndarray:
        """``(n, tokens)``: each token's row scaled by ``1 +- eps``."""
        ids, real = self.x["token_ids"], self.x["padding_mask"] != 0
        out = np.zeros(ids.shape)
        for token in np.unique(ids[real]):
            d = self(int(token), eps * self.start[token], eps)
            here = (ids == token) & real
            out[here] = np.broadcast_to(d[:, None], ids.shape)[here]
        return out

    def gradient(self, row: int, eps: float = 1e-2) -> np.ndarray:
        """``(tokens, dim)`` of one row: each entry of each token's row moved by ``+- eps``."""
        ids, real = self.x["token_ids"][row], self.x["padding_mask"][row] != 0
        out = np.zeros((len(ids), self.start.shape[1]))
        for j in np.flatnonzero(real):
            for k in range(self.start.shape[1]):
                step = np.zeros(self.start.shape[1], self.start.dtype)
                step[k] = eps
                out[j, k] = self(int(ids[j]), step, eps)[row]
        return out


def test_bert_gradxact_and_saliency_by_finite_differences(
    bert: tuple[Any, Any, dict[str, np.ndarray]],
) -> None:
    preset, _, x = bert
    for row in x["token_ids"]:
        real = row[row != 0]
        assert len(set(real.tolist())) == len(real)  # every id once per row
    fd_gxa = TableDifferences(preset, x, target=1).gradxact()
    got = explain(preset, TEXTS, EMBEDDING, method="gradxact", target=1)
    np.testing.assert_allclose(got, fd_gxa, atol=1e-3 * np.abs(fd_gxa).max())
    fd_grad = TableDifferences(preset, x, target=2).gradient(row=1)
    sal = explain(preset, TEXTS, EMBEDDING, method="saliency", target=2)
    expected = np.linalg.norm(fd_grad, axis=-1)
    np.testing.assert_allclose(sal[1], expected, atol=1e-3 * expected.max())
    assert np.all(sal[x["padding_mask"] == 0] == 0)


def test_bert_layer_integrated_gradients_is_complete(
    bert: tuple[Any, Any, dict[str, np.ndarray]],
) -> None:
    preset, _, x = bert
    ig = explain(preset, TEXTS, EMBEDDING, method="integrated_gradients", steps=64)
    check = ig.info["completeness"]
    assert check["max_relative_gap"] < 0.01, check
    np.testing.assert_allclose(check["attributions"], ig.sum(axis=1), rtol=1e-5, atol=1e-7)
    # score(x) - score(the embedding zeroed): the first by the task itself.
    targets = ig.info["targets"]
    logits = to_numpy(preset.model(x, training=False))
    np.testing.assert_allclose(ig.info["scores"], logits[np.arange(3), targets], rtol=1e-4,
                               atol=1e-6)  # fmt: skip
    assert np.all(ig[x["padding_mask"] == 0] == 0)


def test_texts_through_a_task_preset_carry_their_tokens(
    bert: tuple[Any, Any, dict[str, np.ndarray]],
) -> None:
    preset, preprocessor, x = bert
    got = explain(preset, TEXTS, EMBEDDING, method="gradxact", batch_size=2)
    assert got.shape == (3, 16) and got.dtype == np.float32
    tokenizer = preprocessor.tokenizer
    expected = [[tokenizer.id_to_token(int(i)) for i in row] for row in x["token_ids"]]
    assert got.info["tokens"] == expected
    assert got.info["tokens"][1][:4] == ["[CLS]", "the", "cat", "[SEP]"]
    assert got.info["mask"] == (x["padding_mask"] != 0).tolist()
    assert np.all(got[x["padding_mask"] == 0] == 0) and np.all(got[x["padding_mask"] != 0] != 0)
    logits = to_numpy(preset.model(x, training=False))
    assert got.info["targets"] == logits.argmax(axis=1).tolist()
    assert got.info["layer"] == EMBEDDING and got.info["method"] == "gradxact"
    by_arrays = explain(preset, x, EMBEDDING, method="gradxact")  # the same, as arrays
    np.testing.assert_allclose(by_arrays, got, atol=1e-6)
    assert by_arrays.info["tokens"] == expected
