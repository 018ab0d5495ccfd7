"""float16 storage (issue 18, part 5): ``extract(..., dtype="float16")`` and ``--dtype``.

Features stored as float16 in HDF5, NPZ and Parquet (halffloat) equal ``np.float16`` of
the in-memory float32 features, read back through ``open_features``; an HDF5 file is
about half the size; a run resumes only with the same dtype (the fingerprint).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner

import layertap
from layertap.cli import cli

LAYERS = {"conv": "conv", "emb": "emb"}


def small_model() -> keras.Model:
    keras.utils.set_random_seed(2)
    x = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(8, 3, name="conv")(x)
    h = keras.layers.Dense(16, name="emb")(keras.layers.Flatten()(h))
    return keras.Model(x, h)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return small_model()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(40, 6, 6, 3)).astype("float32")


def test_in_memory_float16(model: keras.Model, x: np.ndarray) -> None:
    full = layertap.extract(model, x, LAYERS, batch_size=16)
    half = layertap.extract(model, x, LAYERS, batch_size=16, dtype="float16")
    for key in LAYERS:
        assert full[key].dtype == np.float32 and half[key].dtype == np.float16
        np.testing.assert_array_equal(half[key], full[key].astype(np.float16))


@pytest.mark.parametrize("suffix", ["h5", "npz", "parquet"])
def test_files_store_float16(
    model: keras.Model, x: np.ndarray, tmp_path: Path, suffix: str
) -> None:
    if suffix == "parquet":
        pytest.importorskip("pyarrow")
    full = layertap.extract(model, x, LAYERS, batch_size=16)
    out = layertap.extract(model, x, LAYERS, tmp_path / f"f.{suffix}", batch_size=16,
                           dtype="float16")  # fmt: skip
    with layertap.open_features(out) as r:
        for key in LAYERS:
            assert r.dtype(key) == "float16"
            got = r.read(key)
            assert got.dtype == np.float16
            np.testing.assert_array_equal(got, full[key].astype(np.float16))
            # within float16 rounding of the float32 values
            np.testing.assert_allclose(got, full[key], rtol=2**-11, atol=2**-24)
        assert r.paths.tolist() == full["paths"].tolist()
    if suffix == "parquet":
        import pyarrow.parquet as pq

        field = pq.read_schema(out.path).field("conv")
        assert str(field.type.value_type) == "halffloat"


def test_hdf5_file_is_about_half(model: keras.Model, tmp_path: Path) -> None:
    # Enough rows that the 1 MiB chunks are filled (a file of a few rows is chunk-sized).
    x = np.random.default_rng(1).normal(size=(3000, 6, 6, 3)).astype("float32")
    a = layertap.extract(model, x, LAYERS, tmp_path / "f32.h5", batch_size=500)
    b = layertap.extract(model, x, LAYERS, tmp_path / "f16.h5", batch_size=500, dtype="float16")
    ratio = os.path.getsize(b.path) / os.path.getsize(a.path)
    assert ratio < 0.6, ratio
    with h5py.File(b.path) as f:
        assert f["conv"].dtype == np.float16


def test_resume_needs_the_same_dtype(model: keras.Model, x: np.ndarray, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    done = layertap.extract(model, x, LAYERS, out, batch_size=16, dtype="float16")
    again = layertap.extract(model, x, LAYERS, out, batch_size=16, dtype="float16")
    assert again.already_complete and again.rows == done.rows
    # An interrupted float16 run resumes as float16.
    with h5py.File(out, "r+") as f:
        f.attrs["complete"] = False
        f["progress"][:] = [16, 16, 0]
    resumed = layertap.extract(model, x, LAYERS, out, batch_size=16, dtype="float16")
    assert resumed.resumed == 16 and resumed.rows == 40
    with layertap.open_features(out) as r:
        full = layertap.extract(model, x, LAYERS, batch_size=16)
        np.testing.assert_array_equal(r.read("emb"), full["emb"].astype(np.float16))
    with pytest.raises(layertap.OutputError, match=r"different run \(differs in: dtype\)"):
        layertap.extract(model, x, LAYERS, out, batch_size=16)
    f32 = layertap.extract(model, x, LAYERS, tmp_path / "g.h5", batch_size=16)
    with pytest.raises(layertap.OutputError, match=r"differs in: dtype"):
        layertap.extract(model, x, LAYERS, f32.path, batch_size=16, dtype="float16")
    with pytest.raises(layertap.BadInputError, match="unknown storage dtype 'int8'"):
        layertap.extract(model, x, LAYERS, tmp_path / "h.h5", dtype="int8")


def test_cli_dtype(model: keras.Model, x: np.ndarray, tmp_path: Path) -> None:
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    args = ["extract", str(tmp_path / "m.keras"), str(tmp_path / "x.npy"), "-l", "conv", "-q"]
    done = CliRunner().invoke(cli, [*args, "--dtype", "float16", "-o", str(tmp_path / "f.npz")])
    assert done.exit_code == 0, done.output
    with layertap.open_features(tmp_path / "f.npz") as r:
        assert r.read("conv").dtype == np.float16
    done = CliRunner().invoke(cli, [*args, "--dtype", "float8", "-o", str(tmp_path / "g.npz")])
    assert done.exit_code == 2 and "Invalid value for '--dtype'" in done.output
