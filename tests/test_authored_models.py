"""Subclassed models as other authors build them, tapped at the first try.

Each model here reproduces, small, a pattern seen in models that PyPI packages ship:
built by one call on a small zero batch and then fed whole photos of any size; built by
its own ``build()`` and never called; attribute names that differ from layer names.
Every tap is checked against the sublayers called by hand, every gradient against a
closed form.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
from keras import layers

import layertap
from tests.conftest import assert_close, to_numpy


def vgg_block(filters: int, convs: int, pool: bool) -> keras.Sequential:
    """A VGG-style block as a Sequential with no Input (its name is auto-numbered)."""
    stack: list[layers.Layer] = [layers.MaxPooling2D(2, padding="same")] if pool else []
    stack += [layers.Conv2D(filters, 3, padding="same", activation="relu") for _ in range(convs)]
    return keras.Sequential(stack)


class EdgeNet(keras.Model):  # type: ignore[misc]
    """An edge detector: VGG-style blocks, a side output per block, fused.

    Built the way many authors build before ``load_weights``: one call on a 64x64 zero
    batch. Its attributes (``block1``, ``dsn1``) are not its layers' names.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.block1 = vgg_block(4, 2, pool=False)
        self.block2 = vgg_block(6, 2, pool=True)
        self.block3 = vgg_block(8, 1, pool=True)
        self.dsn1 = layers.Conv2D(1, 1)
        self.dsn2 = layers.Conv2D(1, 1)
        self.dsn3 = layers.Conv2D(1, 1)
        self.fuse = layers.Conv2D(1, 1, name="fuse_conv")
        self(keras.ops.zeros((1, 64, 64, 3)))

    def call(self, x: Any) -> Any:
        h1 = self.block1(x)
        h2 = self.block2(h1)
        h3 = self.block3(h2)
        height, width = keras.ops.shape(x)[1], keras.ops.shape(x)[2]
        sides = [
            self.dsn1(h1),
            upsample_to(self.dsn2(h2), 2, height, width),
            upsample_to(self.dsn3(h3), 4, height, width),
        ]
        return keras.ops.sigmoid(self.fuse(keras.ops.concatenate(sides, axis=-1)))


def upsample_to(x: Any, factor: int, height: Any, width: Any) -> Any:
    """Nearest-neighbour upsampling by ``factor``, cropped to ``height`` x ``width``."""
    x = keras.ops.repeat(keras.ops.repeat(x, factor, axis=1), factor, axis=2)
    return x[:, :height, :width, :]


def edge_oracle(net: EdgeNet, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every place of EdgeNet by its sublayers called by hand, keyed by canonical path."""
    h1 = net.block1(x)
    h2 = net.block2(h1)
    h3 = net.block3(h2)
    names = {id(layer): layer.name for layer in (net.block1, net.block2, net.block3)}
    out = {
        names[id(net.block1)]: h1,
        names[id(net.block2)]: h2,
        names[id(net.block3)]: h3,
        f"{net.block2.name}/{net.block2.layers[1].name}": net.block2.layers[1](
            net.block2.layers[0](h1)
        ),
        net.dsn1.name: net.dsn1(h1),
        net.dsn3.name: net.dsn3(h3),
        "fuse_conv": None,
    }
    return {k: to_numpy(v) for k, v in out.items() if v is not None}


@pytest.fixture
def edge_net() -> EdgeNet:
    return EdgeNet(name="edge_net")


def test_a_build_call_shape_is_a_hint_not_a_limit(edge_net: EdgeNet) -> None:
    """Built on 64x64, fed 100x150 and then odd 37x41 batches: every tap as by hand."""
    specs = ["block1", "block2", "block3", "block2/conv2d_2", "dsn1", "dsn3", "fuse"]
    second_conv = edge_net.block2.layers[1].name
    ex = layertap.Extractor(edge_net, {s: s.replace("conv2d_2", second_conv) for s in specs})
    assert {k: v.shape for k, v in ex.outputs.items()} == {
        "block1": (None, None, None, 4),
        "block2": (None, None, None, 6),
        "block3": (None, None, None, 8),
        "block2/conv2d_2": (None, None, None, 6),
        "dsn1": (None, None, None, 1),
        "dsn3": (None, None, None, 1),
        "fuse": (None, None, None, 1),
    }
    rng = np.random.default_rng(1)
    for shape in [(1, 100, 150, 3), (2, 37, 41, 3), (3, 64, 64, 3)]:
        x = rng.random(shape, dtype="float32")
        got = ex(x)
        want = edge_oracle(edge_net, x)
        assert_close(got["block1"], want[edge_net.block1.name])
        assert_close(got["block2"], want[edge_net.block2.name])
        assert_close(got["block3"], want[edge_net.block3.name])
        assert_close(got["block2/conv2d_2"], want[f"{edge_net.block2.name}/{second_conv}"])
        assert_close(got["dsn1"], want[edge_net.dsn1.name])
        assert_close(got["dsn3"], want[edge_net.dsn3.name])
        assert got["fuse"].shape == (*shape[:3], 1)
    # predict batches several sizes the same way (one compiled function per signature)
    x = rng.random((5, 45, 33, 3), dtype="float32")
    assert_close(ex.predict(x, batch_size=2)["dsn3"], edge_oracle(edge_net, x)[edge_net.dsn3.name])


def test_photos_go_in_at_their_own_size(edge_net: EdgeNet, tmp_path: Any) -> None:
    """Image files and PIL images, for a model that takes any size: decoded as they are."""
    from PIL import Image

    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, size=(43, 65, 3), dtype="uint8")
    photo = Image.fromarray(pixels)
    photo.save(tmp_path / "photo.png")
    ex = layertap.Extractor(edge_net, {"side": "dsn1"})
    got = ex([tmp_path / "photo.png", photo])["side"]
    want = edge_oracle(edge_net, np.stack([pixels, pixels]).astype("float32") / 255.0)
    assert got.shape == (2, 43, 65, 1)
    assert_close(got, want[edge_net.dsn1.name])
    with pytest.raises(layertap.BadInputError, match="2 sizes .*43x65.*pass size="):
        ex([photo, Image.new("RGB", (30, 20))])
    sized = layertap.Extractor(edge_net, {"side": "dsn1"}, size=(16, 24))
    assert sized([photo, Image.new("RGB", (30, 20))])["side"].shape == (2, 16, 24, 1)


def test_feature_model_of_a_subclassed_model_takes_any_size(edge_net: EdgeNet) -> None:
    fm = layertap.feature_model(edge_net, {"side": "dsn1", "deep": "block3"})
    assert fm.inputs[0].shape == (None, None, None, 3)
    x = np.random.default_rng(2).random((2, 29, 53, 3), dtype="float32")
    out = fm.predict_on_batch(x)
    want = edge_oracle(edge_net, x)
    assert_close(out["side"], want[edge_net.dsn1.name])
    assert_close(out["deep"], want[edge_net.block3.name])


def test_the_user_model_is_left_as_it_was(edge_net: EdgeNet) -> None:
    x = np.random.default_rng(3).random((1, 40, 40, 3), dtype="float32")
    before = to_numpy(edge_net(x))
    weights = [w.copy() for w in edge_net.get_weights()]
    layertap.Extractor(edge_net, ["dsn1", "block2"])(x)
    assert not edge_net.compiled
    assert edge_net.built
    assert "call" not in vars(edge_net.dsn1)
    assert_close(to_numpy(edge_net(x)), before)
    for w, v in zip(edge_net.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(w, v)


class FullyConvClassifier(keras.Model):  # type: ignore[misc]
    """Convolutions, a global pool, a Dense head; its ``build(input_shape)`` builds each
    sublayer by hand (so the model records the shape, its sublayers theirs)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stem = layers.Conv2D(5, 3, padding="same", activation="tanh", name="stem_conv")
        self.features = layers.Conv2D(6, 3, strides=2, activation="tanh", name="feat")
        self.pool = layers.GlobalAveragePooling2D()
        self.classifier = layers.Dense(3, name="logits")

    def build(self, input_shape: Any) -> None:
        self.stem.build(input_shape)
        shape = self.stem.compute_output_shape(input_shape)
        self.features.build(shape)
        self.classifier.build((None, 6))
        self.built = True

    def call(self, x: Any) -> Any:
        return self.classifier(self.pool(self.features(self.stem(x))))


def test_gradients_at_any_size_equal_the_closed_form() -> None:
    """Score = logit c of Dense(GAP(F)): dscore/dF[h, w, k] = W[k, c] / (H W), exactly."""
    net = FullyConvClassifier(name="fcn")
    net.build((None, 32, 32, 3))
    ex = layertap.Extractor(net, {"f": "features"})
    kernel = to_numpy(net.classifier.kernel)
    rng = np.random.default_rng(4)
    for shape in [(2, 32, 32, 3), (3, 21, 45, 3), (1, 17, 17, 3)]:
        x = rng.normal(size=shape).astype("float32")
        g = ex.gradients(x, target=[1, 0, 2][: shape[0]])
        acts = g.activations["f"]
        h, w = acts.shape[1:3]
        assert_close(acts, net.features(net.stem(x)))
        want = np.stack(
            [np.broadcast_to(kernel[:, c] / (h * w), acts.shape[1:]) for c in g.targets]
        )
        np.testing.assert_allclose(g.gradients["f"], want, rtol=1e-4, atol=1e-7)
        logits = to_numpy(net(x))
        np.testing.assert_allclose(g.scores, logits[np.arange(len(x)), g.targets], rtol=1e-5)


def test_explain_a_subclassed_model_at_any_size() -> None:
    """Grad-CAM at the layer's own size: relu(sum_k mean(G_k) A_k), scaled to [0, 1]."""
    net = FullyConvClassifier(name="fcn")
    net(keras.ops.zeros((1, 24, 24, 3)))
    kernel = to_numpy(net.classifier.kernel)
    for shape in [(2, 24, 24, 3), (2, 31, 47, 3)]:
        x = np.random.default_rng(5).normal(size=shape).astype("float32")
        maps = layertap.explain(net, x, "features", method="gradcam", target=0, upsample=False)
        acts = to_numpy(net.features(net.stem(x)))
        cam = np.maximum(np.einsum("nhwk,k->nhw", acts, kernel[:, 0]), 0)
        cam = cam / cam.max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(np.asarray(maps), cam, atol=1e-5)
        full = layertap.explain(net, x, "features", method="gradcam", target=0)
        assert np.asarray(full).shape == shape[:3]


class FaceNet(keras.Model):  # type: ignore[misc]
    """A face network built by its own ``build()``: each sublayer built by hand, never
    called; then its weights are set. Attribute ``fc6_1`` holds the layer ``fc6-1``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv1 = layers.Conv2D(4, 3, activation="relu", name="conv1")
        self.pool1 = layers.MaxPooling2D(2, name="pool1")
        self.flatten = layers.Flatten(name="flatten")
        self.fc6_1 = layers.Dense(4, name="fc6-1")
        self.fc6_2 = layers.Dense(2, name="fc6-2")

    def build(self) -> None:  # a build that takes no shape: it knows its input
        self.conv1.build((None, 12, 12, 3))
        self.flatten.build((None, 5, 5, 4))
        self.fc6_1.build((None, 100))
        self.fc6_2.build((None, 100))
        self.built = True

    def call(self, x: Any) -> tuple[Any, Any]:
        h = self.flatten(self.pool1(self.conv1(x)))
        return self.fc6_1(h), self.fc6_2(h)


@pytest.fixture
def face_net() -> FaceNet:
    net = FaceNet(name="face")
    net.build()
    rng = np.random.default_rng(6)
    net.set_weights([rng.normal(size=w.shape).astype("float32") for w in net.get_weights()])
    return net


def test_a_model_built_by_its_own_build_is_discovered(face_net: FaceNet) -> None:
    places = layertap.list_layers(face_net)
    assert [(p.path, p.alias, p.output_shape) for p in places] == [
        ("conv1", None, (None, 10, 10, 4)),
        ("pool1", None, (None, 5, 5, 4)),
        ("flatten", None, (None, 100)),
        ("fc6-1", "fc6_1", (None, 4)),
        ("fc6-2", "fc6_2", (None, 2)),
    ]
    ex = layertap.Extractor(face_net, ["conv1", "fc6_1", "fc6_2"])
    assert list(ex.outputs) == ["conv1", "fc6-1", "fc6-2"]  # list keys stay canonical
    x = np.random.default_rng(7).random((3, 12, 12, 3), dtype="float32")
    got = ex(x)
    h = face_net.flatten(face_net.pool1(face_net.conv1(x)))
    assert_close(got["conv1"], face_net.conv1(x))
    assert_close(got["fc6-1"], face_net.fc6_1(h))
    assert_close(got["fc6-2"], face_net.fc6_2(h))
    with pytest.raises(layertap.BadInputError, match=r"\(None, 12, 12, 3\)"):
        ex(np.zeros((1, 20, 20, 3), "float32"))  # its Dense fixes the size: named


class TwoInputs(keras.Model):  # type: ignore[misc]
    """Built but never called, with two inputs: nothing says which shape is which."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.a = layers.Dense(3, name="da")
        self.b = layers.Dense(3, name="db")

    def build(self, a_shape: Any, b_shape: Any) -> None:
        self.a.build(a_shape)
        self.b.build(b_shape)
        self.built = True

    def call(self, inputs: Any) -> Any:
        return self.a(inputs[0]) + self.b(inputs[1])


class BuiltFlag(keras.Model):  # type: ignore[misc]
    """Marked built by hand, with nothing built inside."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dense = layers.Dense(2)
        self.built = True

    def call(self, x: Any) -> Any:
        return self.dense(x)


def test_built_but_never_called_names_input_shape() -> None:
    two = TwoInputs(name="two")
    two.build((None, 4), (None, 5))
    with pytest.raises(layertap.UnsupportedModelError) as info:
        layertap.list_layers(two)
    message = str(info.value)
    assert "is built, but was never called" in message
    assert "input_shape=(None, 4)" in message and "(None, 5)" in message
    assert "not been built" not in message
    places = layertap.list_layers(two, input_shape=[(None, 4), (None, 5)])
    assert [p.path for p in places] == ["da", "db"]
    with pytest.raises(layertap.UnsupportedModelError, match="is built, but was never called"):
        layertap.Extractor(BuiltFlag(name="flag"), ["dense"])


def test_an_unbuilt_model_still_says_so() -> None:
    with pytest.raises(layertap.UnsupportedModelError, match="has not been built"):
        layertap.list_layers(FullyConvClassifier(name="fresh"))


class Blocks(keras.Model):  # type: ignore[misc]
    """A list attribute of custom blocks, and attributes named like other layers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.blocks = [Residual(4, name=f"residual_{i}") for i in range(2)]
        # the attribute "dense_b" holds the layer "dense_a" and the other way round
        self.dense_b = layers.Dense(4, name="dense_a")
        self.dense_a = layers.Dense(2, name="dense_b")

    def call(self, x: Any) -> Any:
        for block in self.blocks:
            x = block(x)
        return self.dense_a(self.dense_b(x))


class Residual(layers.Layer):  # type: ignore[misc]
    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inner_proj = layers.Dense(units, activation="tanh", name="proj")

    def call(self, x: Any) -> Any:
        return x + self.inner_proj(x)


def test_attribute_paths_reach_every_layer() -> None:
    net = Blocks(name="blocks")
    x = np.random.default_rng(8).normal(size=(2, 4)).astype("float32")
    net(x)
    aliases = {p.path: p.alias for p in layertap.list_layers(net)}
    assert aliases == {
        "residual_0": "blocks/0",
        "residual_0/proj": "blocks/0/inner_proj",
        "residual_1": "blocks/1",
        "residual_1/proj": "blocks/1/inner_proj",
        "dense_a": "dense_b",
        "dense_b": "dense_a",
    }
    ex = layertap.Extractor(
        net, {"first": "blocks/0", "proj": "blocks/1/inner_proj", "canonical": "residual_1/proj"}
    )
    got = ex(x)
    h0 = net.blocks[0](x)
    assert_close(got["first"], h0)
    assert_close(got["proj"], net.blocks[1].inner_proj(h0))
    assert_close(got["canonical"], got["proj"], tol=0)
    # An alias that spells another layer's canonical path: the canonical path wins.
    both = layertap.Extractor(net, ["dense_a", "dense_b"])
    assert [p.layer for p in both.places.values()] == [net.dense_b, net.dense_a]
    with pytest.raises(layertap.LayerNotFoundError, match="close matches: .*'blocks/1'"):
        layertap.Extractor(net, ["blocks/2"])
    with pytest.raises(layertap.LayerNotFoundError, match="'inner_proj'"):
        layertap.Extractor(net, ["inner_prj"])
    assert "attribute path" in layertap.summary(net)
    assert "blocks/0/inner_proj" in layertap.summary(net)


class Gated(layers.Layer):  # type: ignore[misc]
    """A custom layer inside a graph: its attribute ``q`` holds the layer ``query_proj``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.q = layers.Dense(3, name="query_proj")

    def call(self, x: Any) -> Any:
        return keras.ops.sigmoid(self.q(x)) * x[:, :3]


def test_attribute_paths_inside_a_custom_layer_of_a_graph() -> None:
    x = keras.Input((5,), name="x")
    gated = Gated(name="gated")
    model = keras.Model(x, layers.Dense(1, name="out")(gated(x)))
    places = {p.path: p.alias for p in layertap.list_layers(model)}
    assert places["gated/query_proj"] == "gated/q"
    data = np.random.default_rng(9).normal(size=(4, 5)).astype("float32")
    got = layertap.Extractor(model, ["gated/q"])(data)
    assert list(got) == ["gated/query_proj"]
    assert_close(got["gated/query_proj"], gated.q(data))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="call() uses tf.* ops")
def test_an_edge_detector_written_with_tensorflow_ops() -> None:
    """As the original: ``tf.image.resize`` to the input's size in call(), 64x64 build."""
    import tensorflow as tf

    class TfEdges(keras.Model):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.block1 = vgg_block(4, 2, pool=False)
            self.block2 = vgg_block(6, 2, pool=True)
            self.dsn1 = layers.Conv2D(1, 1)
            self.dsn2 = layers.Conv2D(1, 1)
            self(tf.zeros((1, 64, 64, 3)))

        def call(self, x: Any) -> Any:
            size = tf.shape(x)[1:3]
            h1 = self.block1(x)
            h2 = self.block2(h1)
            side2 = tf.image.resize(self.dsn2(h2), size)
            return tf.sigmoid(self.dsn1(h1) + side2)

    net = TfEdges(name="tf_edges")
    photo = np.random.default_rng(10).random((1, 427, 640, 3), dtype="float32")
    got = layertap.Extractor(net, ["block2", "dsn2"])(photo)
    h2 = net.block2(net.block1(photo))
    assert_close(got[net.block2.name], h2)
    assert_close(got[net.dsn2.name], net.dsn2(h2))
