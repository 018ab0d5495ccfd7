"""The command line, run in process with click's CliRunner (and once as a real process).

A tiny transfer-learning model (a Functional "backbone" nested in a Functional head)
is saved to disk; images of several sizes and formats are written with Pillow. What
``layertap extract`` writes is compared with plain Keras sub-model predictions on
images preprocessed by hand here (the oracle).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

import layertap
from layertap.cli import cli

SIZE = (12, 16)  # the model's input height and width
TOL = {"rtol": 1e-5, "atol": 1e-5}


def build_model() -> keras.Model:
    """A head around a nested backbone: the layer names below are pinned in the tests."""
    keras.utils.set_random_seed(7)
    x_in = keras.Input((*SIZE, 3), name="backbone_in")
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x_in)
    h = keras.layers.ReLU(name="relu")(h)
    backbone = keras.Model(x_in, keras.layers.MaxPooling2D(2, name="pool")(h), name="backbone")
    image = keras.Input((*SIZE, 3), name="image")
    h = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(image))
    h = keras.layers.Dense(5, activation="relu", name="embedding")(h)
    out = keras.layers.Dense(3, activation="softmax", name="logits")(h)
    return keras.Model(image, out, name="head")


def write_images(folder: Path) -> list[Path]:
    """Good images of several sizes, modes and formats; returns them in sorted order."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir(exist_ok=True)

    def noise(w: int, h: int, mode: str = "RGB") -> Image.Image:
        channels = {"RGB": 3, "RGBA": 4}.get(mode)
        shape = (h, w) if channels is None else (h, w, channels)
        return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)

    noise(16, 12).save(folder / "a_exact.png")  # already the model's size
    noise(40, 30).save(folder / "b_large.jpg", quality=95)
    noise(23, 17, "L").save(folder / "c_gray.png")
    noise(20, 20, "RGBA").save(folder / "sub" / "d_rgba.png")
    # Stored rotated, with an EXIF tag saying "turn 90 degrees clockwise to view".
    exif = Image.Exif()
    exif[0x0112] = 6
    noise(32, 24).transpose(Image.Transpose.ROTATE_90).save(folder / "e_exif.png", exif=exif)
    return sorted(p for p in folder.rglob("*") if p.is_file())


def preprocess_by_hand(path: Path) -> np.ndarray:
    """The oracle's preprocessing, written out without layertap's code."""
    with Image.open(path) as img:
        if img.getexif().get(0x0112) == 6:
            img = img.transpose(Image.Transpose.ROTATE_270)
        img = img.convert("RGB").resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype="float32") / 255.0


def oracle(model: keras.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Plain Keras: one truncated model per tap."""
    backbone = model.get_layer("backbone")
    conv = keras.Model(backbone.input, backbone.get_layer("conv").output)
    gap = keras.Model(model.input, model.get_layer("gap").output)
    emb = keras.Model(model.input, model.get_layer("embedding").output)
    np_ = keras.ops.convert_to_numpy
    return {
        "backbone/conv": np_(conv(x)),
        "gap": np_(gap(x)),
        "embedding": np_(emb(x)),
        "logits": np_(model(x)),
    }


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "head.keras"
    build_model().save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def expected(model_file: Path, images: list[Path]) -> dict[str, np.ndarray]:
    model = keras.saving.load_model(model_file, compile=False)
    return oracle(model, np.stack([preprocess_by_hand(p) for p in images]))


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("layertap: error: "), lines[0]
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


# --- layertap layers ------------------------------------------------------------------


def test_layers_prints_the_tree(model_file: Path) -> None:
    result = run("layers", model_file)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["index", "path", "class", "output", "shape", "params"]
    assert [line.split()[1] if line[:5].strip() else line.split()[0] for line in lines[1:]] == [
        "image",
        "backbone",
        "conv",
        "relu",
        "pool",
        "gap",
        "embedding",
        "logits",
    ]
    assert result.stdout.strip() == layertap.summary(layertap.load_model(model_file))


def test_layers_json_lists_every_tappable_path(model_file: Path) -> None:
    result = run("layers", model_file, "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["path"] for r in records] == [
        "image",
        "backbone",
        "backbone/conv",
        "backbone/relu",
        "backbone/pool",
        "gap",
        "embedding",
        "logits",
    ]
    conv = records[2]
    assert conv == {
        "path": "backbone/conv",
        "index": None,
        "class_name": "Conv2D",
        "output_shape": [None, *SIZE, 4],
        "dtype": "float32",
        "params": 3 * 3 * 3 * 4 + 4,
        "trace_error": None,
    }
    assert records[5]["index"] == 2

    top = json.loads(run("layers", model_file, "--json", "--max-depth", "0").stdout)
    assert [r["path"] for r in top] == ["image", "backbone", "gap", "embedding", "logits"]


# --- layertap extract -----------------------------------------------------------------


def test_extract_h5_equals_plain_keras(
    model_file: Path, images: list[Path], expected: dict[str, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "deep" / "feats.h5"
    folder = images[0].parent
    result = run(
        "extract", model_file, folder, "-l", "backbone/conv", "-l", "emb=embedding",
        "--layer", "-1", "--out", out, "--batch-size", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.startswith(f"wrote {len(images)} rows to {out}: ")
    assert "backbone.conv (5, 12, 16, 4)" in result.stdout

    with h5py.File(out) as f:
        assert list(f["paths"].asstr()) == [str(p) for p in images]
        assert len(f["failed/path"]) == 0
        # A canonical path is stored under a safe name, the key kept as an attribute.
        assert f["backbone.conv"].attrs["key"] == "backbone/conv"
        assert f["emb"].attrs["layer"] == "embedding"
        np.testing.assert_allclose(f["backbone.conv"][:], expected["backbone/conv"], **TOL)
        np.testing.assert_allclose(f["emb"][:], expected["embedding"], **TOL)
        # With an alias among them, an unaliased spec is keyed by its canonical path.
        np.testing.assert_allclose(f["logits"][:], expected["logits"], **TOL)
        assert f.attrs["model"] == str(model_file)
        assert json.loads(f.attrs["layers"]) == ["backbone/conv", "emb=embedding", "-1"]
        taps = json.loads(f.attrs["taps"])
        assert taps["emb"] == {
            "dataset": "emb",
            "layer": "embedding",
            "shape": [5, 5],
            "dtype": "float32",
            "pool": "keep",
        }
        assert json.loads(f.attrs["preprocessing"])["size"] == list(SIZE)
        assert f.attrs["layertap_version"] == layertap.__version__
        assert f.attrs["rows"] == len(images)
    assert sorted(p.name for p in out.parent.iterdir()) == ["feats.h5"]  # no partial file


def test_extract_npz_from_a_glob_equals_plain_keras(
    model_file: Path, images: list[Path], expected: dict[str, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "feats.npz"
    pattern = str(images[0].parent / "**" / "*.png")
    result = run("extract", model_file, pattern, "-l", "gap", "-l", "logits", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert result.output == ""  # --quiet
    pngs = [i for i, p in enumerate(images) if p.suffix == ".png"]
    with np.load(out) as f:
        assert list(f["paths"]) == [str(images[i]) for i in pngs]
        np.testing.assert_allclose(f["gap"], expected["gap"][pngs], **TOL)
        np.testing.assert_allclose(f["logits"], expected["logits"][pngs], **TOL)
        assert f["failed_path"].shape == (0,)
        meta = json.loads(str(f["__layertap__"]))
    assert json.loads(meta["taps"])["gap"]["shape"] == [len(pngs), 4]


def test_extract_equals_the_extractor_on_the_same_batches(
    model_file: Path, images: list[Path], tmp_path: Path
) -> None:
    """The CLI adds nothing to the numbers: same as Extractor on layertap's own loading."""
    from layertap.io.data import ImageSpec, load_image

    out = tmp_path / "f.npz"
    assert run("extract", model_file, *images, "-l", "relu", "-o", out).exit_code == 0
    model = layertap.load_model(model_file)
    spec = ImageSpec.from_model(model)
    x = np.stack([load_image(p, spec) for p in images])
    with np.load(out) as f:
        np.testing.assert_allclose(
            f["backbone.relu"], layertap.Extractor(model, ["relu"])(x)["backbone/relu"], **TOL
        )


def test_unreadable_files_are_skipped_named_and_recorded(
    model_file: Path, expected: dict[str, np.ndarray], tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    good = write_images(folder)
    whole = (folder / "a_exact.png").read_bytes()
    (folder / "broken.png").write_bytes(whole[: len(whole) // 2])  # truncated
    (folder / "notes.txt").write_text("not an image\n")
    out = tmp_path / "feats.h5"

    result = run("extract", model_file, folder, "-l", "gap", "--out", out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    skipped = result.stderr.splitlines()
    assert len(skipped) == 2, result.stderr
    assert skipped[0].startswith(f"layertap: skipped {folder / 'broken.png'}: ")
    assert skipped[1].startswith(f"layertap: skipped {folder / 'notes.txt'}: cannot identify")
    assert result.stdout.startswith(f"wrote {len(good)} rows, 2 failed to {out}")
    with h5py.File(out) as f:
        assert list(f["paths"].asstr()) == [str(p) for p in good]
        np.testing.assert_allclose(f["gap"][:], expected["gap"], **TOL)
        failed = [str(folder / "broken.png"), str(folder / "notes.txt")]
        assert list(f["failed/path"].asstr()) == failed
        assert all(f["failed/reason"].asstr())
    assert "exit status" in run("extract", "--help").stdout.lower()


def test_existing_output_needs_overwrite(
    model_file: Path, images: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "feats.npz"
    out.write_bytes(b"precious")
    result = run("extract", model_file, images[0], "-l", "gap", "-o", out)
    assert_one_line_error(result, "exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    result = run("extract", model_file, images[0], "-l", "gap", "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        assert f["gap"].shape == (1, 4)


@pytest.mark.parametrize(
    ("layer", "needles"),
    [
        ("nosuch", ["'nosuch'", "list_layers"]),
        ("backbone/cnov", ["'cnov'", "close matches", "'backbone/conv'"]),
        ("9", ["index 9", "-5..4"]),
        ("=gap", ["malformed"]),
        ("backbone/x*", ["glob", "matches no layer"]),
    ],
)
def test_bad_layer_spec_is_one_line_exit_2(
    model_file: Path, images: list[Path], tmp_path: Path, layer: str, needles: list[str]
) -> None:
    out = tmp_path / "f.h5"
    result = run("extract", model_file, images[0], "--layer", layer, "--out", out)
    assert_one_line_error(result, *needles)
    assert list(tmp_path.iterdir()) == []  # nothing written, no partial file


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["extract", "{tmp}/missing.keras", "{img}", "-l", "gap", "-o", "{tmp}/f.h5"],
         ["missing.keras", "does not exist"]),
        (["layers", "{tmp}/missing.keras"], ["missing.keras", "does not exist"]),
        (["extract", "{model}", "{tmp}/nope", "-l", "gap", "-o", "{tmp}/f.h5"],
         ["nope", "does not exist"]),
        (["extract", "{model}", "{img}", "-l", "gap", "-o", "{tmp}/f.csv"], ["'.csv'", ".npz"]),
        (["extract", "{model}", "{img}", "-l", "gap"], ["--out"]),
        (["extract", "{model}", "{img}", "-l", "gap", "-o", "{tmp}/f.h5", "-b", "0"],
         ["batch-size"]),
        (["layers", "{img}"], ["neither a .keras archive nor an HDF5 file"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)  # fmt: skip
def test_user_mistakes_are_one_line_exit_2(
    model_file: Path, images: list[Path], tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    values = {"tmp": str(tmp_path), "model": str(model_file), "img": str(images[0])}
    result = run(*(a.format(**values) for a in args))
    assert_one_line_error(result, *needles)


def test_help_has_examples() -> None:
    for args in ([], ["layers"], ["extract"]):
        result = run(*args, "--help")
        assert result.exit_code == 0
        assert "Examples:" in result.stdout


def test_python_dash_m_runs_as_a_process(model_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    good = write_images(folder)
    (folder / "zz.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "f.h5"
    env = {**os.environ, "COLUMNS": "100"}
    args = [sys.executable, "-m", "layertap", "extract", str(model_file), str(folder)]
    proc = subprocess.run(
        [*args, "-l", "emb=embedding", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"layertap: skipped {folder / 'zz.jpg'}: " in proc.stderr
    assert proc.stdout == f"wrote {len(good)} rows, 1 failed to {out}: emb ({len(good)}, 5)\n"


CUSTOM = """
import keras


class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


def test_custom_objects_and_unsafe_options(tmp_path: Path) -> None:
    import importlib.util

    code = tmp_path / "my_layers.py"
    code.write_text(CUSTOM)
    spec = importlib.util.spec_from_file_location("my_layers_for_test", code)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x_in = keras.Input((3,), name="x")
    model = keras.Model(x_in, module.Scale(3.0, name="scale")(x_in))
    model.save(tmp_path / "custom.keras")
    no = run("layers", tmp_path / "custom.keras")
    assert_one_line_error(no, "Scale")
    ok = run("layers", tmp_path / "custom.keras", "--custom-objects", code, "--json")
    assert ok.exit_code == 0, ok.output
    assert [r["path"] for r in json.loads(ok.stdout)] == ["x", "scale"]
    np.save(tmp_path / "x.npy", np.ones((2, 3), "float32"))
    args = ["extract", tmp_path / "custom.keras", tmp_path / "x.npy", "-l", "scale"]
    out = tmp_path / "f.npz"
    assert run(*args, "--custom-objects", code, "-o", out, "-q").exit_code == 0
    with np.load(out) as f:
        np.testing.assert_allclose(f["scale"], np.full((2, 3), 3.0))

    lam = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda t: t + 1, name="lam")])
    lam.save(tmp_path / "lambda.keras")
    assert_one_line_error(run("layers", tmp_path / "lambda.keras"), "safe")
    assert run("layers", tmp_path / "lambda.keras", "--unsafe").exit_code == 0
