"""The Ray Data engine against the local engine, on a local Ray started here.

One Ray for the module (2 CPUs, no dashboard, loopback); a tiny model saved to a
file; images with a few bad files. Every comparison joins on ``path``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import layertap  # noqa: E402
import layertap.ray as _ray  # noqa: E402
from layertap._errors import BadInputError, OutputError  # noqa: E402
from layertap.engines.ray import RayEngine  # noqa: E402
from layertap.engines.run import ModelSource, Output, RayOptions, Run  # noqa: E402

LAYERS = {"early": "conv1", "emb": "gap", "logits": "out"}
POOL = {"*": "keep", "early": "avg"}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model file and a folder of 9 images (3 sizes, PNG/JPEG) plus 2 bad files."""
    d = tmp_path_factory.mktemp("ray")
    keras.utils.set_random_seed(1)
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inp)
    g = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    m = keras.Model(inp, keras.layers.Dense(3, name="out")(g))
    model = d / "m.keras"
    m.save(model)
    images = d / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(9):
        size = (12 + 5 * (i % 3), 9 + 4 * (i % 2))
        img = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8))
        img.save(images / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "notes.txt").write_text("not an image")
    return model, images


def _by_path(paths: list[str], values: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(paths, values, strict=True))


def _read_dir(out: Path) -> tuple[Any, list[Any]]:
    table = pq.read_table(out)
    schemas = [pq.read_schema(p) for p in sorted(out.glob("part-*.parquet"))]
    return table, schemas


def test_workers_inherit_the_backend(ray_cluster: None) -> None:
    # The actors also check keras.backend.backend() against the driver's (FeatureMapper).
    @ray.remote
    def env() -> str | None:
        return os.environ.get("KERAS_BACKEND")

    assert ray.get(env.remote()) == os.environ.get("KERAS_BACKEND")


def test_parquet_dir_matches_local_parquet(
    ray_cluster: None, files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, images = files
    local_file = tmp_path / "local.parquet"
    result = layertap.extract(
        str(model), [images], LAYERS, local_file, pool=POOL, batch_size=4, progress=False
    )
    assert isinstance(result, layertap.ExtractResult)
    out = tmp_path / "ray"
    got = _ray.extract_parquet(model, [images], LAYERS, out, pool=POOL, batch_size=4)
    assert got.rows == result.rows == 9
    assert sorted(got.failed) == sorted(result.failed)
    local_schema = pq.read_schema(local_file)
    table, schemas = _read_dir(out)
    for schema in schemas:  # the same fields, types and field metadata
        assert schema.remove_metadata() == local_schema.remove_metadata()
        for field in local_schema:
            assert schema.field(field.name).metadata == field.metadata
        local_meta = json.loads(local_schema.metadata[b"layertap"])
        meta = json.loads(schema.metadata[b"layertap"])
        assert set(meta) - {"engine"} == set(local_meta)
        assert meta["preprocessing"] == local_meta["preprocessing"]
        assert json.loads(meta["fingerprint"]) == json.loads(local_meta["fingerprint"])
        taps, local_taps = json.loads(meta["taps"]), json.loads(local_meta["taps"])
        for key, tap in local_taps.items():  # shape: (this file's rows, *row)
            assert taps[key] == {**tap, "shape": [meta["rows"], *tap["shape"][1:]]}
    assert got.shapes == result.shapes
    # Part files' own failures add up to every failure; _failed.parquet has them all.
    parts_failed = [
        tuple(f) for s in schemas for f in json.loads(s.metadata[b"layertap"])["failed"]
    ]
    assert sorted(parts_failed) == sorted(result.failed)
    failed = pq.read_table(out / "_failed.parquet").to_pydict()
    assert sorted(zip(failed["path"], failed["reason"], strict=True)) == sorted(result.failed)
    local_table = pq.read_table(local_file)
    want = local_table.to_pydict()
    have = table.to_pydict()
    for name in local_table.column_names[1:]:
        a = _by_path(want["path"], np.array(want[name]))
        b = _by_path(have["path"], np.array(have[name]))
        assert a.keys() == b.keys()
        for path in a:
            np.testing.assert_allclose(b[path], a[path], rtol=1e-5, atol=1e-5)
    summary = json.loads((out / "_layertap.json").read_text())
    assert summary["rows"] == 9 and len(summary["failed"]) == 2
    # The chunked reader reads the folder as it reads the local file, row by row by path.
    from layertap.io.read import open_features

    folder, single = open_features(got), open_features(local_file)
    assert folder.format == "ray" and folder.rows == 9 and folder.keys == single.keys
    assert sorted(folder.failed) == sorted(single.failed)
    for key in single.keys:
        assert folder.shape(key) == single.shape(key)
        a = _by_path(single.paths.tolist(), single.read(key))
        b = _by_path(folder.paths.tolist(), np.concatenate(list(folder.chunks(key, rows=2))))
        assert a.keys() == b.keys()
        for path in a:
            np.testing.assert_allclose(b[path], a[path], rtol=1e-5, atol=1e-5)


def test_dataset_input_equals_local_engine(
    ray_cluster: None, files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, images = files
    local = layertap.extract(str(model), [images], LAYERS, pool=POOL, batch_size=4)
    assert isinstance(local, layertap.Features)
    paths = sorted(str(p) for p in images.iterdir())
    ds = ray.data.from_items([{"path": p} for p in paths])
    rows = _ray.extract_dataset(model, ds, LAYERS, pool=POOL, batch_size=3).to_pandas()
    assert sorted(rows["path"]) == paths
    ok = rows[rows["_failed"] == ""]
    bad = rows[rows["_failed"] != ""]
    assert sorted(zip(bad["path"], bad["_failed"], strict=True)) == sorted(local.failed)
    assert len(local.failed) == 2
    for key in LAYERS:
        got = _by_path(list(ok["path"]), np.stack(ok[key].to_numpy()))
        want = _by_path(local["paths"].tolist(), local[key])
        assert got.keys() == want.keys()
        for path, value in want.items():
            np.testing.assert_allclose(got[path], value, rtol=1e-5, atol=1e-5)
    with pytest.raises(BadInputError, match="not 'path'"):
        _ray.extract_dataset(model, ray.data.from_items([{"file": "a"}]), ["gap"])
    with pytest.raises(BadInputError, match="file path or URI"):
        _ray.extract_dataset(keras.models.load_model(model), [images], ["gap"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(OutputError, match="not empty"):
        _ray.extract_parquet(model, [images], ["gap"], tmp_path / "busy")


def test_run_extract_for_the_cli(
    ray_cluster: None, files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, images = files
    local = layertap.extract(str(model), [images], ["gap"], pool="keep")
    assert isinstance(local, layertap.Features)
    run = Run(
        ModelSource(str(model)),
        [str(images)],
        ["gap"],
        output=Output(str(tmp_path / "out")),
        engine="ray",
        ray=RayOptions(concurrency=1),
        progress=False,
    )
    result = RayEngine().extract(run)
    rows, failed = result.rows, result.failed
    assert ray.is_initialized()  # a Ray it did not start is left running
    assert rows == 9 and sorted(failed) == sorted(local.failed)
    table = pq.read_table(tmp_path / "out").to_pydict()
    got = _by_path(table["path"], np.array(table["gap"]))
    for path, value in _by_path(local["paths"].tolist(), local["gap"]).items():
        np.testing.assert_allclose(got[path], value, rtol=1e-5, atol=1e-5)


def test_every_input_failing_still_leaves_the_schema(
    ray_cluster: None, files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, images = files
    bad = [images / "broken.jpg", images / "notes.txt"]
    result = _ray.extract_parquet(model, bad, ["gap"], tmp_path / "out", pool="avg")
    assert result.rows == 0 and len(result.failed) == 2
    assert len(result.parts) == 1  # a part with no rows, holding the failures
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 0 and table.column_names == ["path", "gap"]
    meta = json.loads(table.schema.metadata[b"layertap"])
    assert sorted(tuple(f) for f in meta["failed"]) == sorted(result.failed)


def test_cli_engine_ray(ray_cluster: None, files: tuple[Path, Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from layertap.cli import cli

    if not any(p.name == "engine" for p in cli.commands["extract"].params):
        pytest.skip("layertap extract has no --engine option yet (wired in cli.py)")
    model, images = files
    args = ["extract", str(model), str(images), "-l", "emb=gap", "-l", "conv1", "--pool", "avg"]
    local = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "l.parquet"), "-q"])
    out = tmp_path / "ray"
    run = CliRunner().invoke(cli, [*args, "--engine", "ray", "--out", str(out), "-q"])
    assert (run.exit_code, local.exit_code) == (1, 1), run.output  # 2 inputs skipped
    want = pq.read_table(tmp_path / "l.parquet").to_pydict()
    have = pq.read_table(out).to_pydict()
    for name in ("emb", "conv1"):
        a = _by_path(want["path"], np.array(want[name]))
        b = _by_path(have["path"], np.array(have[name]))
        assert a.keys() == b.keys()
        for path in a:
            np.testing.assert_allclose(b[path], a[path], rtol=1e-5, atol=1e-5)


def test_text_and_input_arrays_equal_the_local_engine(ray_cluster: None, tmp_path: Path) -> None:
    """A keras-hub preset with a text file, and a two-input model fed from .npz: the
    Ray engine gives the local engine's rows, failed inputs included."""
    pytest.importorskip("keras_hub")
    from tests.hub_presets import bert_preset

    preset = tmp_path / "preset"
    bert_preset(preset)
    lines = tmp_path / "lines.txt"
    lines.write_text("the cat sat\n\na dog ran on the mat\nmy fish\n")
    layers, pool = (
        {"mean": "transformer_layer_1", "cls": "transformer_layer_1"},
        {
            "mean": "avg",
            "cls": "first",
        },
    )
    local = layertap.extract(str(preset), lines, layers, pool=pool)
    got = _ray.extract_parquet(preset, lines, layers, tmp_path / "text", pool=pool, batch_size=2)
    assert got.failed == local.failed == [(f"{lines}:2", "empty text")]
    table = pq.read_table(tmp_path / "text").to_pydict()
    for key in layers:
        have = _by_path(table["path"], np.array(table[key]))
        for path, value in _by_path(local["paths"].tolist(), local[key]).items():
            np.testing.assert_allclose(have[path], value, rtol=1e-5, atol=1e-5)

    tokens = keras.Input((5,), dtype="int32", name="token_ids")
    extra = keras.Input((2,), name="extra")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(9, 3)(tokens))
    joined = keras.layers.Concatenate(name="join")([pooled, extra])
    keras.Model([tokens, extra], joined).save(tmp_path / "two.keras")
    rng = np.random.default_rng(2)
    np.savez(
        tmp_path / "x.npz", token_ids=rng.integers(0, 9, (6, 5)), extra=rng.normal(size=(6, 2))
    )
    local = layertap.extract(str(tmp_path / "two.keras"), tmp_path / "x.npz", ["join"])
    _ray.extract_parquet(tmp_path / "two.keras", tmp_path / "x.npz", ["join"], tmp_path / "npz")
    table = pq.read_table(tmp_path / "npz").to_pydict()
    have = _by_path(table["path"], np.array(table["join"]))
    assert sorted(have) == sorted(local["paths"].tolist())
    for path, value in _by_path(local["paths"].tolist(), local["join"]).items():
        np.testing.assert_allclose(have[path], value, rtol=1e-5, atol=1e-5)


def test_an_image_preset_uses_its_converter_on_both_engines(
    ray_cluster: None, tmp_path: Path
) -> None:
    """The actors rebuild the preset's image converter (it pickles as its config) and
    give the local engine's rows, which are the converter's (tests/test_image_presets.py)."""
    pytest.importorskip("keras_hub")
    from PIL import Image

    from tests.hub_presets import vit_preset

    preset = tmp_path / "vit"
    vit_preset(preset)
    rng = np.random.default_rng(3)
    for i, (w, h) in enumerate([(30, 18), (16, 40), (16, 16)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    images = sorted(tmp_path.glob("*.png"))
    local = layertap.extract(str(preset), images, ["vit_encoder"], pool="avg")
    got = _ray.extract_parquet(preset, images, ["vit_encoder"], tmp_path / "out", pool="avg")
    assert [p for p, _ in got.failed] == [p for p, _ in local.failed] == [str(tmp_path / "bad.png")]
    table = pq.read_table(tmp_path / "out").to_pydict()
    have = _by_path(table["path"], np.array(table["vit_encoder"]))
    assert sorted(have) == sorted(local["paths"].tolist())
    for path, value in _by_path(local["paths"].tolist(), local["vit_encoder"]).items():
        np.testing.assert_allclose(have[path], value, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the storage dtype travels in the run whatever the backend: the TensorFlow pass",
)
def test_float16_storage_on_ray_equals_the_local_engine(
    ray_cluster: None, files: tuple[Path, Path], tmp_path: Path
) -> None:
    """``Output(dtype="float16")`` travels in the run: halffloat parts, as the local file."""
    model, images = files
    run = Run(ModelSource(str(model)), [images], LAYERS, pool=POOL,
              output=Output(str(tmp_path / "l.parquet"), dtype="float16"))  # fmt: skip
    local = layertap.extract(model, [images], LAYERS, tmp_path / "l.parquet", pool=POOL,
                             dtype="float16")  # fmt: skip
    out = tmp_path / "ray16"
    RayEngine().extract(run.replace(engine="ray", output=Output(str(out), dtype="float16")))
    with layertap.open_features(local) as a, layertap.open_features(out) as b:
        assert b.dtype("emb") == "float16"
        assert str(pq.read_schema(sorted(out.glob("part-*.parquet"))[0]).field("emb").type) == (
            "fixed_size_list<element: halffloat>[4]"
        )
        want, have = _by_path(list(a.paths), a.read("emb")), _by_path(list(b.paths), b.read("emb"))
        assert want.keys() == have.keys()
        for path in want:
            np.testing.assert_array_equal(have[path], want[path])
