"""Stage 5, data: inputs of every kind and preprocessing matched to the model.

Images are written here with Pillow; every value is compared with an oracle that
preprocesses by hand (Pillow + numpy, or keras.applications' own preprocess_input)
and runs plain Keras.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import layertap
from layertap.io.data import ImageSpec, expand_inputs, load_image, make_source

TOL = {"rtol": 1e-5, "atol": 1e-5}
H, W = 8, 10


def tiny(channels: int = 3, shape: tuple[int, ...] | None = None) -> keras.Model:
    keras.utils.set_random_seed(3)
    x = keras.Input(shape or (H, W, channels), name="x")
    h = keras.layers.Conv2D(2, 1, name="conv")(x) if shape is None else x
    h = keras.layers.Flatten(name="flat")(h)
    return keras.Model(x, keras.layers.Dense(3, name="out")(h), name="tiny")


def oracle_conv(model: keras.Model, x: np.ndarray) -> np.ndarray:
    sub = keras.Model(model.input, model.get_layer("conv").output)
    return np.asarray(keras.ops.convert_to_numpy(sub(x)))


def noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    return rgb if mode == "RGB" else rgb.convert(mode)


def by_hand(path: Path, mode: str = "RGB", resample: int = Image.Resampling.BILINEAR) -> np.ndarray:
    with Image.open(path) as img:
        img = img.convert(mode).resize((W, H), resample)
        x = np.asarray(img, dtype=np.float32)
    return x[..., None] if x.ndim == 2 else x


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("data")
    noise(13, 9, seed=1).save(d / "a.jpg", quality=95)
    noise(W, H, "L", seed=2).save(d / "b.png")
    noise(21, 17, "P", seed=3).save(d / "c.png")
    noise(5, 30, "RGBA", seed=4).save(d / "d.png")
    return sorted(d.iterdir())


@pytest.mark.parametrize("mode", ["tf", "caffe", "torch"])
def test_presets_equal_keras_applications(files: list[Path], mode: str) -> None:
    from keras.applications import imagenet_utils

    model = tiny()
    feats = layertap.extract(model, files, "conv", preprocess=mode, batch_size=3)
    raw = np.stack([by_hand(p) for p in files])
    x = imagenet_utils.preprocess_input(raw.copy(), mode=mode)
    np.testing.assert_allclose(feats["conv"], oracle_conv(model, x), **TOL)
    assert feats["paths"].tolist() == [str(p) for p in files]


def test_rescale_none_callable_and_module_function(files: list[Path]) -> None:
    model = tiny()
    raw = np.stack([by_hand(p) for p in files])
    cases = {
        "rescale": raw / 255.0,
        "none": raw,
        "numpy:sqrt": np.sqrt(raw),
        np.log1p: np.log1p(raw),
    }
    for preprocess, x in cases.items():
        feats = layertap.extract(model, files, "conv", preprocess=preprocess)
        np.testing.assert_allclose(feats["conv"], oracle_conv(model, x), **TOL)
    with pytest.raises(layertap.BadInputError, match="'nosuch'.*'rescale'"):
        layertap.extract(model, files, "conv", preprocess="nosuch")


def test_one_channel_model_gets_grayscale_and_resize_is_selectable(files: list[Path]) -> None:
    model = tiny(channels=1)
    feats = layertap.extract(model, files, "conv", resize="nearest")
    x = np.stack([by_hand(p, "L", Image.Resampling.NEAREST) for p in files]) / 255.0
    np.testing.assert_allclose(feats["conv"], oracle_conv(model, x), **TOL)
    spec = ImageSpec.from_model(model)
    assert spec.describe()["color_mode"] == "L"
    with pytest.raises(layertap.BadInputError, match="'cubic'.*'bicubic'"):
        ImageSpec(4, 4, resize="cubic")


@pytest.mark.parametrize(("orientation", "undo"), [(3, 180), (6, 270), (8, 90)])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, undo: int) -> None:
    upright = noise(W, H, seed=5)
    stored = upright.rotate(-undo, expand=True)  # what a camera would store
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "e.png", exif=exif)
    x = load_image(tmp_path / "e.png", ImageSpec(H, W, preprocess="none"))
    np.testing.assert_array_equal(x, np.asarray(upright, np.float32))


def test_channels_first_model(files: list[Path]) -> None:
    spec = ImageSpec.from_model(tiny(shape=(3, H, W)))
    assert (spec.channels_first, spec.height, spec.width) == (True, H, W)
    x = load_image(files[0], spec)
    np.testing.assert_allclose(x, by_hand(files[0]).transpose(2, 0, 1) / 255.0, **TOL)


def test_lists_of_paths_txt_and_csv(files: list[Path], tmp_path: Path) -> None:
    txt = tmp_path / "list.txt"
    txt.write_text(f"# inputs\n{files[2]}\n\n{files[0]}\n")
    assert expand_inputs([txt]) == [files[2], files[0]]
    csv = files[0].parent / "list.csv"
    try:
        csv.write_text(f"label,path\n1,{files[1].name}\n0,{files[3]}\n")
        assert expand_inputs([csv]) == [files[1], files[3]]  # relative to the list's folder
    finally:
        csv.unlink()


def test_npy_files_and_arrays(tmp_path: Path) -> None:
    model = tiny()
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, H, W, 3)).astype("float32")
    b = rng.normal(size=(2, H, W, 3)).astype("float32")
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    want = oracle_conv(model, np.concatenate([a, b]))
    feats = layertap.extract(model, [tmp_path / "a.npy", tmp_path / "b.npy"], "conv", batch_size=3)
    np.testing.assert_allclose(feats["conv"], want, **TOL)
    assert feats["paths"][[0, 6]].tolist() == [
        f"{tmp_path / 'a.npy'}[0]",
        f"{tmp_path / 'b.npy'}[1]",
    ]
    feats = layertap.extract(model, a, "conv", batch_size=2)
    np.testing.assert_allclose(feats["conv"], want[:5], **TOL)
    assert feats["paths"].tolist() == [f"array[{i}]" for i in range(5)]


class _Batches(keras.utils.PyDataset):  # type: ignore[misc]
    def __init__(self, x: np.ndarray) -> None:
        super().__init__()
        self.x = x

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        part = self.x[i * 3 : (i + 1) * 3]
        return part, np.zeros(len(part))


def test_iterables_pydataset_and_tf_data() -> None:
    model = tiny()
    x = np.random.default_rng(1).normal(size=(5, H, W, 3)).astype("float32")
    want = oracle_conv(model, x)
    inputs: list[object] = [
        [x[:2], (x[2:], np.zeros(3))],  # a list of batches, some (x, y)
        (b for b in (x[:4], x[4:])),  # a generator
        _Batches(x),
    ]
    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow as tf

        inputs.append(tf.data.Dataset.from_tensor_slices(x).batch(2))
    for item in inputs:
        feats = layertap.extract(model, item, "conv")
        np.testing.assert_allclose(feats["conv"], want, **TOL)
        assert len(feats["paths"]) == 5
    assert make_source(iter([x]), model).kind == "iterable"
    with pytest.raises(layertap.BadInputError, match="not supported"):
        layertap.extract(model, 3, "conv")
