"""Stages 6 and 7, reduce and write: each format read back and compared with plain Keras."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import layertap
from layertap.cli import cli
from layertap.io.reduce import parse_pool_options, resolve_pool
from layertap.io.schema import TapInfo, TapSchema, parquet_schema

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def model_and_x() -> tuple[keras.Model, np.ndarray]:
    keras.utils.set_random_seed(5)
    x_in = keras.Input((6, 6, 2), name="x")
    h = keras.layers.Conv2D(3, 3, padding="same", name="conv")(x_in)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(x_in, keras.layers.Dense(4, name="out")(h), name="m")
    x = np.random.default_rng(0).normal(size=(7, 6, 6, 2)).astype("float32")
    return model, x


def conv_of(model: keras.Model, x: np.ndarray) -> np.ndarray:
    sub = keras.Model(model.input, model.get_layer("conv").output)
    return np.asarray(keras.ops.convert_to_numpy(sub(x)))


def read(path: Path) -> tuple[dict[str, np.ndarray], list[str], dict[str, object]]:
    """Any layertap output -> ({column: array}, paths, metadata)."""
    if path.suffix == ".h5":
        with h5py.File(path) as f:
            cols = {
                n: d[:] for n, d in f.items() if isinstance(d, h5py.Dataset) and "key" in d.attrs
            }
            return cols, list(f["paths"].asstr()), dict(f.attrs)
    if path.suffix == ".npz":
        with np.load(path) as z:
            skip = {"paths", "failed_path", "failed_reason", "__layertap__"}
            cols = {k: z[k] for k in z.files if k not in skip}
            return cols, z["paths"].tolist(), json.loads(str(z["__layertap__"]))
    table = pq.read_table(path)
    cols = {}
    for field in table.schema:
        if field.name != "path":
            shape = json.loads(field.metadata[b"shape"])
            flat = np.asarray(table[field.name].combine_chunks().flatten(), np.float32)
            cols[field.name] = flat.reshape(len(table), *shape)
    meta = json.loads(table.schema.metadata[b"layertap"])
    return cols, table["path"].to_pylist(), meta


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".parquet"])
def test_each_writer_reads_back_equal_to_keras(
    model_and_x: tuple[keras.Model, np.ndarray], tmp_path: Path, suffix: str
) -> None:
    model, x = model_and_x
    conv = conv_of(model, x)
    out = tmp_path / f"f{suffix}"
    pool = {"*": "avg", "raw": "keep", "flat": "flatten"}
    layers = {"raw": "conv", "avg": "conv", "mx": "conv", "flat": "conv", "gap": "gap"}
    result = layertap.extract(model, x, layers, out, batch_size=3, pool={**pool, "mx": "max"})
    assert isinstance(result, layertap.ExtractResult)
    assert (result.rows, result.failed, result.format) == (
        7,
        [],
        out.suffix.strip(".").replace("h5", "hdf5"),
    )
    cols, paths, meta = read(out)
    assert paths == [f"array[{i}]" for i in range(7)]
    np.testing.assert_allclose(cols["raw"], conv, **TOL)
    np.testing.assert_allclose(cols["avg"], conv.mean(axis=(1, 2)), **TOL)
    np.testing.assert_allclose(cols["mx"], conv.max(axis=(1, 2)), **TOL)
    np.testing.assert_allclose(cols["flat"], conv.reshape(7, -1), **TOL)
    np.testing.assert_allclose(cols["gap"], conv.mean(axis=(1, 2)), **TOL)  # (n, c) kept as is
    taps = json.loads(str(meta["taps"]))
    assert taps["mx"]["pool"] == "max" and taps["raw"]["layer"] == "conv"
    assert not list(tmp_path.glob(".*"))  # no spool or temporary file left
    # The same call again finds the finished file and leaves it as it is.
    before = out.stat().st_mtime_ns
    again = layertap.extract(model, x, layers, out, batch_size=3, pool={**pool, "mx": "max"})
    assert isinstance(again, layertap.ExtractResult) and again.rows == 7
    assert out.stat().st_mtime_ns == before
    # Another run (other pooling) is refused, then allowed with overwrite.
    with pytest.raises(layertap.OutputError, match="differs in: pool.*overwrite"):
        layertap.extract(model, x, layers, out, pool="avg")
    layertap.extract(model, x, {"g": "gap"}, out, overwrite=True)
    assert list(read(out)[0]) == ["g"]


def test_parquet_schema_is_one_function() -> None:
    taps = TapSchema.build(
        [
            TapInfo("a/b", "a/b", (None, 2, 2), "float16"),
            TapInfo("c", "gap", (None, 5, 3), "float32"),
        ],
        {"a/b": "keep", "c": "avg"},
        "parquet",
    )
    assert [(c.name, c.shape, c.reducer) for c in taps] == [
        ("a.b", (2, 2), "keep"),
        ("c", (3,), "avg"),
    ]
    schema = parquet_schema(taps, {"model": "m.keras"})
    assert schema.names == ["path", "a.b", "c"]
    assert str(schema.field("a.b").type) == "fixed_size_list<item: float>[4]"
    assert schema.field("a.b").metadata[b"key"] == b"a/b"
    assert json.loads(schema.metadata[b"layertap"]) == {"model": "m.keras"}


def test_pool_spec_parsing_and_errors() -> None:
    assert parse_pool_options([]) == "keep"
    assert parse_pool_options(["emb=gap"]) == {"*": "keep", "emb": "avg"}
    assert resolve_pool("gmp", ["a"]) == {"a": "max"}
    with pytest.raises(layertap.BadSpecError, match="'median'.*'keep'"):
        parse_pool_options(["median"])
    with pytest.raises(layertap.BadSpecError, match="'nosuch'"):
        resolve_pool({"nosuch": "avg"}, ["a"])


def test_cli_pool_and_format_options(
    model_and_x: tuple[keras.Model, np.ndarray], tmp_path: Path
) -> None:
    model, x = model_and_x
    model_file = tmp_path / "m.keras"
    model.save(model_file)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "features.bin"
    args = ["extract", str(model_file), str(tmp_path / "x.npy"), "-l", "c=conv", "-l", "gap"]
    result = CliRunner().invoke(
        cli, [*args, "--pool", "max", "--pool", "gap=keep", "-o", str(out), "--format", "parquet"]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    conv = conv_of(model, x)
    got = np.asarray(table["c"].combine_chunks().flatten()).reshape(7, 3)
    np.testing.assert_allclose(got, conv.max(axis=(1, 2)), **TOL)
    assert table["path"][0].as_py() == f"{tmp_path / 'x.npy'}[0]"
    bad = CliRunner().invoke(cli, [*args, "--pool", "c=median", "-o", str(tmp_path / "g.h5")])
    assert bad.exit_code == 2 and "'median'" in bad.stderr
