"""explain(): each method against an oracle written apart from it.

* the CAM family: the paper's formula written out with loops over channels and
  positions, on gradients that tests/test_gradients.py checks against finite
  differences;
* Grad-CAM on a keras.applications MobileNetV2 nested in a Sequential head, against a
  hand-written TensorFlow GradientTape (the backbone split by hand at the layer);
* Score-CAM: forward passes of each channel-masked image, by hand;
* integrated gradients: completeness (the attributions sum to score(x) - score(0)).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

import layertap
from layertap.explainer.methods import METHODS, explain
from tests.conftest import to_numpy


@pytest.fixture
def cnn() -> keras.Model:
    """A nested CNN: a Functional backbone inside a Sequential with a softmax head."""
    x = keras.Input((10, 10, 3))
    h = layers.Conv2D(6, 3, activation="tanh", name="conv1")(x)
    h = layers.Conv2D(5, 3, activation="tanh", name="conv2")(h)
    backbone = keras.Model(x, h, name="backbone")
    return keras.Sequential(
        [keras.Input((10, 10, 3)), backbone, layers.GlobalAveragePooling2D(),
         layers.Dense(4, activation="softmax", name="head")]
    )  # fmt: skip


@pytest.fixture
def images(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1, 1, size=(3, 10, 10, 3)).astype("float32")


def minmax(m: np.ndarray) -> np.ndarray:
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def by_hand(method: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """One image's map, channel by channel and position by position (the papers)."""
    h, w, c = a.shape
    out = np.zeros((h, w))
    for k in range(c):
        if method == "gradcam":
            out += g[..., k].mean() * a[..., k]
        elif method == "gradcam++":  # alphas normalised per channel, as the authors' code
            alphas = np.zeros((h, w))
            for i in range(h):
                for j in range(w):
                    d = 2 * g[i, j, k] ** 2 + a[..., k].sum() * g[i, j, k] ** 3
                    alphas[i, j] = g[i, j, k] ** 2 / d if d != 0 else 0.0
            if alphas.sum() != 0:
                alphas /= alphas.sum()
            out += (alphas * np.maximum(g[..., k], 0)).sum() * a[..., k]
        elif method == "layercam":
            out += np.maximum(g[..., k], 0) * a[..., k]
        else:  # gradxact
            out += g[..., k] * a[..., k]
    return minmax(np.maximum(out, 0))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "gradxact"])
def test_the_cam_family_equals_the_formulas(
    method: str, cnn: keras.Model, images: np.ndarray
) -> None:
    target = [0, 3, 1]
    got = explain(cnn, images, "backbone/conv2", method=method, target=target, upsample=False)
    g = layertap.Extractor(cnn, {"l": "backbone/conv2"}).gradients(images, target)
    assert got.shape == (3, 6, 6) and got.dtype == np.float32
    for i in range(3):
        want = by_hand(method, g.activations["l"][i], g.gradients["l"][i])
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)
    assert got.info["targets"] == target and got.info["method"] == method
    up = explain(cnn, images, "backbone/conv2", method=method, target=target)
    assert up.shape == (3, 10, 10) and 0.0 <= up.min() and up.max() <= 1.0


def test_target_none_is_the_top_class(cnn: keras.Model, images: np.ndarray) -> None:
    top = to_numpy(cnn(images)).argmax(1)
    got = explain(cnn, images, "backbone/conv1")
    assert got.info["targets"] == top.tolist()
    np.testing.assert_allclose(got, explain(cnn, images, "backbone/conv1", target=top))


def test_scorecam_weights_channels_by_the_scores_of_masked_images(
    cnn: keras.Model, images: np.ndarray
) -> None:
    got = explain(cnn, images, "backbone/conv2", method="scorecam", upsample=False)
    inner = keras.Model(cnn.layers[0].input, cnn.layers[0].get_layer("conv2").output)
    acts = to_numpy(inner(images))
    for i, c in enumerate(got.info["targets"]):
        weights = []
        for k in range(acts.shape[-1]):
            pixels = Image.fromarray(acts[i, ..., k], mode="F").resize((10, 10), Image.BILINEAR)
            mask = minmax(np.asarray(pixels))
            weights.append(to_numpy(cnn(images[i : i + 1] * mask[None, ..., None]))[0, c])
        want = minmax(np.maximum((acts[i] * np.array(weights)).sum(-1), 0))
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-4)


def test_integrated_gradients_are_complete_and_saliency_is_the_gradient(
    cnn: keras.Model, images: np.ndarray
) -> None:
    ig = explain(cnn, images, method="integrated_gradients", steps=64)
    check = ig.info["completeness"]
    assert check["max_relative_gap"] < 0.01, check
    assert ig.shape == (3, 10, 10)
    sal = explain(cnn, images, method="saliency", target=[1, 1, 1])
    g = layertap.Extractor(cnn, {"out": -1}).gradients(images, [1, 1, 1])
    for i in range(3):
        np.testing.assert_allclose(sal[i], minmax(np.abs(g.input_gradients[i]).max(-1)), atol=1e-5)
    smooth = explain(cnn, images, method="smoothgrad", samples=4)
    assert smooth.shape == (3, 10, 10) and not np.allclose(smooth, sal)


def test_mistakes_name_the_valid_choices(cnn: keras.Model, images: np.ndarray) -> None:
    with pytest.raises(layertap.BadSpecError, match="unknown method 'gradcam3'; valid: gradcam"):
        explain(cnn, images, "backbone/conv2", method="gradcam3")
    with pytest.raises(layertap.BadSpecError, match="needs layer="):
        explain(cnn, images)
    with pytest.raises(layertap.BadSpecError, match="leave layer out"):
        explain(cnn, images, "backbone/conv2", method="saliency")
    with pytest.raises(layertap.BadSpecError, match="spatial layer"):
        explain(cnn, images, "head")
    assert set(METHODS) >= {"gradcam", "gradcam++", "layercam", "scorecam", "saliency"}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the oracle is a tf tape")
def test_gradcam_on_a_nested_mobilenet_equals_a_hand_written_tape(
    rng: np.random.Generator,
) -> None:
    import tensorflow as tf

    backbone = keras.applications.MobileNetV2(
        input_shape=(64, 64, 3), include_top=False, weights=None, alpha=0.35
    )
    model = keras.Sequential(
        [keras.Input((64, 64, 3)), backbone, layers.GlobalAveragePooling2D(),
         layers.Dense(5, activation="softmax", name="head")]
    )  # fmt: skip
    x = rng.uniform(-1, 1, size=(2, 64, 64, 3)).astype("float32")
    name = "block_13_expand_relu"
    got = explain(model, x, f"{backbone.name}/{name}", upsample=False, target=[2, 4])
    # By hand: split the backbone at the layer, finish the forward pass, take the logit.
    split = keras.Model(backbone.input, [backbone.get_layer(name).output, backbone.output])
    head = model.get_layer("head")
    with tf.GradientTape() as tape:
        conv, features = split(x)
        pooled = tf.reduce_mean(features, axis=(1, 2))
        logits = tf.matmul(pooled, head.kernel) + head.bias
        score = tf.reduce_sum(tf.gather(logits, [2, 4], axis=1, batch_dims=0) * np.eye(2))
    grads = tape.gradient(score, conv).numpy()
    weights = grads.mean(axis=(1, 2))
    for i in range(2):
        cam = np.maximum(np.einsum("hwc,c->hw", conv.numpy()[i], weights[i]), 0)
        np.testing.assert_allclose(got[i], minmax(cam), rtol=1e-4, atol=1e-4)


def test_every_backend_gives_the_tensorflow_maps_of_a_saved_nested_mobilenet(
    tmp_path: object,
) -> None:
    """The maps in tests/golden/explain.npz were written on TensorFlow (see
    tests/golden/explain_runs.py); the same saved model gives them on this backend."""
    from pathlib import Path

    from tests.golden.explain_runs import GOLDEN, compute

    golden = np.load(GOLDEN)
    got = compute(Path(str(tmp_path)))
    assert sorted(got) == sorted(golden.files)
    for method, maps in got.items():
        # Grad-CAM++'s alphas divide by 2 g^2 + sum(A) g^3, which nears 0 at some positions:
        # float32 differences between backends' gradients (~1e-6) grow to ~1e-2 there
        # (measured: JAX 8.5e-3, torch 8.6e-4); every other map agrees to ~1e-6.
        tol = 2e-2 if method == "gradcam++" else 2e-5
        np.testing.assert_allclose(maps, golden[method], rtol=0, atol=tol, err_msg=method)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf-keras-vis runs on TF only")
# tf-keras-vis 0.8.7 imports scipy's old zoom, and feeds Keras 3 a list for one input.
@pytest.mark.filterwarnings("ignore:Please import `zoom`:DeprecationWarning")
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "saliency"])
def test_tf_keras_vis_gives_the_same_maps_on_a_flat_model(
    method: str, rng: np.random.Generator
) -> None:
    """The peer, where it runs: a flat Functional model (tf-keras-vis fails on nested ones)."""
    pytest.importorskip("tf_keras_vis", reason="tf-keras-vis is an optional test dependency")
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    x = keras.Input((12, 12, 3))
    h = layers.Conv2D(6, 3, activation="tanh", name="conv1")(x)
    h = layers.Conv2D(5, 3, activation="tanh", name="conv2")(h)
    out = layers.Dense(4, activation="softmax", name="head")(layers.GlobalAveragePooling2D()(h))
    model = keras.Model(x, out)
    images = rng.uniform(-1, 1, size=(3, 12, 12, 3)).astype("float32")
    target = [1, 3, 0]
    score = CategoricalScore(target)
    if method == "saliency":
        with warnings.catch_warnings():  # "The structure of `inputs` doesn't match"
            warnings.simplefilter("ignore", UserWarning)
            theirs = Saliency(model, model_modifier=ReplaceToLinear())(score, images)
        ours = explain(model, images, method="saliency", target=target)
    else:
        peer = (Gradcam if method == "gradcam" else GradcamPlusPlus)(
            model, model_modifier=ReplaceToLinear()
        )
        theirs = peer(score, images, penultimate_layer="conv2", expand_cam=False)
        ours = explain(model, images, "conv2", method=method, target=target, upsample=False)
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=0, atol=1e-4)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf-keras-vis runs on TF only")
@pytest.mark.filterwarnings("ignore:Please import `zoom`:DeprecationWarning")
def test_tf_keras_vis_gives_the_same_gradcam_at_a_mobilenet_relu_when_it_does_not_seek_a_conv(
    rng: np.random.Generator,
) -> None:
    """At a ReLU, tf-keras-vis's Gradcam explains the nearest Conv2D before it unless told
    not to seek one: that was the benchmark's disagreement (max |diff| 1.0)."""
    pytest.importorskip("tf_keras_vis", reason="tf-keras-vis is an optional test dependency")
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    model = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), classes=10)
    # Keras's default initialisation leaves this net's logits at ~1e-12 and its maps float32
    # noise; seeded O(1) weights as in benchmarks/bench_explain.py.
    seeded = np.random.default_rng(11)
    for w in model.weights:
        shape = tuple(w.shape)
        if "variance" in w.path or "gamma" in w.path:
            value = seeded.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            fan_in = shape[0] * shape[1] if "depthwise" in w.path else int(np.prod(shape[:-1]))
            value = seeded.normal(0, np.sqrt(2.0 / fan_in), shape)
        else:
            value = seeded.normal(0, 0.1, shape)
        w.assign(value.astype("float32"))
    x = rng.uniform(-1, 1, size=(3, 64, 64, 3)).astype("float32")
    target, name = [3, 7, 0], "block_13_expand_relu"
    # Both at the layer's resolution (4x4), each map min-max normalised per image.
    ours = np.asarray(explain(model, x, name, target=target, upsample=False))
    peer = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)

    def theirs(seek: bool) -> np.ndarray:
        return np.asarray(
            peer(CategoricalScore(target), x, penultimate_layer=name,
                 seek_penultimate_conv_layer=seek, expand_cam=False, normalize_cam=True)
        )  # fmt: skip

    assert ours.shape == (3, 4, 4)
    # Measured 3.6e-6 (float32; tf-keras-vis divides by max - min + 1e-7).
    np.testing.assert_allclose(ours, theirs(seek=False), rtol=0, atol=1e-4)
    # Its default seeks block_13_expand (the Conv2D before the BatchNorm and the ReLU).
    assert np.abs(ours - theirs(seek=True)).max() > 0.5


def test_scorecam_runs_forward_passes_only(
    cnn: keras.Model, images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_backward(*args: object, **kwargs: object) -> None:
        raise AssertionError("Score-CAM took a gradient")

    monkeypatch.setattr(layertap.Extractor, "gradients", no_backward)
    got = explain(cnn, images, "backbone/conv2", method="scorecam", target=[0, 1, 2])
    assert got.shape == (3, 10, 10) and got.info["targets"] == [0, 1, 2]
    probs = to_numpy(cnn(images))
    np.testing.assert_allclose(got.info["scores"], probs[np.arange(3), [0, 1, 2]], rtol=1e-5)
    with pytest.raises(layertap.BadSpecError, match="scorecam target"):
        explain(cnn, images, "backbone/conv2", method="scorecam", target=lambda t: t)
