"""tf.keras 2 saving patterns, as a matrix: each written by ``tf_keras`` as .h5 and SavedModel.

Every pattern is a tiny tf.keras 2 model in the shape its users write it (a nested
Sequential given ``input_shape=``, a backbone from ``tf_keras.applications`` under a head,
a sub-model called twice, ...). The files are written once per module; each test loads
one through ``layertap.load_model`` and checks its taps, inside the nested models and at
the top, against tf.keras 2's own truncated models (``tf_keras.Model(inner_input,
layer.output)``) to 1e-5. tf_keras is TensorFlow, so, as in test_legacy_files.py, these
tests run under any KERAS_BACKEND; without tf_keras the file is skipped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest

import layertap
from tests.conftest import assert_close

tf_keras: Any = pytest.importorskip("tf_keras")

pytestmark = pytest.mark.filterwarnings(
    # tf_keras's own advice when a test writes the legacy format on purpose
    "ignore:You are saving your model as an HDF5 file:UserWarning"
)

FORMATS = ("h5", "savedmodel")


# --- tf.keras 2's own values ----------------------------------------------------------------


def calls_in(container: Any, sub: Any) -> list[Any]:
    """Truncated tf_keras models giving what ``container`` feeds ``sub``, one per call.

    A nested model's inbound nodes include its own graph (node 0), which the container's
    inputs do not reach, except in a Sequential that starts with it and reuses that graph:
    the calls are the nodes the container's inputs reach, in order.
    """
    feeds = []
    for node in range(len(sub.inbound_nodes)):
        try:
            feeds.append(tf_keras.Model(container.inputs, sub.get_input_at(node)))
        except ValueError:  # "Graph disconnected": a node of another graph
            continue
    return feeds


def tf_keras_value(model: Any, path: str, x: Any) -> np.ndarray:
    """tf.keras 2's value at a layertap path through nested graph models.

    One truncated tf_keras model per level, from the container's inputs to what it feeds
    the sub-model at that call (``@k``), then from the innermost sub-model's inputs to the
    leaf layer's output.
    """
    container, value = model, x
    *subs, leaf = path.split("/")
    for segment in subs:
        name, _, call = segment.partition("@")
        sub = container.get_layer(name)
        value = calls_in(container, sub)[int(call or 0)].predict(value, verbose=0)
        container = sub
    layer = container.get_layer(leaf)
    return np.asarray(tf_keras.Model(container.inputs, layer.output).predict(value, verbose=0))


def randomize_batchnorm(model: Any, seed: int = 1) -> Any:
    """Non-trivial BatchNormalization statistics everywhere, so inference mode matters."""
    rng = np.random.default_rng(seed)
    for layer in model.submodules:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.1, mean.shape),
                    rng.uniform(0.5, 2.0, var.shape),
                ]
            )
    return model


def batch(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((2, *shape), dtype="float32")


# --- the patterns ---------------------------------------------------------------------------

Oracle = Callable[[Any, Any], np.ndarray]


@dataclass(frozen=True)
class Pattern:
    """A tf.keras 2 model, an input batch, and the taps to check (spec -> its oracle).

    A tap whose oracle is ``None`` is a graph path: :func:`tf_keras_value` computes it.
    ``nested`` names the top-level layers that must load as Keras 3 models.
    """

    build: Callable[[], Any]
    inputs: Callable[[], Any]
    taps: dict[str, Oracle | None]
    nested: tuple[str, ...] = ()


def _seq_input_shape() -> Any:
    """The Keras 2 tutorial: a nested Sequential whose first layer takes ``input_shape=``."""
    k = tf_keras.layers
    inner = tf_keras.Sequential(
        [
            k.Conv2D(4, 3, input_shape=(8, 8, 3), name="conv"),
            k.BatchNormalization(name="bn"),
            k.ReLU(name="relu"),
        ],
        name="inner_seq",
    )
    head = [k.GlobalAveragePooling2D(name="gap"), k.Dense(3, name="head")]
    return tf_keras.Sequential([inner, *head], name="clf")


def _seq_batch_input_shape() -> Any:
    """``batch_input_shape=`` on a nested Sequential's first layer, after a stem layer."""
    k = tf_keras.layers
    inner = tf_keras.Sequential(
        [
            k.Conv2D(4, 3, padding="same", batch_input_shape=(None, 4, 4, 5), name="conv"),
            k.ReLU(name="relu"),
            k.MaxPooling2D(name="pool"),
        ],
        name="inner_seq",
    )
    x = tf_keras.Input((8, 8, 3), name="image")
    h = inner(k.Conv2D(5, 3, strides=2, padding="same", name="stem")(x))
    return tf_keras.Model(x, k.Dense(3, name="head")(k.Flatten(name="flat")(h)), name="clf")


def _functional_named_input() -> Any:
    """A nested Functional built from a named ``Input``, in a Functional head."""
    k = tf_keras.layers
    xi = tf_keras.Input((8, 8, 3), name="block_image")
    h = k.Conv2D(4, 3, padding="same", name="conv")(xi)
    h = k.ReLU(name="relu")(k.BatchNormalization(name="bn")(h))
    block = tf_keras.Model(
        xi, k.Add(name="add")([h, k.Conv2D(4, 1, name="skip")(xi)]), name="block"
    )
    x = tf_keras.Input((8, 8, 3), name="image")
    h = k.GlobalAveragePooling2D(name="gap")(block(x))
    return tf_keras.Model(x, k.Dense(3, name="head")(h), name="clf")


def _time_distributed() -> Any:
    """A per-frame Sequential inside ``TimeDistributed``, over clips of 3 frames."""
    k = tf_keras.layers
    frame = tf_keras.Sequential(
        [k.Conv2D(4, 3, input_shape=(8, 8, 3), name="conv"), k.GlobalAveragePooling2D(name="pool")],
        name="frame_seq",
    )
    return tf_keras.Sequential(
        [
            k.TimeDistributed(frame, input_shape=(3, 8, 8, 3), name="td"),
            k.Flatten(name="flat"),
            k.Dense(3, name="head"),
        ],
        name="clips",
    )


def _frame_tap(leaf: str, t: int) -> Oracle:
    """tf.keras 2's value of ``leaf`` in the TimeDistributed Sequential, at frame ``t``."""
    return lambda legacy, x: tf_keras_value(legacy.get_layer("td").layer, leaf, x[:, t])


def _shared_submodel() -> Any:
    """One encoder (a Sequential with ``input_shape=``) called on two inputs."""
    k = tf_keras.layers
    encoder = tf_keras.Sequential(
        [
            k.Dense(5, input_shape=(6,), name="fc"),
            k.BatchNormalization(name="bn"),
            k.ReLU(name="relu"),
        ],
        name="encoder",
    )
    left = tf_keras.Input((6,), name="left")
    right = tf_keras.Input((6,), name="right")
    diff = k.Subtract(name="diff")([encoder(left), encoder(right)])
    return tf_keras.Model([left, right], k.Dense(1, name="head")(diff), name="siamese")


def _application_base() -> Any:
    """A ``tf_keras.applications`` base (no top, no weights) under a Sequential head.

    MobileNet (v1): DepthwiseConv2D and BatchNormalization as in MobileNetV2, half its
    layers, so half the time to write a SavedModel (test_legacy_files.py has a MobileNetV2).
    """
    k = tf_keras.layers
    base = tf_keras.applications.MobileNet(
        input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.25
    )
    return tf_keras.Sequential(
        [
            base,
            k.GlobalAveragePooling2D(name="gap"),
            k.Dropout(0.3, name="drop"),
            k.Dense(3, name="head"),
        ],
        name="clf",
    )


def _batchnorm_dropout() -> Any:
    """BatchNormalization and Dropout, in a nested Sequential and at the top."""
    k = tf_keras.layers
    mlp = tf_keras.Sequential(
        [
            k.Dense(8, input_shape=(6,), name="fc1"),
            k.BatchNormalization(name="bn"),
            k.Dropout(0.5, name="drop"),
            k.Dense(4, name="fc2"),
        ],
        name="mlp",
    )
    x = tf_keras.Input((6,), name="features")
    h = k.Dropout(0.5, name="drop_out")(k.BatchNormalization(name="bn_out")(mlp(x)))
    return tf_keras.Model(x, k.Dense(2, name="head")(h), name="clf")


def _augmentation() -> Any:
    """The tf.keras 2 tutorial's data augmentation Sequential in front of a small CNN."""
    k = tf_keras.layers
    augment = tf_keras.Sequential(
        [
            k.RandomFlip("horizontal", input_shape=(8, 8, 3), name="flip"),
            k.RandomRotation(0.1, name="rot"),
            k.RandomZoom(0.1, name="zoom"),
        ],
        name="augment",
    )
    head = [k.Rescaling(1 / 255, name="scale"), k.Conv2D(4, 3, name="conv")]
    return tf_keras.Sequential(
        [augment, *head, k.GlobalAveragePooling2D(name="gap"), k.Dense(3, name="head")],
        name="clf",
    )


PATTERNS: dict[str, Pattern] = {
    "seq_input_shape": Pattern(
        _seq_input_shape,
        lambda: batch(8, 8, 3),
        {"inner_seq/conv": None, "inner_seq/bn": None, "gap": None, "head": None},
        nested=("inner_seq",),
    ),
    "seq_batch_input_shape": Pattern(
        _seq_batch_input_shape,
        lambda: batch(8, 8, 3),
        {"stem": None, "inner_seq/conv": None, "inner_seq/pool": None, "head": None},
        nested=("inner_seq",),
    ),
    "functional_named_input": Pattern(
        _functional_named_input,
        lambda: batch(8, 8, 3),
        {"block/bn": None, "block/add": None, "head": None},
        nested=("block",),
    ),
    "time_distributed_seq": Pattern(
        _time_distributed,
        lambda: batch(3, 8, 8, 3),
        {
            "td/frame_seq@0/conv": _frame_tap("conv", 0),
            "td/frame_seq@2/pool": _frame_tap("pool", 2),
            "td": None,
            "head": None,
        },
    ),
    "shared_submodel": Pattern(
        _shared_submodel,
        lambda: [batch(6), batch(6, seed=1)],
        {"encoder@0/bn": None, "encoder@1/bn": None, "encoder@1/relu": None, "head": None},
        nested=("encoder",),
    ),
    "application_base": Pattern(
        _application_base,
        lambda: batch(32, 32, 3),
        {
            "mobilenet_0.25_32/conv_pw_3_relu": None,
            "mobilenet_0.25_32/conv_pw_13_relu": None,
            "drop": None,
            "head": None,
        },
        nested=("mobilenet_0.25_32",),
    ),
    "batchnorm_dropout": Pattern(
        _batchnorm_dropout,
        lambda: batch(6),
        {"mlp/bn": None, "mlp/drop": None, "drop_out": None, "head": None},
        nested=("mlp",),
    ),
    "augmentation_seq": Pattern(
        _augmentation,
        lambda: batch(8, 8, 3),
        {"augment/rot": None, "augment/zoom": None, "conv": None, "head": None},
        nested=("augment",),
    ),
}


# --- files, written once per module --------------------------------------------------------


@dataclass
class Written:
    """One pattern's files, its input batch and tf.keras 2's values at its taps."""

    name: str
    files: dict[str, Path]
    x: Any
    expected: dict[str, np.ndarray]


@pytest.fixture(scope="module", params=list(PATTERNS))
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Written:
    name: str = request.param
    pattern = PATTERNS[name]
    tf_keras.utils.set_random_seed(0)
    legacy = randomize_batchnorm(pattern.build())
    folder = tmp_path_factory.mktemp(name)
    files = {"h5": folder / f"{name}.h5", "savedmodel": folder / f"{name}_savedmodel"}
    legacy.save(files["h5"], save_format="h5")
    legacy.save(files["savedmodel"], save_format="tf")
    x = pattern.inputs()
    expected = {
        spec: (tf_keras_value(legacy, spec, x) if oracle is None else oracle(legacy, x))
        for spec, oracle in pattern.taps.items()
    }
    return Written(name, files, x, expected)


def fingerprint(path: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of a file, or of every file under a directory."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {
        str(p.relative_to(path.parent)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in files
    }


def check_taps(loaded: keras.Model, written: Written) -> None:
    """Every tap equals tf.keras 2's; the last, ``head``, is the model's output."""
    run = layertap.Extractor(loaded, list(written.expected))(written.x)
    assert sorted(run) == sorted(written.expected)
    for spec, expected in written.expected.items():
        assert_close(run[spec], expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tf_keras_2_pattern_loads_and_taps_equal_tf_keras(written: Written, fmt: str) -> None:
    path = written.files[fmt]
    before = fingerprint(path)
    loaded = layertap.load_model(path)
    assert fingerprint(path) == before  # the repairs ran on a copy
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        p.name for p in written.files.values()
    )
    for name in PATTERNS[written.name].nested:
        assert isinstance(loaded.get_layer(name), keras.Model), name
    check_taps(loaded, written)


# --- the layout of tf.keras 2.0-2.3 --------------------------------------------------------


def as_tf2_3_layout(config: Any) -> int:
    """Rewrite a config as tf.keras 2.0-2.3 wrote Sequentials; return how many changed.

    Those versions left a Sequential's InputLayer out of its config and put the input
    shape on the first remaining layer (``batch_input_shape``), nested models included.
    """
    changed = 0
    if isinstance(config, dict):
        if config.get("class_name") == "Sequential":
            layers = config["config"]["layers"]
            if len(layers) > 1 and layers[0]["class_name"] == "InputLayer":
                shape = layers.pop(0)["config"]["batch_input_shape"]
                layers[0]["config"].setdefault("batch_input_shape", shape)
                changed += 1
        changed += sum(as_tf2_3_layout(value) for value in config.values())
    elif isinstance(config, list):
        changed += sum(as_tf2_3_layout(value) for value in config)
    return changed


#: The patterns that hold a Sequential (the others have no InputLayer to leave out).
WITH_SEQUENTIAL = [name for name in PATTERNS if name != "functional_named_input"]


@pytest.mark.parametrize("written", WITH_SEQUENTIAL, indirect=True)
def test_tf_keras_2_3_layout_without_input_layers(written: Written, tmp_path: Path) -> None:
    """The .h5 file as tf.keras 2.0-2.3 would have written it: no InputLayer in Sequentials."""
    old = tmp_path / "old_layout.h5"
    shutil.copyfile(written.files["h5"], old)
    with h5py.File(old, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        assert as_tf2_3_layout(config) > 0
        f.attrs["model_config"] = json.dumps(config)
    check_taps(layertap.load_model(old), written)


# --- what Keras 3 refuses -------------------------------------------------------------------


def _lstm_block() -> Any:
    k = tf_keras.layers
    return tf_keras.Sequential([k.LSTM(3, input_shape=(5, 4), name="lstm")], name="inner_seq")


def _conv_transpose_block() -> Any:
    k = tf_keras.layers
    up = k.Conv2DTranspose(2, 2, strides=2, input_shape=(4, 4, 3), name="up")
    return tf_keras.Sequential([up], name="inner_seq")


@pytest.mark.parametrize(
    ("block", "fmt", "refused"),
    [
        ("lstm", "h5", "time_major"),
        ("up", "h5", "groups"),
        ("up", "savedmodel", "groups"),
    ],
)
def test_layer_keras_3_refuses_names_the_layer_and_why(
    tmp_path: Path, block: str, fmt: str, refused: str
) -> None:
    """A tf.keras 2 argument no repair covers (Keras 3.15): the error names layer and cause."""
    inner = _lstm_block() if block == "lstm" else _conv_transpose_block()
    legacy = tf_keras.Sequential([inner, tf_keras.layers.Flatten(name="flat")], name="outer")
    path = tmp_path / ("model.h5" if fmt == "h5" else "saved")
    legacy.save(path, save_format="tf" if fmt == "savedmodel" else "h5")
    with pytest.raises(layertap.ModelLoadError) as info:
        layertap.load_model(path)
    message = str(info.value)
    cls = type(inner.layers[0]).__name__
    assert repr(str(path)) in message
    assert f"layer {block!r} ({cls}) cannot be rebuilt by Keras 3" in message
    assert repr(refused) in message
