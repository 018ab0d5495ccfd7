"""feature_model, the building block: a keras.Model with dict outputs, checked against Keras."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import layers

import layertap
from layertap.graph.extractor import feature_model
from tests.conftest import assert_close, to_numpy


@keras.saving.register_keras_serializable(package="layertap_tests_feature_model")
class Scaled(layers.Layer):
    """2 * proj(x): a custom layer whose sublayer has no graph node."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.proj = layers.Dense(units, name="proj")

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.proj.build(input_shape)

    def call(self, x: Any) -> Any:
        return self.proj(x) * 2.0

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


@pytest.fixture
def flat_model() -> keras.Model:
    x = keras.Input((6,), name="x")
    h = layers.Dense(5, activation="relu", name="d1")(x)
    h = layers.Dense(4, name="d2")(h)
    return keras.Model(x, layers.Dense(2, name="out")(h), name="flat")


def test_flat_taps_match_plain_keras(flat_model: keras.Model, rng: np.random.Generator) -> None:
    data = rng.random((5, 6), dtype="float32")
    fm = feature_model(flat_model, ["d1", "d2", -1])
    assert isinstance(fm, keras.Model)
    assert isinstance(fm.output, dict)
    assert list(fm.output) == ["d1", "d2", "out"]
    got = fm.predict(data, verbose=0)
    assert isinstance(got, dict)
    for name in ("d1", "d2", "out"):
        oracle = keras.Model(flat_model.input, flat_model.get_layer(name).output)
        assert_close(got[name], oracle.predict(data, verbose=0))


def test_nested_taps_match_sublayers_called_by_hand(
    nested_model: keras.Model, rng: np.random.Generator
) -> None:
    data = rng.random((4, 6), dtype="float32")
    mid = nested_model.get_layer("mid")
    d1, d2 = mid.get_layer("inner").layers
    fm = feature_model(nested_model, {"h1": "mid/inner/d1", "s": "mid/split", "y": "head"})
    assert list(fm.output) == ["h1", "s/mid/split:0", "s/mid/split:1", "y"]
    got = fm(data)
    assert isinstance(got, dict)
    h1 = to_numpy(d1(data))
    h2 = to_numpy(d2(h1))
    assert_close(to_numpy(got["h1"]), h1)
    assert_close(to_numpy(got["s/mid/split:0"]), h2[:, :2])
    assert_close(to_numpy(got["s/mid/split:1"]), h2[:, 2:])
    head = nested_model.get_layer("head")
    assert_close(to_numpy(got["y"]), head(mid.get_layer("add")([h2[:, :2], h2[:, 2:]])))


@pytest.mark.parametrize(
    "spec",
    [
        ["mid/inner/d1", "d2", "mid/split", "head"],
        {"early": "mid/inner/d1", "late": -1, "both": "mid/split"},
        "mid/inner/d*",
    ],
)
def test_keys_are_those_of_the_extractor(
    nested_model: keras.Model, spec: Any, rng: np.random.Generator
) -> None:
    data = rng.random((3, 6), dtype="float32")
    fm = feature_model(nested_model, spec)
    ex = layertap.Extractor(nested_model, spec)
    assert list(fm.output) == list(ex.outputs)
    assert {k: tuple(v.shape) for k, v in fm.output.items()} == {
        k: v.shape for k, v in ex.outputs.items()
    }
    assert isinstance(ex.model.output, dict)
    got, want = fm.predict_on_batch(data), ex(data)
    for key in want:
        assert_close(np.asarray(got[key]), want[key])


def test_user_model_weights_and_outputs_unchanged(
    nested_model: keras.Model, rng: np.random.Generator
) -> None:
    data = rng.random((3, 6), dtype="float32")
    weights = [np.array(w) for w in nested_model.get_weights()]
    config = nested_model.get_config()
    before = nested_model.predict(data, verbose=0)
    d1 = nested_model.get_layer("mid").get_layer("inner").layers[0]
    d1_output, outputs = d1.output, list(nested_model.outputs)
    fm = feature_model(nested_model, ["mid/inner/d1", "head"])
    fm.predict(data, verbose=0)
    assert not nested_model.compiled
    assert nested_model.get_config() == config
    assert d1.output is d1_output and list(nested_model.outputs) == outputs
    for old, new in zip(weights, nested_model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(nested_model.predict(data, verbose=0), before)
    # Shared, not copied: the feature model holds the user's variables.
    assert {id(v) for v in fm.weights} <= {id(v) for v in nested_model.weights}


def test_saved_and_reloaded_gives_the_same_values(
    nested_model: keras.Model, tmp_path: Path, rng: np.random.Generator
) -> None:
    data = rng.random((4, 6), dtype="float32")
    fm = feature_model(nested_model, {"early": "mid/inner/d1", "pair": "mid/split:1", "y": -1})
    expected = fm.predict(data, verbose=0)
    fm.save(tmp_path / "features.keras")
    reloaded = keras.saving.load_model(tmp_path / "features.keras")
    assert isinstance(reloaded.output, dict) and sorted(reloaded.output) == sorted(expected)
    got = reloaded.predict(data, verbose=0)
    for key in expected:
        assert_close(got[key], expected[key])


def test_captured_taps_match_and_survive_a_reload(tmp_path: Path, rng: np.random.Generator) -> None:
    x = keras.Input((6,), name="x")
    h = layers.Dense(6, activation="relu", name="stem")(x)
    model = keras.Model(x, layers.Dense(2, name="out")(Scaled(3, name="scaled")(h)))
    data = rng.random((3, 6), dtype="float32")
    fm = feature_model(model, {"p": "scaled/proj", "s": "scaled"})
    stem = to_numpy(model.get_layer("stem")(data))
    proj = to_numpy(model.get_layer("scaled").proj(stem))
    got = fm.predict(data, verbose=0)
    assert_close(got["p"], proj)
    assert_close(got["s"], 2.0 * proj)
    fm.save(tmp_path / "captured.keras")
    reloaded = keras.saving.load_model(tmp_path / "captured.keras")
    again = reloaded.predict(data, verbose=0)
    for key in got:
        assert_close(again[key], got[key])


def test_bad_spec_is_a_layertap_error(flat_model: keras.Model) -> None:
    with pytest.raises(layertap.LayertapError, match="close matches: 'd1'"):
        feature_model(flat_model, ["d11"])


class Small(keras.Model):
    """A subclassed model: no graph, so its taps are captured inside one call."""

    def __init__(self) -> None:
        super().__init__(name="small")
        self.stem = layers.Dense(4, activation="relu", name="stem")
        self.block = Scaled(3, name="block")

    def call(self, x: Any) -> Any:
        return self.block(self.stem(x))


@pytest.mark.parametrize("built", [True, False])
def test_subclassed_model(built: bool, rng: np.random.Generator) -> None:
    net = Small()
    data = rng.random((3, 5), dtype="float32")
    if built:
        net(data)
        fm = feature_model(net, ["stem", "block/proj"])
    else:
        fm = feature_model(net, ["stem", "block/proj"], input_shape=(None, 5))
    assert list(fm.output) == ["stem", "block/proj"]
    got = fm.predict(data, verbose=0)
    stem = to_numpy(net.stem(data))
    assert_close(got["stem"], stem)
    assert_close(got["block/proj"], net.block.proj(stem))
