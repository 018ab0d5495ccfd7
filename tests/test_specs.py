"""The graph walk (what list_layers shows) and the spec grammar (what Extractor accepts)."""

from __future__ import annotations

import re

import keras
import pytest
from keras import layers

import layertap
from layertap.graph.resolve import resolve
from layertap.graph.walk import walk


def paths(model: keras.Model, layers_spec: object) -> list[str]:
    return [p.path for p in resolve(layers_spec, model, walk(model)).values()]  # type: ignore[arg-type]


def test_list_layers_nested_tree(nested_model: keras.Model) -> None:
    records = layertap.list_layers(nested_model)
    assert [r.path for r in records] == [
        "mid",
        "mid/inner",
        "mid/inner/d1",
        "mid/inner/d2",
        "mid/split:0",
        "mid/split:1",
        "mid/add",
        "head",
    ]
    assert [r.index for r in records] == [0, None, None, None, None, None, None, 1]
    assert [r.depth for r in records] == [0, 1, 2, 2, 1, 1, 1, 0]
    d1 = records[2]
    assert (d1.class_name, d1.output_shape, d1.params, d1.dtype) == (
        "Dense",
        (None, 5),
        35,
        "float32",
    )
    assert records[0].is_model and records[1].is_model and not d1.is_model
    assert records[1].class_name == "Sequential"


def test_list_layers_siamese_marks_calls(siamese_model: keras.Model) -> None:
    assert [r.path for r in layertap.list_layers(siamese_model)] == [
        "a",
        "b",
        "encoder@0",
        "encoder@0/conv",
        "encoder@0/proj",
        "encoder@1",
        "encoder@1/conv",
        "encoder@1/proj",
        "shared@0",
        "shared@1",
        "cat",
        "score",
    ]


def test_index_agrees_with_model_layers(siamese_model: keras.Model) -> None:
    for r in layertap.list_layers(siamese_model, max_depth=0):
        assert siamese_model.layers[r.index] is r.layer


def test_list_layers_pattern(nested_model: keras.Model) -> None:
    assert [r.path for r in layertap.list_layers(nested_model, pattern="mid/inner/*")] == [
        "mid/inner/d1",
        "mid/inner/d2",
    ]


def test_summary_is_an_indented_tree(nested_model: keras.Model) -> None:
    lines = layertap.summary(nested_model).splitlines()
    assert lines[0].split() == ["index", "path", "class", "output", "shape", "params"]
    assert lines[1].split() == ["0", "mid", "Functional", "(None,", "2)", "59"]
    assert lines[3].split() == ["d1", "Dense", "(None,", "5)", "35"]
    assert lines[3].index("d1") > lines[2].index("inner") > lines[1].index("mid")


def test_every_listed_path_is_accepted(
    nested_model: keras.Model, siamese_model: keras.Model
) -> None:
    for model in (nested_model, siamese_model):
        listed = [r.path for r in layertap.list_layers(model)]
        assert paths(model, listed) == listed


def test_int_specs(nested_model: keras.Model) -> None:
    assert paths(nested_model, 0) == ["mid"]
    assert paths(nested_model, -1) == ["head"]
    with pytest.raises(
        layertap.LayerNotFoundError,
        match=re.escape(
            "layer index 2 is out of range: model 'top' has 2 top-level layers, "
            "so valid indices are -2..1"
        ),
    ):
        paths(nested_model, 2)


def test_int_spec_of_shared_layer_names_calls(siamese_model: keras.Model) -> None:
    index = [layer.name for layer in siamese_model.layers].index("shared")
    with pytest.raises(layertap.AmbiguousLayerError, match="'shared@0', 'shared@1'"):
        paths(siamese_model, index)


def test_names_paths_and_calls(nested_model: keras.Model, siamese_model: keras.Model) -> None:
    assert paths(nested_model, "head") == ["head"]
    assert paths(nested_model, "d2") == ["mid/inner/d2"]  # unique anywhere in the tree
    assert paths(nested_model, "mid/inner/d1") == ["mid/inner/d1"]
    assert paths(nested_model, "mid/inner") == ["mid/inner"]
    assert paths(nested_model, "split") == ["mid/split:0", "mid/split:1"]
    assert paths(nested_model, "mid/split:1") == ["mid/split:1"]
    assert paths(siamese_model, "encoder@1/conv") == ["encoder@1/conv"]
    assert paths(siamese_model, "shared@0") == ["shared@0"]
    assert paths(siamese_model, "encoder@0") == ["encoder@0"]


def test_globs(nested_model: keras.Model, siamese_model: keras.Model) -> None:
    assert paths(nested_model, "mid/inner/d*") == ["mid/inner/d1", "mid/inner/d2"]
    assert paths(nested_model, "**/d?") == ["mid/inner/d1", "mid/inner/d2"]
    assert paths(nested_model, "*") == ["mid", "head"]
    assert paths(siamese_model, "encoder@*/conv") == ["encoder@0/conv", "encoder@1/conv"]
    assert paths(siamese_model, {"c": "encoder@*/conv"}) == ["encoder@0/conv", "encoder@1/conv"]
    assert list(resolve({"c": "encoder@*/conv"}, siamese_model, walk(siamese_model))) == [
        "c/encoder@0/conv",
        "c/encoder@1/conv",
    ]
    with pytest.raises(layertap.LayerNotFoundError, match="glob 'mid/zz\\*' matches no layer path"):
        paths(nested_model, "mid/zz*")


def test_keys_aliases_and_duplicates(nested_model: keras.Model) -> None:
    places = walk(nested_model)
    assert list(resolve(["head", "head", -1], nested_model, places)) == ["head"]
    assert list(resolve({"x": "head", "y": -1}, nested_model, places)) == ["x", "y"]
    assert list(resolve("d1", nested_model, places)) == ["mid/inner/d1"]


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (
            "encoder/conv",
            layertap.AmbiguousLayerError,
            "layer spec 'encoder/conv' is ambiguous: 'encoder' is called 2 times; pick one "
            "call with @k: 'encoder@0/conv', 'encoder@1/conv'",
        ),
        (
            "shared",
            layertap.AmbiguousLayerError,
            "layer spec 'shared' is ambiguous: 'shared' is called 2 times; pick one call "
            "with @k: 'shared@0', 'shared@1'",
        ),
        (
            "conv",
            layertap.AmbiguousLayerError,
            "layer spec 'conv' is ambiguous: 'encoder' is called 2 times; pick one call "
            "with @k: 'encoder@0/conv', 'encoder@1/conv'",
        ),
        (
            "encoder@2/conv",
            layertap.LayerNotFoundError,
            "layer spec 'encoder@2/conv' asks for call @2 of 'encoder', which is called 2 "
            "times there: valid calls are @0..@1",
        ),
        (
            "encodr@0/conv",
            layertap.LayerNotFoundError,
            "layer path 'encodr@0/conv': no layer 'encodr' at the top level; "
            "close matches: 'encoder@0/conv'",
        ),
        (
            "sharde",
            layertap.LayerNotFoundError,
            "no layer named 'sharde' in the model; close matches: 'shared'",
        ),
        ("a/b//c", layertap.BadSpecError, "bad path segment '' in layer spec 'a/b//c'"),
        (3.5, layertap.BadSpecError, "layer spec 3.5 has type float"),
        (True, layertap.BadSpecError, "layer spec True has type bool"),
        (
            "encoder@0/cnv",
            layertap.LayerNotFoundError,
            "layer path 'encoder@0/cnv': no layer 'cnv' inside 'encoder@0'; close matches: "
            "'encoder@0/conv'",
        ),
        (" cat", layertap.BadSpecError, "layer spec ' cat' is empty or has surrounding spaces"),
        ([], layertap.BadSpecError, "no layers given"),
        ({"": "cat"}, layertap.BadSpecError, "alias '' in the layers dict must be a non-empty"),
    ],
)
def test_errors_name_the_bad_value(
    siamese_model: keras.Model, spec: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        resolve(spec, siamese_model, walk(siamese_model))  # type: ignore[arg-type]


def test_not_found_points_to_list_layers(siamese_model: keras.Model) -> None:
    with pytest.raises(layertap.LayerNotFoundError, match=r"see layertap\.list_layers\(model\)"):
        resolve("nothing_like_it", siamese_model, walk(siamese_model))


def test_same_name_at_two_paths_is_ambiguous() -> None:
    def block(name: str) -> keras.Model:
        x = keras.Input((4,))
        return keras.Model(x, layers.Dense(4, name="proj")(x), name=name)

    x = keras.Input((4,))
    model = keras.Model(x, block("right")(block("left")(x)))
    with pytest.raises(
        layertap.AmbiguousLayerError,
        match=re.escape(
            "layer spec 'proj' is ambiguous: it is found at 2 paths: 'left/proj', 'right/proj'"
        ),
    ):
        resolve("proj", model, walk(model))


def test_unsupported_models() -> None:
    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = layers.Dense(2)

        def call(self, x: object) -> object:
            return self.dense(x)

    with pytest.raises(layertap.UnsupportedModelError, match="defines its own call"):
        layertap.list_layers(Net())
    with pytest.raises(layertap.UnsupportedModelError, match="is not built"):
        layertap.list_layers(keras.Sequential([layers.Dense(2)], name="lazy"))
    with pytest.raises(layertap.UnsupportedModelError, match="expected a keras.Model, got Dense"):
        layertap.list_layers(layers.Dense(2))
