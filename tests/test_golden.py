"""Files equal to the ones written before the engines shared one run plan.

The golden files in ``tests/golden/`` were written by commit 3f361ce (see
``tests/golden/runs.py``); the same runs today must give the same datasets, columns,
field metadata and attributes, for HDF5, NPZ and Parquet, and for the Ray engine's
Parquet folder. Values are compared exactly on TensorFlow (the backend that wrote
them) and to 1e-6 on the others.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from tests.golden.runs import GOLDEN, read_any, runs, write_inputs

ROOT = Path(__file__).resolve().parents[1]
EXACT = keras.backend.backend() == "tensorflow"


def assert_equal(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert sorted(actual) == sorted(expected), where
        for key in expected:
            assert_equal(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list | tuple) and not (
        expected and isinstance(expected[0], float | list) and not EXACT
    ):
        assert isinstance(actual, list | tuple) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_equal(a, e, f"{where}[{i}]")
    elif isinstance(expected, np.ndarray) or isinstance(expected, list | tuple):
        a, e = np.asarray(actual), np.asarray(expected)
        if e.dtype.kind == "f" and not EXACT:
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6, err_msg=where)
        else:
            np.testing.assert_array_equal(a, e, err_msg=where)
    elif isinstance(expected, float) and not EXACT:
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6), where
    else:
        assert actual == expected, where


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("golden")
    write_inputs(folder)
    return folder


@pytest.mark.parametrize("name", ["f.h5", "f.npz", "f.parquet", "ray"])
def test_outputs_equal_the_golden_files(folder: Path, name: str) -> None:
    if name == "ray":
        pytest.importorskip("ray")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "layertap", *runs()[name]],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr  # the two bad files
    assert_equal(read_any(folder / name), read_any(GOLDEN / name), name)
