"""Extractor on raw inputs: image files and PIL images decoded as `layertap.extract`
decodes them, texts tokenized by a keras-hub preset, and strings a model cannot take
refused with a message that says what it takes. Every result is checked against the
same extractor on arrays and against plain Keras on those arrays."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

import layertap
from layertap.io.data import ImageSpec, load_image
from tests.conftest import assert_close

# --- images ---------------------------------------------------------------------------

ORIENTATION = 0x0112  # the EXIF tag; 6: rotate 90 degrees clockwise to view


@pytest.fixture
def image_files(tmp_path: Path, rng: np.random.Generator) -> list[Path]:
    """Three images of other sizes than the model's: RGB PNG, EXIF-rotated JPEG, gray PNG."""
    a = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(a)
    b = tmp_path / "b.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(b, exif=exif)
    c = tmp_path / "sub" / "c.png"
    c.parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (13, 9), dtype=np.uint8), mode="L").save(c)
    return [a, b, c]


@pytest.fixture
def opened(image_files: list[Path]) -> Iterator[list[Image.Image]]:
    """The same files as open PIL images (closed after the test)."""
    with ExitStack() as stack:
        yield [stack.enter_context(Image.open(p)) for p in image_files]


def conv_model(shape: tuple[int | None, ...]) -> keras.Model:
    channels_first = shape[0] in (1, 3) and shape[-1] not in (1, 3)
    x = inp = keras.Input(shape)
    if channels_first:  # Conv2D channels_first is not on every CPU backend
        x = layers.Flatten(name="flat")(x)
        x = layers.Dense(4, name="conv")(x)
    else:
        x = layers.Conv2D(4, 3, name="conv")(x)
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, layers.Dense(2, name="out")(x), name="cnn")


def plain(model: keras.Model, x: Any) -> dict[str, np.ndarray]:
    """The oracle: Keras sub-models up to each tapped layer, on the same arrays."""
    return {
        name: keras.Model(model.input, model.get_layer(name).output).predict_on_batch(x)
        for name in ("conv", "out")
    }


@pytest.mark.parametrize("shape", [(16, 16, 3), (16, 16, 1), (3, 16, 16)])
def test_files_and_pil_images_equal_load_image_arrays(
    shape: tuple[int, ...], image_files: list[Path], opened: list[Image.Image]
) -> None:
    model = conv_model(shape)
    ex = layertap.Extractor(model, ["conv", "out"])
    spec = ImageSpec.from_model(model, preprocess="rescale")
    assert ex.image_spec == spec and ex.preprocessor is None
    arrays = np.stack([load_image(p, spec) for p in image_files])
    assert arrays.shape == (3, *shape)
    expected = plain(model, arrays)
    on_arrays = ex(arrays)
    mixed = [image_files[0], opened[1], str(image_files[2])]
    runs = {
        "paths": ex(image_files),
        "str paths": ex([str(p) for p in image_files]),
        "tuple": ex(tuple(image_files)),
        "pil": ex(opened),
        "mixed": ex(mixed),
        "predict paths": ex.predict(image_files, batch_size=2),
        "predict pil": ex.predict(opened, batch_size=2),
    }
    for name, run in runs.items():
        assert list(run) == ["conv", "out"], name
        for key in run:
            assert_close(run[key], on_arrays[key])
            assert_close(run[key], expected[key])
    single = ex(image_files[1])
    assert_close(single["out"], expected["out"][1:2])


def test_exif_orientation_is_applied(image_files: list[Path]) -> None:
    """b.jpg is 40 wide, 24 high, tagged 'rotate 90 clockwise': upright it is 24 x 40."""
    model = conv_model((40, 24, 3))  # (height, width) of the upright image: no resize
    ex = layertap.Extractor(model, {"x": "out"})
    with Image.open(image_files[1]) as raw:
        upright = raw.transpose(Image.Transpose.ROTATE_270).convert("RGB")
        assert upright.size == (24, 40)
        want = np.asarray(upright, dtype=np.float32)[None] / 255.0
        with Image.open(image_files[1]) as again:
            got = ex([again])
    assert_close(ex([image_files[1]])["x"], plain(model, want)["out"])
    assert_close(got["x"], plain(model, want)["out"])


def test_in_memory_pil_image_and_preprocess_preset(rng: np.random.Generator) -> None:
    model = conv_model((16, 16, 3))
    ex = layertap.Extractor(model, ["out"], preprocess="tf")
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    images = [Image.fromarray(pixels), Image.fromarray(gray, mode="L")]
    want = np.stack([pixels, np.repeat(gray[:, :, None], 3, axis=2)]).astype("float32")
    want = want / 127.5 - 1.0
    assert_close(ex(images)["out"], plain(model, want)["out"])
    assert images[0].size == (16, 16) and images[1].mode == "L"  # not changed


def test_any_size_model_takes_size(image_files: list[Path]) -> None:
    model = conv_model((None, None, 3))
    with pytest.raises(layertap.BadInputError, match=r"pass size=\(H, W\)"):
        layertap.Extractor(model, ["out"])(image_files)
    assert_close(
        layertap.Extractor(model, ["out"])(np.zeros((1, 7, 5, 3), "float32"))["out"],
        plain(model, np.zeros((1, 7, 5, 3), "float32"))["out"],
    )  # arrays of any size, as before
    ex = layertap.Extractor(model, ["out"], size=(12, 10), resize="nearest")
    spec = ImageSpec(12, 10, 3, resize="nearest")
    assert ex.image_spec == spec
    arrays = np.stack([load_image(p, spec) for p in image_files])
    assert_close(ex(image_files)["out"], plain(model, arrays)["out"])


def test_bad_files_are_named_with_the_reason(image_files: list[Path], tmp_path: Path) -> None:
    ex = layertap.Extractor(conv_model((16, 16, 3)), ["out"])
    missing = tmp_path / "missing.png"
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    closed = Image.open(image_files[0])
    closed.close()
    with pytest.raises(layertap.BadInputError) as info:
        ex([image_files[0], missing, not_image, closed])
    message = str(info.value)
    assert message.startswith("3 of 4 images cannot be decoded")
    assert f"{str(missing)!r}: no such file" in message
    assert f"{str(not_image)!r}: cannot identify image file" in message
    assert "the PIL image at [3]: " in message
    with pytest.raises(layertap.BadInputError, match="no such file"):
        ex.predict([missing])
    with pytest.raises(layertap.BadInputError, match="got 2 input arrays"):
        ex([image_files[0], np.zeros((16, 16, 3))])  # a mixed list is read as arrays


def test_bad_image_options_fail_at_construction() -> None:
    model = conv_model((16, 16, 3))
    with pytest.raises(layertap.BadInputError, match="unknown preprocessing 'blurry'"):
        layertap.Extractor(model, ["out"], preprocess="blurry")
    with pytest.raises(layertap.BadInputError, match="unknown resize method 'blurry'"):
        layertap.Extractor(model, ["out"], resize="blurry")
    with pytest.raises(layertap.BadInputError, match="size must be"):
        layertap.Extractor(model, ["out"], size=(0, 4))


# --- models that take neither ---------------------------------------------------------


def test_strings_for_an_array_model_say_what_it_takes(rng: np.random.Generator) -> None:
    model = keras.Sequential(
        [keras.Input((4,), name="features"), layers.Dense(3, name="d")], name="dense"
    )
    ex = layertap.Extractor(model, ["d"])
    for bad in (["a", "b"], ("a", "b"), "a"):
        with pytest.raises(layertap.BadInputError) as info:
            ex(bad)
        message = str(info.value)
        assert message.startswith("got strings, but model 'dense' takes neither texts nor")
        assert "'features' (None, 4)" in message
        assert "Pass arrays (one array, a list in input order or a dict" in message
        assert "preprocess= a keras-hub text preprocessor" in message
        with pytest.raises(layertap.BadInputError, match="takes neither texts"):
            ex.predict(bad)
    with pytest.raises(layertap.BadInputError, match=r"raw inputs \(Image\)"):
        ex([Image.new("RGB", (4, 4))])
    x = rng.random((3, 4), dtype="float32")
    assert_close(ex(x)["d"], model.predict_on_batch(x))
    assert_close(ex([x])["d"], model.predict_on_batch(x))
    assert_close(ex.predict({"features": x}, batch_size=2)["d"], model.predict_on_batch(x))


def test_strings_for_a_two_input_model(siamese_model: keras.Model) -> None:
    ex = layertap.Extractor(siamese_model, ["score"])
    with pytest.raises(layertap.BadInputError, match="model 'siamese' has 2 inputs") as info:
        ex(["a.jpg", "b.jpg"])
    assert "'a' (None, 8), 'b' (None, 8)" in str(info.value)
    x = np.ones((2, 8), "float32")
    assert_close(ex([x, x])["score"], siamese_model.predict_on_batch([x, x]))


# --- texts ----------------------------------------------------------------------------

TEXTS = ["the cat sat", "a dog", "my big fish swam in blue water"]
LAYER = "transformer_layer_0"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("keras_hub")
    from tests.hub_presets import bert_preset

    directory = tmp_path_factory.mktemp("bert_preset")
    bert_preset(directory, sequence_length=12)
    return directory


def test_texts_through_a_preset(bert_dir: Path) -> None:
    from layertap.graph.preset import text_inputs

    preset = layertap.load_preset(bert_dir)
    backbone = preset.model
    ex = layertap.Extractor(preset, {"h": LAYER})
    assert ex.preprocessor is preset.preprocessor and ex.image_spec is None
    arrays = text_inputs(preset, TEXTS)
    expected = keras.Model(backbone.input, backbone.get_layer(LAYER).output).predict_on_batch(
        arrays
    )
    on_arrays = ex(arrays)["h"]
    assert on_arrays.shape == (3, 12, 16)
    assert_close(on_arrays, expected)
    by_preprocess = layertap.Extractor(backbone, {"h": LAYER}, preprocess=preset.preprocessor)
    for run in (
        ex(TEXTS),
        ex(tuple(TEXTS)),
        ex.predict(TEXTS, batch_size=2),
        by_preprocess(TEXTS),
        by_preprocess.predict(TEXTS, batch_size=1),
    ):
        assert_close(run["h"], on_arrays)
        assert_close(run["h"], expected)
    assert_close(ex(TEXTS[1])["h"], expected[1:2])  # one str is one text
    with pytest.raises(layertap.BadInputError, match=r"item \[1\] is a (Posix|Windows)Path"):
        ex(["the cat", Path("lines.txt")])


def test_a_preset_with_an_image_preprocess_is_not_a_text_model(bert_dir: Path) -> None:
    """preprocess= (not None) replaces the preset's preprocessor; BERT takes no images."""
    preset = layertap.load_preset(bert_dir)
    ex = layertap.Extractor(preset, [LAYER], preprocess="rescale")
    assert ex.preprocessor is None
    with pytest.raises(layertap.BadInputError, match="takes neither texts nor image files"):
        ex(TEXTS)
