"""Where two models part (issue 18, part 4): ``layertap.compare`` and ``compare_files``.

A small Conv/Dense model is compared with itself, with a copy whose one layer's weights
are perturbed, and with an int8-quantized copy (``model.quantize("int8")``). The
numbers are checked against numpy written out here: ``rel_error`` over all rows, the
largest difference, and minibatch CKA as ``layertap.similarity`` computes it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import layertap
from layertap.analysis.compare import Comparison, DiffStats, LayerDiff
from layertap.cli import cli

ORDER = ["conv", "relu", "gap", "hidden", "logits"]


def small_model() -> keras.Model:
    keras.utils.set_random_seed(11)
    x = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(6, 3, name="conv")(x)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = keras.layers.Dense(12, activation="tanh", name="hidden")(h)
    return keras.Model(x, keras.layers.Dense(4, name="logits")(h), name="small")


def copy_of(model: keras.Model) -> keras.Model:
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return small_model()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(37, 8, 8, 3)).astype("float32")


def test_a_model_against_itself(model: keras.Model, x: np.ndarray) -> None:
    c = layertap.compare(model, model, x, ORDER, batch_size=8)
    assert list(c) == ORDER and c.rows == 37
    for d in c.values():
        assert d.rel_error == 0.0 and d.max_abs == 0.0
        assert d.cka == pytest.approx(1.0, abs=1e-9)
    assert c.first_divergent(0.0) is None
    assert "no layer diverges" in c.table()


def test_one_perturbed_layer_is_the_first_divergent(model: keras.Model, x: np.ndarray) -> None:
    copy = copy_of(model)
    kernel = copy.get_layer("hidden").kernel
    kernel.assign(keras.ops.convert_to_numpy(kernel) * 1.05)
    # Given in another order: the result follows the model's order.
    c = layertap.compare(model, copy, x, ["logits", "conv", "hidden", "gap", "relu"], batch_size=8)
    assert list(c) == ORDER
    assert c.first_divergent(1e-4) == "hidden"
    for key in ("conv", "relu", "gap"):
        assert c[key].rel_error == 0.0 and c[key].max_abs == 0.0
    assert c["hidden"].rel_error > 1e-3 and c["logits"].rel_error > 1e-3
    assert c["hidden"].cka > 0.9
    lines = c.table(1e-4).splitlines()
    marked = [line for line in lines if "<- first divergent" in line]
    assert len(marked) == 1 and marked[0].startswith("hidden ")
    assert c.plot().png[:4] == b"\x89PNG"


def _quantized(model: keras.Model) -> keras.Model:
    copy = copy_of(model)
    try:
        with warnings.catch_warnings():  # layers without weights "have no quantize method"
            warnings.simplefilter("ignore", UserWarning)
            copy.quantize("int8")
    except (NotImplementedError, ValueError, TypeError) as exc:
        pytest.skip(f"Keras {keras.__version__} refuses int8 on {keras.backend.backend()}: {exc}")
    return copy


def test_int8_quantized_copy_is_close_but_not_equal(model: keras.Model, x: np.ndarray) -> None:
    q = _quantized(model)
    quantized = [k for k in ORDER if getattr(q.get_layer(k), "quantization_mode", None) == "int8"]
    assert "hidden" in quantized  # Dense is; Conv2D is on Keras versions that quantize it
    first = quantized[0]
    c = layertap.compare(model, q, x, ORDER, batch_size=8)
    assert c.first_divergent(1e-6) == first
    for key in ORDER[: ORDER.index(first)]:
        assert c[key].rel_error == 0.0, (key, c[key])
    for key in ORDER[ORDER.index(first) :]:
        assert 0.0 < c[key].rel_error < 0.1, (key, c[key])
        assert c[key].cka > 0.98, (key, c[key])


def _features(model: keras.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    return layertap.Extractor(model, ORDER).predict(x, batch_size=64)


def test_batches_add_up_to_the_whole_data_formulas(model: keras.Model, x: np.ndarray) -> None:
    copy = copy_of(model)
    for layer in copy.layers:
        for w in layer.weights:
            w.assign(keras.ops.convert_to_numpy(w) + 0.01)
    fa, fb = _features(model, x), _features(copy, x)
    # 37 rows in batches of 8: 8, 8, 8, 8, 5; in batches of 12: 12, 12, 12, 1 (folded).
    for batch_size in (8, 12, 37):
        c = layertap.compare(model, copy, x, ORDER, batch_size=batch_size)
        s = layertap.similarity(fa, fb, unbiased=True, batch_size=batch_size)
        for key in ORDER:
            a = fa[key].astype(np.float64).reshape(len(x), -1)
            b = fb[key].astype(np.float64).reshape(len(x), -1)
            assert c[key].rel_error == pytest.approx(
                np.linalg.norm(a - b) / np.linalg.norm(a), rel=1e-6
            )
            assert c[key].max_abs == pytest.approx(np.abs(a - b).max(), rel=1e-5)
            assert c[key].cka == pytest.approx(s[key, key], rel=1e-5, abs=1e-6)
    biased = layertap.compare(model, copy, x, ORDER, batch_size=37, unbiased=False)
    whole = layertap.similarity(fa, fb)
    assert biased["hidden"].cka == pytest.approx(whole["hidden", "hidden"], rel=1e-5)


def test_diff_stats_oracle() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(23, 2, 3))
    b = a + rng.normal(scale=0.1, size=a.shape)
    s = DiffStats()
    for i in range(0, 23, 5):  # the last block has 3 rows: it joins the one before
        s.update(a[i : i + 5], b[i : i + 5])
    d = s.result()
    assert d.rel_error == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(a))
    want = layertap.similarity({"k": a}, {"k": b}, unbiased=True, batch_size=5)["k", "k"]
    assert d.cka == pytest.approx(want)
    zeros = DiffStats()
    zeros.update(np.zeros((2, 3)), np.zeros((2, 3)))
    assert zeros.result().rel_error == 0.0 and np.isnan(zeros.result().cka)  # 2 rows < 4


def test_compare_files_equals_compare(model: keras.Model, x: np.ndarray, tmp_path: Path) -> None:
    copy = copy_of(model)
    copy.get_layer("logits").bias.assign(np.full(4, 0.5, "float32"))
    direct = layertap.compare(model, copy, x, ORDER, batch_size=8)
    a = layertap.extract(model, x, ORDER, tmp_path / "a.h5")
    b = layertap.extract(copy, x, ORDER, tmp_path / "b.parquet")
    files = layertap.compare_files(a.path, b, batch_size=8)
    assert list(files) == ORDER and files.first_divergent() == "logits"
    for key in ORDER:
        assert files[key].rel_error == pytest.approx(direct[key].rel_error, rel=1e-6, abs=1e-12)
        assert files[key].cka == pytest.approx(direct[key].cka, rel=1e-6)
    with pytest.raises(layertap.FeatureFileError, match=r"\(B\) lacks 'conv'"):
        layertap.compare_files(a.path, {"relu": np.zeros((37, 6, 6, 6))})
    with pytest.raises(layertap.FeatureFileError, match="rows"):
        layertap.compare_files(a.path, {"conv": np.zeros((5, 6, 6, 6))})


def test_models_from_files_and_image_files(model: keras.Model, tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "m.keras"
    model.save(path)
    rng = np.random.default_rng(5)
    images = []
    (tmp_path / "images").mkdir()
    for i in range(6):
        images.append(tmp_path / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (10, 9, 3), dtype=np.uint8)).save(images[-1])
    c = layertap.compare(path, model, images, ["gap", "logits"], batch_size=4)
    assert c.rows == 6 and c["logits"].rel_error < 1e-6
    assert c.sources == (str(path), "small")
    folder = layertap.compare(model, str(path), tmp_path / "images", ["gap"], batch_size=4)
    assert folder.rows == 6


def test_bad_comparisons_name_the_model(model: keras.Model, x: np.ndarray) -> None:
    other = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3, name="conv")], name="other"
    )
    with pytest.raises(layertap.LayerNotFoundError, match=r"^in model B \(other\): .*'hidden'"):
        layertap.compare(model, other, x, ["conv", "hidden"])
    with pytest.raises(layertap.BadSpecError, match="tap 'conv' has shape"):
        wide = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(5, 3, name="conv")])
        layertap.compare(model, wide, x, ["conv"])
    with pytest.raises(layertap.BadInputError, match="needs at least 4 rows per batch"):
        layertap.compare(model, model, x, ["conv"], batch_size=3)
    with pytest.raises(layertap.BadInputError, match="model B is a int"):
        layertap.compare(model, 3, x, ["conv"])


def test_comparison_records() -> None:
    c = Comparison({"a": LayerDiff(0.0, 0.0, 1.0), "b": LayerDiff(float("nan"), 1.0, 0.5)})
    assert c.first_divergent(1.0) == "b"  # NaN: A is all zeros there and B is not
    record = c.to_dict()
    assert record["first_divergent"] == "b" and record["layers"]["b"]["rel_error"] is None
    assert "<img" in c._repr_html_()


def run(*args: object) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_compare(model: keras.Model, x: np.ndarray, tmp_path: Path) -> None:
    copy = copy_of(model)
    copy.get_layer("hidden").bias.assign(np.full(12, 0.1, "float32"))
    model.save(tmp_path / "a.keras")
    copy.save(tmp_path / "b.keras")
    np.save(tmp_path / "x.npy", x)
    a, b, inputs = tmp_path / "a.keras", tmp_path / "b.keras", tmp_path / "x.npy"
    done = run("compare", a, b, inputs, "-l", "conv", "-l", "hidden", "-l", "logits",
               "-b", 8, "--plot", tmp_path / "c.png")  # fmt: skip
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0].startswith(f"compare A={a} vs B={b}: 37 rows")
    assert [line.split()[0] for line in lines[2:]] == ["conv", "hidden", "logits"]
    assert "<- first divergent (rel_error > 0.001)" in lines[3]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads(run("compare", a, b, inputs, "-l", "e=conv", "--json").output)
    assert record["first_divergent"] is None and record["layers"]["e"]["rel_error"] == 0.0
    (tmp_path / "other.keras").unlink(missing_ok=True)
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3, name="conv")]).save(
        tmp_path / "other.keras"
    )
    cases = [
        (("compare", a, tmp_path / "other.keras", inputs, "-l", "hidden"),
         f"in model B ({tmp_path / 'other.keras'}): "),
        (("compare", a, tmp_path / "missing.keras", inputs, "-l", "conv"), "model B"),
        (("compare", a, b, inputs, "-l", "conv", "-b", 3), "at least 4 rows per batch"),
        (("compare", a, b, tmp_path / "nothing_here", "-l", "conv"), "nothing_here"),
    ]  # fmt: skip
    for args, message in cases:
        done = run(*args)
        assert done.exit_code == 2, (args, done.output)
        lines = [line for line in done.output.splitlines() if line]
        assert len(lines) == 1 and lines[0].startswith("layertap: error: "), done.output
        assert message in lines[0], lines[0]


def test_two_text_presets_over_texts(tmp_path: Path) -> None:
    pytest.importorskip("keras_hub")
    from tests.hub_presets import LINES, bert_preset

    a, b = tmp_path / "a", tmp_path / "b"
    bert_preset(a)
    bert_preset(b)  # new random weights: every layer differs
    c = layertap.compare(a, a, LINES, ["token_embedding", "transformer_layer_1"], batch_size=4)
    assert c.rows == len(LINES) and all(d.rel_error == 0.0 for d in c.values())
    d = layertap.compare(a, b, LINES, ["token_embedding", "transformer_layer_1"], batch_size=4)
    assert d.first_divergent() == "token_embedding"
    (tmp_path / "lines.txt").write_text("\n".join(LINES) + "\n")
    done = run("compare", a, b, tmp_path / "lines.txt", "-l", "transformer_layer_1", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["rows"] == len(LINES)
