"""`layertap explain`: the report folder, its self-contained index.html, the CLI's error
rules, and the page in headless Chromium (skipped with a reason without a browser)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from keras import layers
from PIL import Image

pytest.importorskip("matplotlib", reason="the report draws with the viz extra")

from layertap.cli import cli  # noqa: E402
from tests.browser import (
    ONCE_REASON,
    SKIP_REASON,
    chromium,
    not_first_pass,
    open_offline,
    screenshot,
)  # noqa: E402

LAYERS = ["backbone/conv2", "backbone/conv1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nested CNN saved to .keras, four images (one not square) and a broken file."""
    root = tmp_path_factory.mktemp("explain")
    keras.utils.set_random_seed(1)
    x = keras.Input((16, 16, 3))
    h = layers.Conv2D(6, 3, activation="relu", name="conv1")(x)
    h = layers.Conv2D(8, 3, activation="relu", name="conv2")(h)
    backbone = keras.Model(x, h, name="backbone")
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), backbone, layers.GlobalAveragePooling2D(),
         layers.Dense(3, activation="softmax", name="head")]
    )  # fmt: skip
    model.save(root / "model.keras")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(16, 16), (30, 20), (16, 16), (40, 40)]):
        pixels = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    (root / "labels.txt").write_text("cat\ndog\nbird\n")
    return root


@pytest.fixture(scope="module")
def report(folder: Path) -> tuple[Path, object]:
    out = folder / "report"
    args = ["explain", str(folder / "model.keras"), str(folder / "images"), "-o", str(out)]
    for spec in LAYERS:
        args += ["-l", spec]
    result = CliRunner().invoke(cli, [*args, "--labels", str(folder / "labels.txt")])
    return out, result


def test_the_report_folder(report: tuple[Path, object]) -> None:
    out, result = report
    assert result.exit_code == 1, result.output  # the broken file is skipped and named
    assert re.search(r"skipped .*broken\.png: ", result.stderr)
    assert "explained 4 images at 2 layers (gradcam)" in result.stdout
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert len(overlays) == 8 and "img1__backbone_conv2.png" in overlays
    for png in [*(out / "overlays").iterdir(), *(out / "grids").iterdir()]:
        with Image.open(png) as img:
            assert img.format == "PNG" and min(img.size) >= 16
    with Image.open(out / "overlays" / "img1__backbone_conv2.png") as img:
        assert img.size[0] > img.size[1]  # the 30x20 image keeps its shape
    page = (out / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 4 * 2 * 2 + 1  # overlay + grid per image and layer, + stats
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"https?://|<script|<link", page)  # nothing to fetch
    assert page.count("<h2>") == 5 and "cat" in page and "broken.png" in page


def test_cli_mistakes_are_one_line(folder: Path, tmp_path: Path) -> None:
    base = ["explain", str(folder / "model.keras"), str(folder / "images" / "img0.png")]
    cases = {
        "nope": "no layer named 'nope'",
        "head": "not a spatial map",
    }
    for spec, message in cases.items():
        result = CliRunner().invoke(cli, [*base, "-l", spec, "-o", str(tmp_path / spec)])
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output
    result = CliRunner().invoke(
        cli, [*base, "-l", "backbone/conv1", "-o", str(tmp_path / "x"), "--labels", "/nope.txt"]
    )
    assert result.exit_code == 2 and "layertap: error:" in result.stderr


@pytest.mark.skipif(chromium() is None, reason=SKIP_REASON)
@pytest.mark.skipif(not_first_pass(), reason=ONCE_REASON)
def test_the_page_opens_cleanly_in_headless_chromium(report: tuple[Path, object]) -> None:
    out, _ = report
    images, bad, console = open_offline(out / "index.html")
    assert (images, bad) == (17, 0)
    assert len(console) == 1 and "layertap-check" in console[0], console
    pixels = screenshot(out / "index.html")
    assert pixels.shape == (800, 1000) and pixels.std() > 10  # not blank


def test_pictures_show_inline_in_jupyter(rng: np.random.Generator) -> None:
    import layertap
    from layertap.explainer import viz

    grid = viz.feature_grid(rng.random((6, 6, 5)).astype("float32"), count=4, order="first")
    assert grid._repr_png_().startswith(b"\x89PNG")
    assert grid._repr_html_().startswith('<img src="data:image/png;base64,')
    assert viz.grid_channels(np.arange(5.0)[None, None].repeat(2, 0), 3, "top").tolist() == [
        4,
        3,
        2,
    ]
    model = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(2, 3, name="c"),
                              layers.GlobalAveragePooling2D(), layers.Dense(2)])  # fmt: skip
    cam = layertap.explain(model, rng.random((2, 8, 8, 3)).astype("float32"), "c")
    with Image.open(io.BytesIO(cam._repr_png_())) as img:
        assert img.format == "PNG" and img.size[0] > img.size[1]  # two maps side by side


def test_the_report_reads_images_by_the_runs_input_options(folder: Path, tmp_path: Path) -> None:
    """write_report takes the run's InputOptions; the CLI builds them from its flags."""
    from layertap.explainer.report import write_report
    from layertap.io.inputs import InputOptions

    model = keras.saving.load_model(folder / "model.keras")
    seen: list[tuple[int, ...]] = []

    def halve(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape)
        return x / np.float32(2.0)

    image = folder / "images" / "img1.png"
    options = InputOptions(preprocess=halve, size=(16, 16), resize="nearest", workers=1)
    report = write_report(model, [image], ["backbone/conv1"], tmp_path / "b", options=options)
    assert [p.name for p in report.overlays] == ["img1__backbone_conv1.png"]
    assert seen == [(16, 16, 3)]  # the options' preprocessing, at the options' size
    result = CliRunner().invoke(
        cli, ["explain", str(folder / "model.keras"), str(image), "-l", "backbone/conv1", "-o",
              str(tmp_path / "c"), "--size", "16", "--preprocess", "tf", "--resize", "box"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "explained 1 images at 1 layers (gradcam)" in result.stdout
