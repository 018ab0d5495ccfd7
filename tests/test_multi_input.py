"""A model with two inputs fed from .npz files, Parquet columns, a dict or a list of
arrays: every row equals plain Keras; a missing or misshapen input is named."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner

import layertap
from layertap.cli import cli
from tests.conftest import assert_close


@pytest.fixture
def two_inputs() -> keras.Model:
    tokens = keras.Input((6,), dtype="int32", name="token_ids")
    extra = keras.Input((3,), name="extra")
    h = keras.layers.Embedding(20, 4, name="embed")(tokens)
    pooled = keras.layers.GlobalAveragePooling1D(name="gap")(h)
    joined = keras.layers.Concatenate(name="join")([pooled, extra])
    return keras.Model([tokens, extra], keras.layers.Dense(2, name="head")(joined))


def oracle(model: keras.Model, ids: np.ndarray, extra: np.ndarray) -> np.ndarray:
    probe = keras.Model(model.inputs, model.get_layer("join").output)
    return keras.ops.convert_to_numpy(probe([ids, extra]))


def test_npz_files_through_the_cli(two_inputs: keras.Model, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, (7, 6)).astype("int32")
    extra = rng.normal(size=(7, 3)).astype("float32")
    np.savez(tmp_path / "a.npz", token_ids=ids[:4], extra=extra[:4], label=np.arange(4))
    np.savez(tmp_path / "b.npz", token_ids=ids[4:], extra=extra[4:])
    two_inputs.save(tmp_path / "m.keras")
    out = tmp_path / "f.h5"
    args = ["extract", str(tmp_path / "m.keras"), str(tmp_path / "a.npz"), str(tmp_path / "b.npz"),
            "-l", "join", "-l", "head", "-b", "3", "-o", str(out), "-q"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        assert_close(f["join"][:], oracle(two_inputs, ids, extra))
        assert list(f["paths"].asstr())[4] == f"{tmp_path / 'b.npz'}[0]"
    np.savez(tmp_path / "bad.npz", token_ids=ids)
    result = CliRunner().invoke(
        cli, [*args[:2], str(tmp_path / "bad.npz"), *args[4:], "--overwrite"]
    )
    assert result.exit_code == 2 and "has no 'extra'" in result.stderr
    np.savez(tmp_path / "bad.npz", token_ids=ids, extra=extra[:, :2])
    result = CliRunner().invoke(
        cli, [*args[:2], str(tmp_path / "bad.npz"), *args[4:], "--overwrite"]
    )
    assert result.exit_code == 2 and "input 'extra' has rows of shape (2,)" in result.stderr


def test_parquet_columns_dicts_and_lists(two_inputs: keras.Model, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 20, (5, 6)).astype("int32")
    extra = rng.normal(size=(5, 3)).astype("float32")
    want = oracle(two_inputs, ids, extra)
    table = pa.table({"token_ids": ids.tolist(), "extra": extra.tolist(), "note": list("abcde")})
    pq.write_table(table, tmp_path / "rows.parquet")
    from_parquet = layertap.extract(two_inputs, tmp_path / "rows.parquet", ["join"])
    assert_close(from_parquet["join"], want)
    from_dict = layertap.extract(
        two_inputs, {"token_ids": ids, "extra": extra}, ["join"], batch_size=2
    )
    assert_close(from_dict["join"], want)
    assert from_dict["paths"].tolist() == [f"array[{i}]" for i in range(5)]
    from_list = layertap.extract(two_inputs, [ids, extra], ["join"])
    assert_close(from_list["join"], want)
    with pytest.raises(layertap.BadInputError, match="different numbers of rows"):
        layertap.extract(two_inputs, {"token_ids": ids, "extra": extra[:3]}, ["join"])
    with pytest.raises(layertap.BadInputError, match="has no 'extra'"):
        layertap.extract(two_inputs, {"token_ids": ids}, ["join"])
