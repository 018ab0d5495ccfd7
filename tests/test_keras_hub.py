"""keras-hub backbones (small configs, random weights): listing, top-level taps, padding, inputs.

Taps inside the transformer blocks are checked against hand-written oracles in
``test_keras_hub_blocks.py``.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

import layertap
from tests.conftest import assert_close
from tests.hub_backbones import BACKBONES, SEQ

pytest.importorskip("keras_hub")


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone(request: pytest.FixtureRequest) -> tuple[str, keras.Model, object]:
    keras.utils.set_random_seed(0)
    model, make_inputs = BACKBONES[request.param]()
    return request.param, model, make_inputs


def test_lists_every_place_and_taps_the_top_level_like_plain_keras(
    backbone: tuple[str, keras.Model, object],
) -> None:
    name, model, make_inputs = backbone
    places = layertap.list_layers(model)
    assert [p.path for p in places if p.trace_error] == []
    assert len({p.path for p in places}) == len(places)
    top = [p for p in places if p.depth == 0 and not isinstance(p.layer, keras.layers.InputLayer)]
    assert len(top) >= 2
    # The oracle: the usual recipe, which works for top-level layers.
    tensors = [p.nodes[0].outputs[p.output_index or 0] for p in top]
    oracle = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.input, tensors)
    x = make_inputs(np.random.default_rng(1), 3)  # type: ignore[operator]
    expected = oracle.predict_on_batch(x)
    got = layertap.Extractor(model, [p.path for p in top])(x)
    assert list(got) == [p.path for p in top]
    for p, want in zip(top, expected, strict=True):
        assert_close(got[p.path], want, tol=1e-5)
        assert got[p.path].shape[1:] == tuple(
            d if d is not None else got[p.path].shape[i + 1]
            for i, d in enumerate(p.output_shape[1:])
        ), p.path


def test_nested_places_are_listed_inside_blocks(backbone: tuple[str, keras.Model, object]) -> None:
    name, model, _ = backbone
    places = layertap.list_layers(model)
    if name == "ResNetBackbone":  # built from stock Keras layers only: nothing is nested
        assert all(p.depth == 0 for p in places)
        return
    inner = [p for p in places if p.depth >= 1]
    assert inner, name
    dense = [p for p in inner if p.class_name in ("Dense", "EinsumDense")]
    assert len(dense) >= 4, [p.path for p in inner]
    summary = layertap.summary(model)
    assert "(!)" not in summary
    assert dense[0].path.rsplit("/", 1)[-1] in summary


def _real_rows(x: np.ndarray, length: int) -> np.ndarray:
    """The real tokens of one row of a ``(tokens, ...)`` tap (a pooled tap is kept whole)."""
    return x[:length] if x.ndim >= 2 else x


@pytest.mark.parametrize("name", ["BertBackbone", "GemmaBackbone", "LlamaBackbone"])
def test_padded_batch_gives_each_example_its_unpadded_values(name: str) -> None:
    """Real tokens of a padded row equal that example run alone, without padding."""
    keras.utils.set_random_seed(0)
    model, make_inputs = BACKBONES[name]()
    x = make_inputs(np.random.default_rng(2), 3)  # type: ignore[operator]
    lengths = x["padding_mask"].sum(axis=1)
    assert lengths.min() < SEQ  # the batch really is padded
    places = layertap.list_layers(model)
    inner = next(p for p in places if p.depth == 1 and p.class_name in ("Dense", "EinsumDense"))
    block = next(p for p in places if p.path == inner.path.split("/")[0])
    taps = {"block": block.path, "inner": inner.path, "last": -1}
    ex = layertap.Extractor(model, taps)
    batch = ex(x)
    for row, length in enumerate(lengths):
        alone = {k: v[row : row + 1, :length] for k, v in x.items()}
        single = ex(alone)
        for key in taps:
            assert_close(_real_rows(batch[key][row], length), single[key][0], tol=1e-4)


def test_inputs_as_the_model_takes_them() -> None:
    keras.utils.set_random_seed(0)
    model, make_inputs = BACKBONES["CLIPBackbone"]()
    x = make_inputs(np.random.default_rng(3), 2)  # type: ignore[operator]
    vision = next(p for p in layertap.list_layers(model, max_depth=0) if "vision" in p.path)
    ex = layertap.Extractor(model, {"v": vision.path})
    assert [t.name for t in ex.model.inputs] == ["images"]
    want = keras.Model(model.input, vision.nodes[0].outputs[0]).predict_on_batch(x)
    assert_close(ex(x)["v"], want)  # every input the model takes; the text one is not needed
    assert_close(ex({"images": x["images"]})["v"], want)  # only what the taps need
    with pytest.raises(layertap.BadInputError, match=re.escape("unknown: ['bogus']")):
        ex({**x, "bogus": x["images"]})
    with pytest.raises(layertap.BadInputError, match=re.escape("missing: ['images']")):
        ex({"token_ids": x["token_ids"]})
    both = layertap.Extractor(model, ["vision_projection", "text_projection"])
    assert sorted(t.name for t in both.model.inputs) == ["images", "token_ids"]
    assert set(both.predict(x, batch_size=1)) == {"vision_projection", "text_projection"}
