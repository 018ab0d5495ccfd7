"""keras-hub *task* presets (``task.save_to_preset``): layertap loads the task, head and
all, with its backbone nested in it and the task's own preprocessor; texts and image
files go through that preprocessor. Oracles: the keras-hub task itself (``predict`` on
raw inputs, or the task called on its preprocessor's output) and the backbone called by
hand. The presets are written offline by ``tests/hub_presets.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

keras_hub = pytest.importorskip("keras_hub")

import layertap  # noqa: E402
from layertap.cli import cli  # noqa: E402
from layertap.graph.preset import is_preset, is_task_preset, load_preset  # noqa: E402
from tests.conftest import assert_close, to_numpy  # noqa: E402
from tests.hub_presets import (  # noqa: E402
    bert_classifier_preset,
    bert_preset,
    resnet_classifier_preset,
    write_images,
)

TEXTS = ["the cat sat on the mat", "a dog", "my big fish swam in blue water"]
INNER = "transformer_layer_1"
#: Not square and of different sizes: the converter resizes each to 20x20.
SIZES = [(40, 24), (17, 31), (20, 20)]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    keras.utils.set_random_seed(0)
    directory = tmp_path_factory.mktemp("bert_classifier")
    task, preprocessor = bert_classifier_preset(directory)
    return directory, task, preprocessor


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    keras.utils.set_random_seed(0)
    directory = tmp_path_factory.mktemp("resnet_classifier")
    task, converter = resnet_classifier_preset(directory)
    return directory, task, converter


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("images"), SIZES)


def inner(backbone: Any, layer: str, x: Any) -> np.ndarray:
    """The backbone called by hand, cut at ``layer``."""
    return to_numpy(keras.Model(backbone.input, backbone.get_layer(layer).output)(x))


def pixels(paths: list[Path]) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in paths]


# --- text classifier -----------------------------------------------------------------------


def test_a_task_preset_loads_as_the_task_with_its_preprocessor(
    bert: tuple[Path, Any, Any],
) -> None:
    directory, task, _ = bert
    files = {p.name for p in directory.iterdir() if p.is_file()}
    assert {"task.json", "task.weights.h5", "config.json", "model.weights.h5"} <= files
    assert is_preset(directory) and is_task_preset(directory) and is_task_preset(str(directory))
    preset = load_preset(directory)
    assert (preset.model_kind, preset.kind, preset.sequence_length) == ("task", "text", 16)
    assert type(preset.model) is type(task) and preset.model.name == task.name
    assert preset.backbone is preset.model.backbone and preset.backbone.name == "bert_backbone"
    assert type(preset.preprocessor).__name__ == "BertTextClassifierPreprocessor"
    assert type(layertap.load_model(directory)).__name__ == "BertTextClassifier"
    paths = [info.path for info in layertap.list_layers(preset.model)]
    assert f"bert_backbone/{INNER}" in paths and "logits" in paths
    assert "bert_backbone/token_embedding" in paths


def test_texts_tap_the_head_and_inside_the_backbone(bert: tuple[Path, Any, Any]) -> None:
    directory, task, preprocessor = bert
    preset = load_preset(directory)
    ex = layertap.Extractor(preset, {"y": "logits", "h": f"bert_backbone/{INNER}"})
    got = ex(TEXTS)
    x = preprocessor(TEXTS)
    assert_close(np.asarray(got["y"]), task.predict(TEXTS, verbose=0))  # keras-hub's own path
    assert_close(np.asarray(got["y"]), task(x))
    assert np.asarray(got["y"]).shape == (3, 3)
    assert_close(np.asarray(got["h"]), inner(task.backbone, INNER, x))
    features = layertap.extract(str(directory), TEXTS, {"y": "logits"})
    assert_close(features["y"], task(x))


def test_cli_extract_of_a_text_file_with_a_task_preset(
    bert: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    directory, task, preprocessor = bert
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "out.h5"
    args = ["extract", str(directory), str(lines), "-l", "y=logits", "-o", str(out)]
    args += ["-l", f"cls=bert_backbone/{INNER}", "--pool", "cls=first", "-b", "2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    x = preprocessor(TEXTS)
    with h5py.File(out) as f:
        assert_close(f["y"][:], task(x))
        assert_close(f["cls"][:], inner(task.backbone, INNER, x)[:, 0])


def test_a_task_preset_without_its_head_weights_is_refused(
    bert: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bert[0], broken)
    (broken / "task.weights.h5").unlink()
    with pytest.raises(layertap.ModelLoadError, match=r"broken.*no task.weights.h5.*random"):
        layertap.load_model(broken)


def test_a_backbone_preset_still_loads_its_backbone(tmp_path: Path) -> None:
    backbone, _ = bert_preset(tmp_path)
    assert is_preset(tmp_path) and not is_task_preset(tmp_path)
    preset = load_preset(tmp_path)
    assert (preset.model_kind, preset.kind) == ("backbone", "text")
    assert type(preset.model) is type(backbone) and preset.backbone is preset.model
    assert type(layertap.load_model(tmp_path)) is type(backbone)


# --- image classifier ----------------------------------------------------------------------


def test_image_files_go_through_the_converter_to_the_head(
    resnet: tuple[Path, Any, Any], images: list[Path]
) -> None:
    directory, task, converter = resnet
    preset = load_preset(directory)
    assert (preset.model_kind, preset.kind) == ("task", "image")
    assert type(preset.model).__name__ == "ResNetImageClassifier"
    name = task.backbone.name
    last = task.backbone.layers[-1].name
    ex = layertap.Extractor(preset, {"y": "predictions", "h": f"{name}/{last}"})
    assert ex.image_spec is not None and ex.image_spec.shape == (20, 20, 3)
    got = ex(images)
    x = np.stack([to_numpy(converter(p)) for p in pixels(images)])
    assert_close(np.asarray(got["y"]), task(x))
    assert_close(np.asarray(got["h"]), inner(task.backbone, last, x))
    one = pixels(images[2:])[0][None]  # keras-hub's predict converts raw pixels itself
    assert_close(np.asarray(got["y"])[2:], task.predict(one, verbose=0))
    features = layertap.extract(str(directory), [str(p) for p in images], {"y": "predictions"})
    assert_close(features["y"], task(x))


def test_a_task_saved_as_the_base_class_keeps_its_head(tmp_path: Path, images: list[Path]) -> None:
    # keras-hub's own from_preset cannot load ImageClassifier(backbone=...) back.
    task, converter = resnet_classifier_preset(tmp_path, base=True)
    preset = load_preset(tmp_path)
    assert preset.model_kind == "task" and type(preset.model).__name__ == "ImageClassifier"
    got = layertap.Extractor(preset, ["predictions"])(images)["predictions"]
    x = np.stack([to_numpy(converter(p)) for p in pixels(images)])
    assert_close(np.asarray(got), task(x))
