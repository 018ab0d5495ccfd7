"""Real ``keras.applications`` backbones nested in heads: every tap equals plain Keras.

Each architecture is built once (``weights=None``, 32x32 inputs) and nested both in a
Sequential head and in a Functional head that calls it with ``training=False`` (the
transfer-learning pattern). One Extractor per head taps places deep inside the
backbone (by path, by glob, inside a sub-model of the backbone), the backbone itself
and the head layers, and every value is compared with an oracle that plain Keras
computes from the backbone's own graph (which Keras can truncate) or by calling the
head layers by hand.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest

import layertap

pytestmark = pytest.mark.slow

SIZE = 32
BATCH = 4
SHAPE = (SIZE, SIZE, 3)
TOL = {"rtol": 1e-5, "atol": 1e-5}


@dataclasses.dataclass(frozen=True)
class Arch:
    """One application and where to tap it (layer names inside the backbone's graph)."""

    build: Callable[..., keras.Model]
    taps: dict[str, str]  # alias -> layer name at the backbone's top level
    glob: str  # a pattern over the backbone's top-level layer names
    # alias -> (name of a sub-model inside the backbone, name of a layer inside it)
    deeper: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)


A = keras.applications
ARCHS = {
    "MobileNetV2": Arch(
        A.MobileNetV2,
        {"early": "Conv1_relu", "mid": "block_6_project_BN", "deep": "block_13_expand_relu"},
        "block_1[0-2]_add",
    ),
    "EfficientNetB0": Arch(
        A.EfficientNetB0,
        {"early": "stem_activation", "mid": "block3b_add", "deep": "block5c_se_excite"},
        "block6?_add",
    ),
    "DenseNet121": Arch(
        A.DenseNet121,
        {"early": "conv1_relu", "mid": "pool2_pool", "deep": "conv4_block12_concat"},
        "conv3_block1?_concat",
    ),
    "ResNet50": Arch(
        A.ResNet50,
        {"early": "conv1_relu", "mid": "conv2_block3_out", "deep": "conv4_block6_out"},
        "conv3_block*_out",
    ),
    # ConvNeXt prefixes its layer names with the model name, holds Sequential
    # sub-models (stem, downsampling blocks) and bare ops (``inputs + x``).
    "ConvNeXtTiny": Arch(
        A.ConvNeXtTiny,
        {
            "early": "backbone_stem",
            "mid": "backbone_stage_1_block_2_identity",
            "deep": "backbone_stage_2_block_5_identity",
        },
        "backbone_stage_2_block_[0-2]_identity",
        deeper={
            "stem_norm": ("backbone_stem", "backbone_stem_layernorm"),
            "down_norm": ("backbone_downsampling_block_1", "backbone_downsampling_layernorm_1"),
        },
    ),
}


def numpy(x: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def leaf_layers(model: keras.Model) -> list[Any]:
    """Every layer of ``model`` but inputs and sub-models, nested sub-models expanded."""
    out: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(leaf_layers(layer))
        elif not isinstance(layer, keras.layers.InputLayer):
            out.append(layer)
    return out


def backbone_oracle(
    backbone: keras.Model, names: list[str], x: np.ndarray, subs: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Plain Keras: truncate the backbone's own graph at ``names`` (and its output); for
    each sub-model in ``subs``, also return its input there as ``"<sub>/__input__"``."""
    outputs = {n: backbone.get_layer(n).output for n in names}
    outputs["__output__"] = backbone.outputs[0]
    for sub in subs:  # the sub-model's one call inside the backbone
        outputs[f"{sub}/__input__"] = backbone.get_layer(sub)._inbound_nodes[0].input_tensors[0]
    truncated = keras.Model(backbone.inputs, outputs)
    return {k: np.asarray(v) for k, v in truncated.predict(x, batch_size=BATCH, verbose=0).items()}


def sub_model_oracle(backbone: keras.Model, sub: str, leaf: str, sub_input: np.ndarray) -> Any:
    """Plain Keras for a layer inside a sub-model of the backbone: the sub-model's
    layers called by hand on its input, up to ``leaf``."""
    y: Any = sub_input
    for layer in backbone.get_layer(sub).layers:
        y = layer(y)
        if layer.name == leaf:
            return numpy(y)
    raise AssertionError(f"{leaf!r} not in {sub!r}")


def sequential_head(backbone: keras.Model) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(SHAPE),
            backbone,
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="seq_head",
    )


def functional_head(backbone: keras.Model) -> keras.Model:
    inputs = keras.Input(SHAPE, name="image")
    y = backbone(inputs, training=False)
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    y = keras.layers.Dropout(0.5, name="drop")(y)
    outputs = keras.layers.Dense(3, name="logits")(y)
    return keras.Model(inputs, outputs, name="fn_head")


HEADS = {"sequential": sequential_head, "functional": functional_head}


@dataclasses.dataclass
class Built:
    name: str
    arch: Arch
    backbone: keras.Model
    x: np.ndarray
    oracle: dict[str, np.ndarray]  # backbone-relative layer name -> value
    glob_names: list[str]


def build(name: str) -> Built:
    arch = ARCHS[name]
    keras.utils.set_random_seed(0)
    backbone = arch.build(weights=None, include_top=False, input_shape=SHAPE, name="backbone")
    x = np.random.default_rng(0).uniform(-1, 1, (BATCH, *SHAPE)).astype("float32")
    glob_names = fnmatch.filter([layer.name for layer in backbone.layers], arch.glob)
    subs = tuple(sub for sub, _ in arch.deeper.values())
    oracle = backbone_oracle(backbone, [*arch.taps.values(), *glob_names], x, subs)
    for sub, leaf in arch.deeper.values():
        oracle[f"{sub}/{leaf}"] = sub_model_oracle(backbone, sub, leaf, oracle[f"{sub}/__input__"])
    return Built(name, arch, backbone, x, oracle, glob_names)


@pytest.fixture(scope="module")
def backbones() -> dict[str, Built]:
    """Each architecture built once; the two heads of one architecture share it."""
    return {}


@dataclasses.dataclass
class Case:
    built: Built
    head: str
    model: keras.Model
    ex: layertap.Extractor
    feats: dict[str, np.ndarray]
    before: dict[str, Any]
    after: dict[str, Any]


def observe(model: keras.Model, backbone: keras.Model, x: np.ndarray) -> dict[str, Any]:
    """What a user could see of their model."""
    return {
        "config": model.get_config(),
        "backbone_config": backbone.get_config(),
        "compiled": model.compiled,
        "optimizer": getattr(model, "optimizer", None),
        "n_layers": len(model.layers),
        "outputs": {layer.name: layer.output for layer in backbone.layers[1:]},
        "gap_output": model.get_layer("gap").output,
        "predict": model.predict(x, batch_size=BATCH, verbose=0),
    }


def spec_for(arch: Arch) -> dict[str, Any]:
    spec: dict[str, Any] = {alias: f"backbone/{name}" for alias, name in arch.taps.items()}
    spec["deep"] = f"**/{arch.taps['deep']}"  # the same place, found by a ** glob
    spec["blocks"] = f"backbone/{arch.glob}"
    for alias, (sub, leaf) in arch.deeper.items():
        spec[alias] = f"backbone/{sub}/{leaf}"
    spec["features"] = "backbone"
    spec["gap"] = "gap"
    spec["logits"] = -1
    return spec


CASES = [pytest.param((arch, head), id=f"{arch}-{head}") for arch in ARCHS for head in HEADS]


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest, backbones: dict[str, Built]) -> Case:
    arch, head = request.param
    if arch not in backbones:
        backbones.clear()  # one architecture alive at a time
        backbones[arch] = build(arch)
    built = backbones[arch]
    model = HEADS[head](built.backbone)
    before = observe(model, built.backbone, built.x)
    ex = layertap.Extractor(model, spec_for(built.arch))
    feats = ex.predict(built.x, batch_size=BATCH // 2)
    after = observe(model, built.backbone, built.x)
    return Case(built, head, model, ex, feats, before, after)


def test_inner_taps_equal_the_backbone_graph(case: Case) -> None:
    b = case.built
    for alias, name in b.arch.taps.items():
        assert case.feats[alias].shape == b.oracle[name].shape, alias
        np.testing.assert_allclose(case.feats[alias], b.oracle[name], **TOL, err_msg=alias)
    np.testing.assert_allclose(case.feats["features"], b.oracle["__output__"], **TOL)
    # the path and the path through a ** glob name the same place
    assert case.ex.places["deep"].path == f"backbone/{b.arch.taps['deep']}"


def test_glob_expands_to_every_match_with_its_value(case: Case) -> None:
    b = case.built
    assert len(b.glob_names) >= 2
    keys = [k for k in case.feats if k.startswith("blocks/")]
    assert keys == [f"blocks/backbone/{n}" for n in b.glob_names]
    for name in b.glob_names:
        np.testing.assert_allclose(
            case.feats[f"blocks/backbone/{name}"], b.oracle[name], **TOL, err_msg=name
        )


def test_taps_inside_sub_models_of_the_backbone(case: Case) -> None:
    b = case.built
    if not b.arch.deeper:
        pytest.skip(f"{b.name} has no sub-models inside its graph")
    for alias, (sub, leaf) in b.arch.deeper.items():
        assert case.ex.places[alias].depth == 2
        np.testing.assert_allclose(case.feats[alias], b.oracle[f"{sub}/{leaf}"], **TOL)


def test_head_taps_equal_plain_keras(case: Case) -> None:
    features = case.built.oracle["__output__"]
    gap = features.mean(axis=(1, 2))
    logits = numpy(case.model.get_layer("logits")(gap))
    np.testing.assert_allclose(case.feats["gap"], gap, **TOL)
    np.testing.assert_allclose(case.feats["logits"], logits, **TOL)
    np.testing.assert_allclose(case.feats["logits"], case.before["predict"], **TOL)
    assert case.ex.places["logits"].path == "logits"


def test_user_model_is_unchanged(case: Case) -> None:
    before, after = case.before, case.after
    assert after["config"] == before["config"]
    assert after["backbone_config"] == before["backbone_config"]
    assert before["compiled"] is False and after["compiled"] is False
    assert after["optimizer"] is None
    assert after["n_layers"] == before["n_layers"]
    assert after["gap_output"] is before["gap_output"]
    changed = [n for n, t in before["outputs"].items() if after["outputs"][n] is not t]
    assert changed == []
    np.testing.assert_array_equal(after["predict"], before["predict"])
    assert case.ex.model is not case.model


def test_early_tap_is_pruned(case: Case) -> None:
    b, model = case.built, case.model
    early = b.backbone.get_layer(b.arch.taps["early"])
    deep = b.backbone.get_layer(b.arch.taps["deep"])
    ex = layertap.Extractor(model, f"backbone/{early.name}")
    kept = leaf_layers(ex.model)
    everything = leaf_layers(model)
    assert len(kept) < len(everything) // 4, (len(kept), len(everything))
    ids = {id(layer) for layer in kept}
    early_leaves = leaf_layers(early) if isinstance(early, keras.Model) else [early]
    assert {id(layer) for layer in early_leaves} <= ids
    assert id(deep) not in ids
    assert id(model.get_layer("gap")) not in ids and id(model.get_layer("logits")) not in ids
    # kept layers are the user's own objects: weights are shared, not copied
    assert ids <= {id(layer) for layer in everything}
    np.testing.assert_allclose(ex(b.x)[f"backbone/{early.name}"], b.oracle[early.name], **TOL)


SAVED = {("MobileNetV2", "sequential"), ("ConvNeXtTiny", "functional")}


def test_saved_extractor_model_reloads(case: Case, tmp_path: Any) -> None:
    if (case.built.name, case.head) not in SAVED:
        pytest.skip("save/load is checked on two cases (and the twins) to keep the file fast")
    path = tmp_path / "taps.keras"
    case.ex.model.save(path)
    loaded = keras.saving.load_model(path)
    out = loaded.predict(case.built.x, batch_size=BATCH, verbose=0)
    assert set(out) == set(case.feats)
    for key, value in case.feats.items():
        np.testing.assert_allclose(np.asarray(out[key]), value, **TOL, err_msg=key)


# --- the same application nested twice ---------------------------------------------


@pytest.fixture(scope="module")
def twins() -> dict[str, Any]:
    keras.utils.set_random_seed(1)
    left = A.MobileNetV2(
        weights=None, include_top=False, input_shape=SHAPE, alpha=0.35, name="left"
    )
    right = A.MobileNetV2(
        weights=None, include_top=False, input_shape=SHAPE, alpha=0.35, name="right"
    )
    inputs = keras.Input(SHAPE, name="image")
    a = keras.layers.GlobalAveragePooling2D(name="gap_left")(left(inputs, training=False))
    b = keras.layers.GlobalAveragePooling2D(name="gap_right")(right(inputs, training=False))
    joined = keras.layers.Concatenate(name="joined")([a, b])
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(joined), name="twins")
    x = np.random.default_rng(1).uniform(-1, 1, (BATCH, *SHAPE)).astype("float32")
    names = ["Conv1", "Conv1_relu", "block_5_add", "block_13_expand_relu"]
    before = {
        "config": model.get_config(),
        "conv1": (left.get_layer("Conv1").output, right.get_layer("Conv1").output),
        "predict": model.predict(x, verbose=0),
    }
    spec = {
        "l_conv": "left/Conv1",
        "r_conv": "right/Conv1",
        "relu": "*/Conv1_relu",
        "l_mid": "left/block_5_add",
        "r_deep": "right/block_13_expand_relu",
        "logits": "logits",
    }
    ex = layertap.Extractor(model, spec)
    return {
        "model": model,
        "ex": ex,
        "x": x,
        "before": before,
        "feats": ex(x),
        "left": backbone_oracle(left, names, x),
        "right": backbone_oracle(right, names, x),
        "sides": (left, right),
    }


def test_twins_taps_in_both_copies(twins: dict[str, Any]) -> None:
    f, left, right = twins["feats"], twins["left"], twins["right"]
    np.testing.assert_allclose(f["l_conv"], left["Conv1"], **TOL)
    np.testing.assert_allclose(f["r_conv"], right["Conv1"], **TOL)
    assert not np.allclose(f["l_conv"], f["r_conv"])  # two instances, two sets of weights
    np.testing.assert_allclose(f["relu/left/Conv1_relu"], left["Conv1_relu"], **TOL)
    np.testing.assert_allclose(f["relu/right/Conv1_relu"], right["Conv1_relu"], **TOL)
    np.testing.assert_allclose(f["l_mid"], left["block_5_add"], **TOL)
    np.testing.assert_allclose(f["r_deep"], right["block_13_expand_relu"], **TOL)
    np.testing.assert_allclose(f["logits"], twins["before"]["predict"], **TOL)


def test_twins_bare_name_is_ambiguous(twins: dict[str, Any]) -> None:
    with pytest.raises(layertap.AmbiguousLayerError, match=r"left/Conv1.*right/Conv1"):
        layertap.Extractor(twins["model"], "Conv1")


def test_twins_model_unchanged_and_reloads(twins: dict[str, Any], tmp_path: Any) -> None:
    model, before = twins["model"], twins["before"]
    left, right = twins["sides"]
    assert model.get_config() == before["config"]
    assert left.get_layer("Conv1").output is before["conv1"][0]
    assert right.get_layer("Conv1").output is before["conv1"][1]
    assert model.compiled is False
    np.testing.assert_array_equal(model.predict(twins["x"], verbose=0), before["predict"])
    path = tmp_path / "twins.keras"
    twins["ex"].model.save(path)
    out = keras.saving.load_model(path).predict(twins["x"], verbose=0)
    for key, value in twins["feats"].items():
        np.testing.assert_allclose(np.asarray(out[key]), value, **TOL, err_msg=key)
