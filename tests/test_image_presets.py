"""A keras-hub image preset: its image converter (crop to the aspect ratio, resize,
scale and offset, as keras-hub does) preprocesses image files and PIL images by
default, in the Python API and `layertap extract`; oracle: the converter called on the
decoded pixels, then the backbone cut at the tap."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("keras_hub")

import layertap  # noqa: E402
from layertap.cli import cli  # noqa: E402
from layertap.graph.preset import ImageConverterPreprocess  # noqa: E402
from tests.conftest import assert_close, to_numpy  # noqa: E402
from tests.hub_presets import resnet_preset, vit_preset, write_images  # noqa: E402

#: Not square, so a converter that crops to the aspect ratio differs from a plain resize.
SIZES = [(40, 24), (17, 31), (16, 16)]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("images"), SIZES)


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    keras.utils.set_random_seed(0)
    directory = tmp_path_factory.mktemp("vit_preset")
    backbone, converter = vit_preset(directory)
    return directory, backbone, converter


def oracle(backbone: Any, converter: Any, paths: list[Path], layer: str) -> np.ndarray:
    """Each file's pixels through keras-hub's converter, then the backbone cut at ``layer``."""
    pixels = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in paths]
    x = np.stack([to_numpy(converter(p)) for p in pixels])
    model = keras.Model(backbone.input, backbone.get_layer(layer).output)
    return to_numpy(model(x))


def test_a_vit_preset_preprocesses_images_with_its_converter(
    vit: tuple[Path, Any, Any], images: list[Path]
) -> None:
    directory, backbone, converter = vit
    preset = layertap.load_preset(directory)
    assert preset.kind == "image"
    ex = layertap.Extractor(preset, {"h": "vit_encoder"})
    assert ex.image_spec is not None and ex.image_spec.preprocess_resizes
    want = oracle(backbone, converter, images, "vit_encoder")
    assert_close(np.asarray(ex(images)["h"]), want)
    pil = [Image.open(p) for p in images]  # PIL images take the same path
    assert_close(np.asarray(ex(pil)["h"]), want)
    # Not what Pillow's plain resize to 16x16 then ImageNet scaling would give:
    rescaled = layertap.Extractor(preset, {"h": "vit_encoder"}, preprocess="rescale")
    assert not rescaled.image_spec.preprocess_resizes
    assert not np.allclose(np.asarray(rescaled(images)["h"]), want, atol=1e-3)


def test_cli_extract_over_image_files_with_the_presets_converter(
    vit: tuple[Path, Any, Any], images: list[Path], tmp_path: Path
) -> None:
    directory, backbone, converter = vit
    out = tmp_path / "vit.h5"
    args = ["extract", str(directory), *map(str, images), "-l", "cls=vit_encoder"]
    result = CliRunner().invoke(cli, [*args, "--pool", "first", "-b", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    want = oracle(backbone, converter, images, "vit_encoder")[:, 0]
    with h5py.File(out) as f:
        assert_close(f["cls"][:], want)
        described = json.loads(f.attrs["preprocessing"])
    assert described["resample"] == "by the preprocessing"
    assert described["preprocessing"]["class"] == "ViTImageConverter"
    assert described["preprocessing"]["crop_to_aspect_ratio"] is True
    np.testing.assert_allclose(described["preprocessing"]["offset"], converter.offset)


def test_an_any_size_backbone_takes_the_converters_size_or_size(
    tmp_path: Path, images: list[Path]
) -> None:
    directory = tmp_path / "resnet_preset"
    backbone, converter = resnet_preset(directory)
    preset = layertap.load_preset(directory)
    layer = backbone.layers[-1].name
    ex = layertap.Extractor(preset, {"y": layer})
    assert ex.image_spec.shape == (20, 20, 3)
    assert_close(np.asarray(ex(images)["y"]), oracle(backbone, converter, images, layer))
    bigger = layertap.Extractor(preset, {"y": layer}, size=(24, 28))
    resized = type(converter).from_config({**converter.get_config(), "image_size": (24, 28)})
    assert bigger.image_spec.shape == (24, 28, 3)
    assert_close(np.asarray(bigger(images)["y"]), oracle(backbone, resized, images, layer))


def test_the_converter_preprocessing_pickles_as_its_config(vit: tuple[Path, Any, Any]) -> None:
    _, _, converter = vit
    fn = ImageConverterPreprocess(converter)
    again = pickle.loads(pickle.dumps(fn))
    assert again.describe() == fn.describe()
    x = np.random.default_rng(1).uniform(0, 255, (21, 13, 3)).astype("float32")
    np.testing.assert_allclose(again(x), fn(x), rtol=1e-6)
    assert fn(x).shape == (16, 16, 3)
