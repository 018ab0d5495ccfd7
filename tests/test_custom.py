"""Taps inside custom layers and subclassed models, and layertap.tap(), against plain Keras."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import layers

import layertap
from tests.conftest import assert_close, to_numpy


@keras.saving.register_keras_serializable(package="layertap_tests")
class GatedBlock(layers.Layer):
    """proj(x) * sigmoid(gate(x)); exposes the gate's pre-activation with layertap.tap."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.proj = layers.Dense(units, name="proj")
        self.gate = layers.Dense(units, name="gate")

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.proj.build(input_shape)
        self.gate.build(input_shape)

    def call(self, x: Any) -> Any:
        logits = layertap.tap(self, "gate_logits", self.gate(x))
        return self.proj(x) * keras.ops.sigmoid(logits)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="layertap_tests")
class Twice(layers.Layer):
    """Applies one inner GatedBlock twice: a sublayer called several times per call."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.block = GatedBlock(units, name="block")

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.block.build(input_shape)

    def call(self, x: Any) -> Any:
        return self.block(self.block(x))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


def gated(block: GatedBlock, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oracle: (gate logits, proj, output) of one block call, by plain Keras calls."""
    logits = to_numpy(block.gate(x))
    proj = to_numpy(block.proj(x))
    return logits, proj, proj / (1.0 + np.exp(-logits))


@pytest.fixture
def graph_with_custom_layers() -> keras.Model:
    """A Functional backbone holding a custom layer, nested in a Sequential head."""
    x = keras.Input((6,), name="image")
    h = layers.Dense(6, activation="relu", name="stem")(x)
    h = Twice(6, name="stage")(h)
    backbone = keras.Model(x, h, name="backbone")
    return keras.Sequential(
        [
            keras.Input((6,)),
            backbone,
            GatedBlock(3, name="head_block"),
            layers.Dense(2, name="out"),
        ],
        name="clf",
    )


def test_listing_shows_sublayers_and_taps(graph_with_custom_layers: keras.Model) -> None:
    rows = [
        (r.path, r.class_name, r.output_shape)
        for r in layertap.list_layers(graph_with_custom_layers)
    ]
    assert rows == [
        ("backbone", "Functional", (None, 6)),
        ("backbone/stem", "Dense", (None, 6)),
        ("backbone/stage", "Twice", (None, 6)),
        ("backbone/stage/block@0", "GatedBlock", (None, 6)),
        ("backbone/stage/block@0/gate", "Dense", (None, 6)),
        ("backbone/stage/block@0/gate_logits", "tap", (None, 6)),
        ("backbone/stage/block@0/proj", "Dense", (None, 6)),
        ("backbone/stage/block@1", "GatedBlock", (None, 6)),
        ("backbone/stage/block@1/gate", "Dense", (None, 6)),
        ("backbone/stage/block@1/gate_logits", "tap", (None, 6)),
        ("backbone/stage/block@1/proj", "Dense", (None, 6)),
        ("head_block", "GatedBlock", (None, 3)),
        ("head_block/gate", "Dense", (None, 3)),
        ("head_block/gate_logits", "tap", (None, 3)),
        ("head_block/proj", "Dense", (None, 3)),
        ("out", "Dense", (None, 2)),
    ]


def test_taps_inside_custom_layers_match_plain_keras(
    graph_with_custom_layers: keras.Model, rng: np.random.Generator
) -> None:
    model = graph_with_custom_layers
    backbone = model.get_layer("backbone")
    stage = backbone.get_layer("stage")
    head = model.get_layer("head_block")
    data = rng.random((4, 6), dtype="float32")
    ex = layertap.Extractor(
        model,
        {
            "stem": "backbone/stem",
            "g0": "backbone/stage/block@0/gate_logits",
            "p1": "backbone/stage/block@1/proj",
            "b1": "backbone/stage/block@1",
            "head_proj": "head_block/proj",
            "head_gate": "head_block/gate_logits",
            "out": -1,
        },
    )
    stem = to_numpy(backbone.get_layer("stem")(data))
    g0, _, y0 = gated(stage.block, stem)
    _, p1, y1 = gated(stage.block, y0)
    head_gate, head_proj, _ = gated(head, y1)
    for run in (ex(data), ex.predict(data, batch_size=3)):
        assert_close(run["stem"], stem)
        assert_close(run["g0"], g0)
        assert_close(run["p1"], p1)
        assert_close(run["b1"], y1)
        assert_close(run["head_proj"], head_proj)
        assert_close(run["head_gate"], head_gate)
        assert_close(run["out"], model.predict(data, verbose=0))


def test_a_sublayer_called_twice_needs_at_k(graph_with_custom_layers: keras.Model) -> None:
    with pytest.raises(
        layertap.AmbiguousLayerError,
        match=re.escape(
            "layer spec 'backbone/stage/block/proj' is ambiguous: 'block' is called 2 times; "
            "pick one call with @k: 'backbone/stage/block@0/proj', 'backbone/stage/block@1/proj'"
        ),
    ):
        layertap.Extractor(graph_with_custom_layers, ["backbone/stage/block/proj"])


@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="jit_compile means torch.compile on torch"
)
def test_jit_compile(graph_with_custom_layers: keras.Model, rng: np.random.Generator) -> None:
    data = rng.random((4, 6), dtype="float32")
    spec = ["backbone/stage/block@1/gate_logits", "head_block/proj"]
    plain = layertap.Extractor(graph_with_custom_layers, spec).predict(data)
    jitted = layertap.Extractor(graph_with_custom_layers, spec, jit_compile=True)
    assert jitted.model.jit_compile
    got = jitted.predict(data)
    for key in plain:
        assert_close(got[key], plain[key])


def test_user_layers_are_left_unwrapped(
    graph_with_custom_layers: keras.Model, rng: np.random.Generator
) -> None:
    data = rng.random((2, 6), dtype="float32")
    before = graph_with_custom_layers.predict(data, verbose=0)
    ex = layertap.Extractor(graph_with_custom_layers, ["head_block/proj", "backbone/stage/block@0"])
    ex(data)
    ex.predict(data)
    for layer in graph_with_custom_layers._flatten_layers():
        assert "call" not in vars(layer)
    np.testing.assert_array_equal(graph_with_custom_layers.predict(data, verbose=0), before)


def test_tap_is_the_identity_outside_an_extraction() -> None:
    block = GatedBlock(2)
    value = keras.ops.ones((1, 2))
    assert layertap.tap(block, "anything", value) is value


def test_custom_layers_saved_and_reloaded(
    graph_with_custom_layers: keras.Model, tmp_path: Path, rng: np.random.Generator
) -> None:
    graph_with_custom_layers.save(tmp_path / "custom.keras")
    loaded = layertap.load_model(tmp_path / "custom.keras")
    data = rng.random((3, 6), dtype="float32")
    spec = {"g": "backbone/stage/block@1/gate_logits", "p": "head_block/proj"}
    expected = layertap.Extractor(graph_with_custom_layers, spec)(data)
    got = layertap.Extractor(loaded, spec)(data)
    for key in expected:
        assert_close(got[key], expected[key])


def test_ex_model_with_captures_saves_and_reloads(
    graph_with_custom_layers: keras.Model, tmp_path: Path, rng: np.random.Generator
) -> None:
    data = rng.random((3, 6), dtype="float32")
    ex = layertap.Extractor(graph_with_custom_layers, {"p": "head_block/proj", "out": "out"})
    ex.model.save(tmp_path / "taps.keras")
    reloaded = keras.saving.load_model(tmp_path / "taps.keras")
    got = reloaded.predict(data, verbose=0)
    expected = ex(data)
    for key in expected:
        assert_close(got[key], expected[key])


def test_builtin_layer_internals(rng: np.random.Generator) -> None:
    x = keras.Input((5, 8))
    mha = layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")
    model = keras.Model(x, mha(x, x))
    data = rng.random((2, 5, 8), dtype="float32")
    run = layertap.Extractor(model, {"q": "mha/query", "v": "mha/value"})(data)
    assert_close(run["q"], mha._query_dense(data))
    assert_close(run["v"], mha._value_dense(data))


class Net(keras.Model):
    """A subclassed model: a stem, one Twice stage called on two branches, a head."""

    def __init__(self) -> None:
        super().__init__(name="net")
        self.stem = layers.Dense(4, activation="relu", name="stem")
        self.stage = Twice(4, name="stage")
        self.head = layers.Dense(2, name="head")

    def call(self, x: Any) -> Any:
        h = self.stem(x)
        return self.head(self.stage(h) + self.stage(-h))


def test_subclassed_model(rng: np.random.Generator) -> None:
    net = Net()
    data = rng.random((3, 5), dtype="float32")
    net(data)
    paths = [r.path for r in layertap.list_layers(net)]
    assert paths[:3] == ["stem", "stage@0", "stage@0/block@0"]
    assert "stage@1/block@1/gate_logits" in paths and paths[-1] == "head"
    assert [r.index for r in layertap.list_layers(net, max_depth=0)] == [0, 1, 1, 2]
    ex = layertap.Extractor(
        net,
        {
            "stem": 0,
            "neg": "stage@1/block@0/proj",
            "gate": "stage@0/block@1/gate_logits",
            "head": "head",
        },
    )
    stem = to_numpy(net.stem(data))
    _, neg_proj, _ = gated(net.stage.block, -stem)
    _, _, y = gated(net.stage.block, stem)
    gate, _, _ = gated(net.stage.block, y)
    for run in (ex(data), ex.predict(data, batch_size=2)):
        assert_close(run["stem"], stem)
        assert_close(run["neg"], neg_proj)
        assert_close(run["gate"], gate)
        assert_close(run["head"], net(data))


def test_subclassed_model_needs_a_shape(rng: np.random.Generator) -> None:
    with pytest.raises(
        layertap.UnsupportedModelError,
        match=re.escape(
            "model 'net' (Net) defines its own call() and has not been built, so its layers "
            "are unknown: call it once on a batch, or pass input_shape=(None, ...)"
        ),
    ):
        layertap.list_layers(Net())
    net = Net()
    ex = layertap.Extractor(net, ["stage@0/block@0/proj"], input_shape=(None, 5))
    data = rng.random((2, 5), dtype="float32")
    assert_close(ex(data)["stage@0/block@0/proj"], net.stage.block.proj(net.stem(data)))


@keras.saving.register_keras_serializable(package="layertap_tests")
class Windowed(layers.Layer):
    """Needs a sequence length that is a multiple of 7, known at trace time (as windows do)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proj = layers.Dense(4, name="proj")

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.proj.build(input_shape)

    def call(self, x: Any) -> Any:
        n = x.shape[1]
        if not isinstance(n, int) or n % 7:
            raise ValueError(f"sequence length must be a multiple of 7, got {n}")
        return keras.ops.relu(self.proj(x))

    def compute_output_shape(self, shape: tuple[int, ...]) -> tuple[int | None, ...]:
        return (*shape[:-1], 4)


def test_a_layer_that_does_not_trace_sinks_nothing_else(rng: np.random.Generator) -> None:
    x = keras.Input((None, 3), name="seq")
    stem = layers.Dense(3, name="stem")(x)
    win = Windowed(name="win")(stem)
    model = keras.Model(x, layers.Dense(2, name="head")(GatedBlock(4, name="gated")(win)))
    places = {p.path: p for p in layertap.list_layers(model)}
    assert "multiple of 7" in str(places["win"].trace_error)
    assert "win/proj" not in places
    assert places["gated/gate"].trace_error is None  # the layers after it are listed
    text = layertap.summary(model)
    assert "Windowed (!)" in text
    assert re.search(r"^    win: symbolic trace: ValueError: sequence length must", text, re.M)

    data = rng.random((2, 14, 3), dtype="float32")
    run = layertap.Extractor(model, ["win", "gated/gate", "head"])(data)
    stem_out = to_numpy(model.get_layer("stem")(data))
    win_out = to_numpy(model.get_layer("win")(stem_out))
    assert_close(run["win"], win_out)
    assert_close(run["gated/gate"], model.get_layer("gated").gate(win_out))
    assert_close(run["head"], model.predict(data, verbose=0))

    with pytest.raises(layertap.UntracedLayerError) as caught:
        layertap.Extractor(model, ["win/proj"])
    message = str(caught.value)
    assert message.startswith(
        "layer spec 'win/proj' reaches inside 'win' (Windowed), whose call() could not be "
        "traced; symbolic trace: ValueError: sequence length must be a multiple of 7"
    )
    assert "input_shape= with concrete sizes" in message
    with pytest.raises(layertap.LayerNotFoundError, match="the insides of 'win' could not"):
        layertap.Extractor(model, ["win/*"])

    # The remedy: concrete sizes to trace with.
    ex = layertap.Extractor(model, {"p": "win/proj"}, input_shape=(None, 14, 3))
    assert ex.outputs["p"].shape == (None, 14, 4)
    assert_close(ex(data)["p"], model.get_layer("win").proj(stem_out))
    with pytest.raises(layertap.BadInputError, match=re.escape("the model takes (None, None, 3)")):
        layertap.list_layers(model, input_shape=(None, 14, 5))


@pytest.mark.parametrize("functional", [False, True])
def test_names_with_a_leading_underscore(rng: np.random.Generator, functional: bool) -> None:
    """TensorFlow refuses '_x' as a root name scope; the feature model must not use one."""

    class _Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.body = layers.Dense(3, name="_body")

        def call(self, x: Any) -> Any:
            return self.body(x)

    data = rng.random((2, 5), dtype="float32")
    if functional:
        x = keras.Input((5,), name="_in")
        model = keras.Model(x, layers.Dense(2, name="_out")(Twice(5, name="_twice")(x)), name="_m")
        specs = ["_twice/block@1/proj", "_out"]
    else:
        model = _Net()
        assert model.name == "__net"
        specs = ["_body"]
    ex = layertap.Extractor(model, specs, input_shape=None if functional else (None, 5))
    run = ex(data)
    assert_close(ex.predict(data)[specs[-1]], run[specs[-1]])
    # model.predict itself fails on TensorFlow for such names (Keras's own scope); model(x) runs
    assert_close(run[specs[-1]], model(data))
    fresh = layers.Dense(1, name="fresh")  # a failed trace left no Keras name scope open
    fresh.build((None, 2))
    assert fresh.kernel.path == "fresh/kernel"
