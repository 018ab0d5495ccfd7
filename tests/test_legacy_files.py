"""Legacy files: tf.keras 2 .h5 (nested backbones), SavedModel via tf_keras, custom objects.

Every file here is written by the tests through the ``tf_keras`` package (Keras 2), and
every value is checked against tf.keras 2's own predictions. tf_keras is TensorFlow, so
these tests run under any KERAS_BACKEND; without tf_keras the file is skipped.
"""

from __future__ import annotations

import hashlib
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest

import layertap
from layertap.graph.load import load_custom_objects
from tests.conftest import Split, assert_close
from tests.test_legacy_matrix import randomize_batchnorm

tf_keras: Any = pytest.importorskip("tf_keras")

pytestmark = pytest.mark.filterwarnings(
    # tf_keras's own advice when a test writes the legacy format on purpose
    "ignore:You are saving your model as an HDF5 file:UserWarning"
)

SIZE = 16


def tiny_backbone(name: str = "backbone") -> Any:
    """A MobileNet-like tf.keras 2 block: BatchNormalization, DepthwiseConv2D, a residual add."""
    k = tf_keras.layers
    x = tf_keras.Input((SIZE, SIZE, 3))
    h = k.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    h = k.ReLU(6.0, name="stem_relu")(k.BatchNormalization(name="stem_bn")(h))
    d = k.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    d = k.ReLU(6.0, name="dw_relu")(k.BatchNormalization(name="dw_bn")(d))
    model = tf_keras.Model(x, k.Add(name="add")([h, d]), name=name)
    return randomize_batchnorm(model)  # non-trivial statistics: inference mode matters


def with_head(backbone: Any, kind: str) -> Any:
    """The backbone nested in a Sequential head or called (training=False) in a Functional one."""
    k = tf_keras.layers
    shape = tuple(backbone.input_shape[1:])
    if kind == "sequential":
        return tf_keras.Sequential(
            [
                tf_keras.Input(shape),
                backbone,
                k.GlobalAveragePooling2D(name="gap"),
                k.Dense(3, name="head"),
            ],
            name="clf",
        )
    x = tf_keras.Input(shape)
    h = k.GlobalAveragePooling2D(name="gap")(backbone(x, training=False))
    return tf_keras.Model(x, k.Dense(3, name="head")(h), name="clf")


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def images(n: int = 2, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(0).random((n, size, size, 3), dtype="float32")


def check_against_tf_keras(loaded: keras.Model, legacy: Any, inner: str, x: np.ndarray) -> None:
    """Predictions and a tap inside the nested backbone equal tf.keras 2's to 1e-5."""
    assert_close(loaded.predict(x, verbose=0), legacy.predict(x, verbose=0))
    backbone = legacy.get_layer("backbone")
    oracle = tf_keras.Model(backbone.input, backbone.get_layer(inner).output)
    run = layertap.Extractor(loaded, [f"backbone/{inner}", "head"])(x)
    assert_close(run[f"backbone/{inner}"], oracle.predict(x, verbose=0))
    assert_close(run["head"], legacy.predict(x, verbose=0))


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_tf_keras_h5_with_nested_backbone(tmp_path: Path, kind: str) -> None:
    legacy = with_head(tiny_backbone(), kind)
    path = tmp_path / "legacy.h5"
    legacy.save(path, save_format="h5")
    before = fingerprint(path)
    loaded = layertap.load_model(path)
    assert fingerprint(path) == before  # the repair ran on a copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy.h5"]
    assert isinstance(loaded.get_layer("backbone"), keras.Model)
    check_against_tf_keras(loaded, legacy, "dw_relu", images())


def test_tf_keras_h5_mobilenet_v2_in_functional_head(tmp_path: Path) -> None:
    backbone = tf_keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35
    )
    backbone._name = "backbone"  # a short, stable path for the tap
    legacy = with_head(backbone, "functional")
    path = tmp_path / "mobilenet.h5"
    legacy.save(path, save_format="h5")
    before = fingerprint(path)
    loaded = layertap.load_model(path)
    assert fingerprint(path) == before
    check_against_tf_keras(loaded, legacy, "block_3_expand_relu", images(size=32))


def test_savedmodel_through_tf_keras(tmp_path: Path) -> None:
    legacy = with_head(tiny_backbone(), "functional")
    path = tmp_path / "saved"
    legacy.save(path, save_format="tf")
    loaded = layertap.load_model(path)
    assert isinstance(loaded, keras.Model)
    check_against_tf_keras(loaded, legacy, "stem_bn", images())


def test_cli_takes_a_savedmodel_directory(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from layertap.cli import cli

    legacy = with_head(tiny_backbone(), "functional")
    path = tmp_path / "saved"
    legacy.save(path, save_format="tf")
    listed = CliRunner().invoke(cli, ["layers", str(path), "--max-depth", "1"])
    assert listed.exit_code == 0, listed.output
    assert "stem_bn" in listed.output and "head" in listed.output
    x = images(3)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "feats.h5"
    args = ["extract", str(path), str(tmp_path / "x.npy"), "-l", "bn=backbone/stem_bn"]
    result = CliRunner().invoke(cli, [*args, "-l", "head", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    backbone = legacy.get_layer("backbone")
    oracle = tf_keras.Model(backbone.input, backbone.get_layer("stem_bn").output)
    with h5py.File(out) as f:
        assert_close(f["head"][:], legacy.predict(x, verbose=0))
        assert_close(f["bn"][:], oracle.predict(x, verbose=0))


def test_savedmodel_needs_tf_keras(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tf_keras", None)  # import tf_keras -> ImportError
    with pytest.raises(
        layertap.MissingDependencyError,
        match=r"SavedModel directory.*'tf_keras'.*layertap\[legacy\]",
    ):
        layertap.load_model(tmp_path / "saved")


def test_savedmodel_without_keras_metadata(tmp_path: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(tf.Module(), str(tmp_path / "plain"))
    with pytest.raises(layertap.ModelLoadError, match="no keras_metadata.pb"):
        layertap.load_model(tmp_path / "plain")


def test_directory_that_is_not_a_savedmodel(tmp_path: Path) -> None:
    with pytest.raises(layertap.ModelLoadError, match="not a SavedModel"):
        layertap.load_model(tmp_path)


def marking_lambda(mark: Path, module: Any) -> Any:
    """A Lambda layer whose code leaves ``mark`` on disk whenever it runs."""
    body = f"lambda t: (open({str(mark)!r}, 'w').close(), t)[1]"
    return module.layers.Lambda(eval(body), name="sneaky")  # noqa: S307


@pytest.mark.parametrize("writer", ["tf_keras h5", "keras h5", "tf_keras savedmodel"])
def test_safe_mode_refuses_lambda_code(tmp_path: Path, writer: str) -> None:
    mark = tmp_path / "mark.txt"
    module = keras if writer == "keras h5" else tf_keras
    x = module.Input((2,))
    model = module.Model(x, marking_lambda(mark, module)(x))
    path = tmp_path / ("saved" if "savedmodel" in writer else "lambda.h5")
    if "savedmodel" in writer:
        model.save(path, save_format="tf")
    elif module is tf_keras:
        model.save(path, save_format="h5")
    else:
        model.save(path)
    mark.unlink()  # building and saving ran the lambda; loading must not
    with pytest.raises(layertap.ModelLoadError, match="safe_mode=False") as info:
        layertap.load_model(path)
    assert "'sneaky'" in str(info.value) and "run any program" in str(info.value)
    assert not mark.exists()
    if writer != "tf_keras savedmodel":  # the explicit opt-in loads it (and runs the code)
        layertap.load_model(path, safe_mode=False)
        assert mark.exists()


CUSTOM_FILE = """
import keras


class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2 * x


class NotKeras:
    pass
"""


def test_custom_objects_from_a_python_file(tmp_path: Path) -> None:
    source = tmp_path / "my_layers.py"
    source.write_text(textwrap.dedent(CUSTOM_FILE))
    objects = load_custom_objects(str(source))
    assert sorted(objects) == ["Doubler"]
    x = keras.Input((3,))
    model = keras.Model(x, objects["Doubler"](name="double")(x))
    model.save(tmp_path / "custom.keras")
    with pytest.raises(layertap.ModelLoadError) as info:
        layertap.load_model(tmp_path / "custom.keras")
    message = str(info.value)
    assert "'Doubler'" in message
    assert "custom_objects={'Doubler': cls}" in message and "--custom-objects" in message
    loaded = layertap.load_model(tmp_path / "custom.keras", custom_objects=objects)
    data = np.ones((1, 3), dtype="float32")
    assert_close(loaded.predict(data, verbose=0), 2 * data)


def test_custom_objects_from_module_attr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_custom_objects("tests.conftest:Split") == {
        "Split": Split,
        "layertap_tests>Split": Split,
    }
    (tmp_path / "lt_objs_mod.py").write_text(
        "from tests.conftest import Split\nLIST = [Split]\nDICT = {'Split': Split}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lt_objs_mod", raising=False)
    assert load_custom_objects("lt_objs_mod:LIST")["Split"] is Split
    assert load_custom_objects("lt_objs_mod:DICT") == {"Split": Split}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_lt", "cannot import module 'no_such_module_lt'"),
        ("tests.conftest:Nope", "has no attribute 'Nope'"),
        ("tests.conftest:os", "is not a class or function"),
        ("json", "defines no Keras classes"),
        ("a b", "is not PATH.py, module or module:attr"),
        ("", "is empty"),
    ],
)
def test_custom_objects_errors(spec: str, message: str) -> None:
    with pytest.raises(layertap.ModelLoadError, match=re.escape(message)) as info:
        load_custom_objects(spec)
    assert repr(spec) in str(info.value)


def test_custom_objects_file_errors(tmp_path: Path) -> None:
    with pytest.raises(layertap.ModelLoadError, match="does not exist"):
        load_custom_objects(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(layertap.ModelLoadError, match="failed to import: RuntimeError: boom"):
        load_custom_objects(str(broken))


@pytest.mark.parametrize("inner_kind", ["sequential", "functional"])
def test_tf_keras_h5_nested_model_as_the_output(tmp_path: Path, inner_kind: str) -> None:
    """A nested model named in ``output_layers`` (not only in another layer's inputs)."""
    k = tf_keras.layers
    if inner_kind == "sequential":
        inner = tf_keras.Sequential([tf_keras.Input((4,)), k.Dense(3, name="d")], name="inner")
    else:
        xi = tf_keras.Input((4,))
        inner = tf_keras.Model(xi, k.Dense(3, name="d")(xi), name="inner")
    x = tf_keras.Input((4,))
    legacy = tf_keras.Model(x, inner(k.Dense(4, name="pre")(x)), name="outer")
    legacy.save(tmp_path / "out.h5", save_format="h5")
    loaded = layertap.load_model(tmp_path / "out.h5")
    data = np.random.default_rng(0).random((2, 4), dtype="float32")
    assert_close(loaded.predict(data, verbose=0), legacy.predict(data, verbose=0))
    run = layertap.Extractor(loaded, ["inner/d"])(data)
    assert_close(run["inner/d"], legacy.predict(data, verbose=0))
