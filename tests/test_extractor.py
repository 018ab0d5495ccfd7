"""Extractor on tiny models: every tap checked against plain Keras, one pruned pass."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

import layertap
from tests.conftest import assert_close, to_numpy


def leaf_layer_names(model: keras.Model) -> set[str]:
    """Names of the non-model, non-input layers that ``model`` runs, at any depth."""
    names: set[str] = set()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            names |= leaf_layer_names(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            names.add(layer.name)
    return names


def test_nested_taps_match_plain_keras(nested_model: keras.Model, rng: np.random.Generator) -> None:
    x = rng.random((5, 6), dtype="float32")
    mid = nested_model.get_layer("mid")
    inner = mid.get_layer("inner")
    d1, d2 = inner.layers
    ex = layertap.Extractor(
        nested_model,
        ["mid/inner/d1", "d2", "split", "mid/add", "mid/inner", "mid", "head"],
    )
    for run in (ex(x), ex.predict(x, batch_size=2)):
        assert list(run) == [
            "mid/inner/d1",
            "mid/inner/d2",
            "mid/split:0",
            "mid/split:1",
            "mid/add",
            "mid/inner",
            "mid",
            "head",
        ]
        h1 = d1(x)
        h2 = d2(h1)
        assert_close(run["mid/inner/d1"], h1)
        assert_close(run["mid/inner/d2"], h2)
        assert_close(run["mid/inner"], inner.predict(x, verbose=0))
        assert_close(run["mid/split:0"], keras.ops.convert_to_numpy(h2)[:, :2])
        assert_close(run["mid/split:1"], keras.ops.convert_to_numpy(h2)[:, 2:])
        assert_close(run["mid/add"], mid.predict(x, verbose=0))
        assert_close(run["mid"], mid.predict(x, verbose=0))
        assert_close(run["head"], nested_model.predict(x, verbose=0))


def test_second_call_of_submodel_and_shared_layer(
    siamese_model: keras.Model, rng: np.random.Generator
) -> None:
    xa = rng.random((4, 8), dtype="float32")
    xb = rng.random((4, 8), dtype="float32")
    encoder = siamese_model.get_layer("encoder")
    shared = siamese_model.get_layer("shared")
    ex = layertap.Extractor(
        siamese_model,
        {
            "conv_b": "encoder@1/conv",
            "conv_a": "encoder@0/conv",
            "sa": "shared@0",
            "sb": "shared@1",
            "a": "a",
            "score": -1,
        },
    )
    run = ex([xa, xb])
    assert_close(run["conv_a"], encoder.get_layer("conv")(xa))
    assert_close(run["conv_b"], encoder.get_layer("conv")(xb))
    assert not np.allclose(run["conv_a"], run["conv_b"])  # never silently the first call
    assert_close(run["sa"], shared(encoder(xa)))
    assert_close(run["sb"], shared(encoder(xb)))
    assert_close(run["a"], xa)
    assert_close(run["score"], siamese_model.predict([xa, xb], verbose=0))


def test_inputs_as_array_list_and_dict(
    siamese_model: keras.Model, rng: np.random.Generator
) -> None:
    xa = rng.random((3, 8), dtype="float32")
    xb = rng.random((3, 8), dtype="float32")
    ex = layertap.Extractor(siamese_model, ["cat"])
    as_list = ex([xa, xb])["cat"]
    np.testing.assert_array_equal(ex((xa, xb))["cat"], as_list)
    np.testing.assert_array_equal(ex({"b": xb, "a": xa})["cat"], as_list)
    np.testing.assert_array_equal(ex.predict({"a": xa, "b": xb})["cat"], as_list)

    a = keras.Input((3,), name="left")
    b = keras.Input((2,), name="right")
    dict_model = keras.Model(
        {"left": a, "right": b}, layers.Dense(1, name="o")(layers.Concatenate(name="c")([a, b]))
    )
    run = layertap.Extractor(dict_model, ["c", "o"])(
        {"left": np.ones((2, 3), "float32"), "right": np.zeros((2, 2), "float32")}
    )
    assert_close(run["c"], np.concatenate([np.ones((2, 3)), np.zeros((2, 2))], axis=1))


def test_same_architecture_nested_twice(rng: np.random.Generator) -> None:
    def tower(name: str) -> keras.Model:
        x = keras.Input((6,))
        h = layers.Dense(5, activation="relu", name="hidden")(x)
        return keras.Model(x, layers.Dense(4, name="proj")(h), name=name)

    left, right = tower("left"), tower("right")
    x = keras.Input((6,))
    model = keras.Model(x, layers.Add(name="sum")([left(x), right(x)]))
    data = rng.random((3, 6), dtype="float32")
    run = layertap.Extractor(model, ["left/hidden", "right/hidden", "sum"])(data)
    assert_close(run["left/hidden"], left.get_layer("hidden")(data))
    assert_close(run["right/hidden"], right.get_layer("hidden")(data))
    assert_close(run["sum"], model.predict(data, verbose=0))


def test_deep_nesting_and_sequential_in_sequential(rng: np.random.Generator) -> None:
    level3 = keras.Sequential([keras.Input((4,)), layers.Dense(4, name="leaf")], name="level3")
    level2 = keras.Sequential(
        [keras.Input((4,)), level3, layers.Dense(4, name="after3")], name="level2"
    )
    x = keras.Input((4,))
    level1 = keras.Model(x, layers.Dense(4, name="after2")(level2(x)), name="level1")
    top = keras.Sequential([keras.Input((4,)), level1, layers.Dense(2, name="out")], name="top")
    data = rng.random((3, 4), dtype="float32")
    run = layertap.Extractor(top, {"leaf": "level1/level2/level3/leaf", "out": "out"})(data)
    assert_close(run["leaf"], level3.predict(data, verbose=0))
    assert_close(run["out"], top.predict(data, verbose=0))


def test_training_flag_of_nested_call_is_kept(rng: np.random.Generator) -> None:
    """A backbone called with training=False keeps BatchNorm and Dropout in inference mode."""
    inner_x = keras.Input((5,))
    h = layers.BatchNormalization(name="bn")(layers.Dense(5, name="fc")(inner_x))
    backbone = keras.Model(inner_x, layers.Dropout(0.5, name="drop")(h), name="backbone")
    x = keras.Input((5,))
    model = keras.Model(x, layers.Dense(2, name="head")(backbone(x, training=False)))
    bn = backbone.get_layer("bn")
    bn.moving_mean.assign(np.full((5,), 0.3, "float32"))
    bn.moving_variance.assign(np.full((5,), 2.0, "float32"))
    data = rng.random((4, 5), dtype="float32")
    run = layertap.Extractor(model, ["backbone/bn", "backbone/drop", "head"])(data)
    expected = keras.Model(backbone.inputs, bn.output).predict(data, verbose=0)
    assert_close(run["backbone/bn"], expected)
    assert_close(run["backbone/drop"], expected)
    assert_close(run["head"], model.predict(data, verbose=0))


def test_pruned_after_the_deepest_tap(nested_model: keras.Model) -> None:
    early = layertap.Extractor(nested_model, ["mid/inner/d1"])
    assert leaf_layer_names(early.model) == {"d1"}
    middle = layertap.Extractor(nested_model, ["mid/split:0"])
    assert leaf_layer_names(middle.model) == {"d1", "d2", "split"}
    assert leaf_layer_names(layertap.Extractor(nested_model, [-1]).model) == {
        "d1",
        "d2",
        "split",
        "add",
        "head",
    }


def test_only_the_tapped_call_of_a_submodel_runs(siamese_model: keras.Model) -> None:
    ex = layertap.Extractor(siamese_model, ["encoder@1/conv"])
    rebuilt = [layer for layer in ex.model.layers if isinstance(layer, keras.Model)]
    assert len(rebuilt) == 1
    assert leaf_layer_names(ex.model) == {"conv"}


def test_weights_are_shared_not_copied(nested_model: keras.Model, rng: np.random.Generator) -> None:
    ex = layertap.Extractor(nested_model, ["head"])
    head = nested_model.get_layer("head")
    kernel = keras.ops.convert_to_numpy(head.kernel)
    head.kernel.assign(kernel * 2.0)
    data = rng.random((2, 6), dtype="float32")
    assert_close(ex(data)["head"], nested_model.predict(data, verbose=0))


def test_user_model_left_unchanged(nested_model: keras.Model, rng: np.random.Generator) -> None:
    data = rng.random((3, 6), dtype="float32")
    before_config = nested_model.get_config()
    before_pred = nested_model.predict(data, verbose=0)
    inner = nested_model.get_layer("mid").get_layer("inner")
    d1 = inner.layers[0]
    d1_output = d1.output
    nested_model_outputs = list(nested_model.outputs)
    layertap.Extractor(nested_model, ["mid/inner/d1", "mid/split", "head"])(data)
    assert nested_model.get_config() == before_config
    assert d1.output is d1_output
    assert list(nested_model.outputs) == nested_model_outputs
    assert not nested_model.compiled
    assert getattr(nested_model, "optimizer", None) is None
    np.testing.assert_array_equal(nested_model.predict(data, verbose=0), before_pred)


def test_metadata_agrees_with_the_run(nested_model: keras.Model, rng: np.random.Generator) -> None:
    ex = layertap.Extractor(nested_model, {"h": "mid/inner/d1", "s": "mid/split:1", "o": -1})
    assert ex.outputs == {
        "h": layertap.TapInfo("h", "mid/inner/d1", (None, 5), "float32"),
        "s": layertap.TapInfo("s", "mid/split:1", (None, 2), "float32"),
        "o": layertap.TapInfo("o", "head", (None, 3), "float32"),
    }
    run = ex(rng.random((7, 6), dtype="float32"))
    for key, info in ex.outputs.items():
        assert run[key].shape == (7, *info.shape[1:])
        assert run[key].dtype == np.dtype(info.dtype)
    assert repr(ex) == "Extractor('top', {'h': 'mid/inner/d1', 's': 'mid/split:1', 'o': 'head'})"


def test_predict_batches_agree_with_one_call(
    nested_model: keras.Model, rng: np.random.Generator
) -> None:
    data = rng.random((70, 6), dtype="float32")
    ex = layertap.Extractor(nested_model, ["mid/inner/d2", "head"])
    whole = ex(data)
    batched = ex.predict(data, batch_size=32)
    for key in whole:
        assert_close(batched[key], whole[key])


def test_predict_takes_a_pydataset(nested_model: keras.Model, rng: np.random.Generator) -> None:
    data = rng.random((10, 6), dtype="float32")

    class Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> np.ndarray:
            return data[i * 4 : (i + 1) * 4]

    out = layertap.Extractor(nested_model, ["head"]).predict(Batches())["head"]
    assert_close(out, nested_model.predict(data, verbose=0))


def test_ex_model_saves_reloads_and_composes(
    nested_model: keras.Model, tmp_path: Path, rng: np.random.Generator
) -> None:
    data = rng.random((4, 6), dtype="float32")
    ex = layertap.Extractor(nested_model, {"early": "mid/inner/d1", "late": "head"})
    expected = ex(data)
    ex.model.save(tmp_path / "taps.keras")
    reloaded = keras.saving.load_model(tmp_path / "taps.keras")
    got = reloaded.predict(data, verbose=0)
    for key in expected:
        assert_close(got[key], expected[key])

    x = keras.Input((6,))
    probe = layers.Dense(1, name="probe")
    new_model = keras.Model(x, probe(ex.model(x)["early"]))
    assert_close(new_model.predict(data, verbose=0), probe(expected["early"]))


def test_sequential_built_by_an_eager_call(rng: np.random.Generator) -> None:
    model = keras.Sequential([layers.Dense(3, name="a"), layers.Dense(2, name="b")])
    model(np.ones((2, 4), "float32"))
    data = rng.random((5, 4), dtype="float32")
    run = layertap.Extractor(model, ["a", "b"])(data)
    assert_close(run["a"], model.layers[0](data))
    assert_close(run["b"], model.predict(data, verbose=0))


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (
            lambda: np.ones((2, 7), "float32"),
            "input 'a' has shape (2, 7), but the model expects (None, 8) (None: any size)",
        ),
        (
            lambda: [np.ones((2, 8), "float32")],
            "got 1 input arrays, but the model has 2 inputs: ['a', 'b']",
        ),
        (
            lambda: np.ones((2, 8), "float32"),
            "got one input array, but the model has 2 inputs ['a', 'b']",
        ),
        (
            lambda: {"a": np.ones((2, 8), "float32"), "c": np.ones((2, 8), "float32")},
            "input dict keys ['a', 'c'] do not match the model's inputs ['a', 'b'] "
            "(unknown: ['c'], missing: ['b'])",
        ),
        (lambda: ["text", np.ones((2, 8), "float32")], "input 'a' is a str, not an array"),
    ],
)
def test_bad_inputs(siamese_model: keras.Model, make_input: object, message: str) -> None:
    ex = layertap.Extractor(siamese_model, ["cat"])
    x = make_input()  # type: ignore[operator]
    if isinstance(x, np.ndarray) and x.shape[1] == 7:
        x = [x, np.ones((2, 8), "float32")]
    with pytest.raises(layertap.BadInputError, match=re.escape(message)):
        ex(x)
    with pytest.raises(layertap.BadInputError, match=re.escape(message)):
        ex.predict(x)


def test_bare_operations_in_the_graph_are_tappable(rng: np.random.Generator) -> None:
    """`x + y` on symbolic tensors adds an operation that is not a Layer (as in ConvNeXt)."""
    inner_x = keras.Input((3,))
    h = layers.Dense(3, name="fc")(inner_x)
    block = keras.Model(inner_x, keras.ops.relu(h + inner_x), name="block")
    x = keras.Input((3,))
    model = keras.Model(x, layers.Dense(1, name="out")(block(x)))
    ops = [r for r in layertap.list_layers(model) if r.depth == 1 and r.class_name != "Dense"]
    assert [(r.class_name, r.params) for r in ops] == [("Add", 0), ("Relu", 0)]
    data = rng.random((4, 3), dtype="float32")
    run = layertap.Extractor(model, {"sum": ops[0].path, "out": "out"})(data)
    assert_close(run["sum"], to_numpy(block.get_layer("fc")(data)) + data)
    assert_close(run["out"], model.predict(data, verbose=0))
