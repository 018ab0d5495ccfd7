"""Nothing lost: interrupted runs (Ctrl-C in process, SIGKILL of a real process) resume
to exactly the file an uninterrupted run writes; other runs' files are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from layertap.cli import cli
from layertap.graph.extractor import Extractor
from tests.test_cli import build_model, write_images


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "head.keras"
    build_model().save(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    for i in range(3):
        write_images(root / f"set{i}")
    (root / "set1" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "set2" / "notes.txt").write_text("not an image")
    return root  # 15 images and 2 bad files


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def command(model_file: Path, folder: Path, out: Path) -> list[str]:
    return [
        "extract", str(model_file), str(folder), "-l", "backbone/conv", "-l", "emb=embedding",
        "--pool", "backbone/conv=max", "-b", "2", "-o", str(out), "-q",
    ]  # fmt: skip


def contents(path: Path) -> dict[str, Any]:
    """Everything a reader sees, for an exact comparison."""
    if path.suffix == ".h5":
        with h5py.File(path) as f:
            out: dict[str, Any] = {
                n: d[:] for n, d in f.items() if isinstance(d, h5py.Dataset) and n != "progress"
            }
            out["paths"] = list(f["paths"].asstr())
            out["failed"] = list(
                zip(f["failed/path"].asstr(), f["failed/reason"].asstr(), strict=True)
            )
            out["rows"] = int(f.attrs["rows"])
            out["complete"] = bool(f.attrs["complete"])
            return out
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: z[k] for k in z.files if k != "__layertap__"}
    table = pq.read_table(path)
    return {name: table[name].to_pylist() for name in table.column_names}


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def clean(model_file: Path, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "f.h5"
    result = run(*command(model_file, folder, out))
    assert result.exit_code == 1, result.output  # two inputs failed
    return out


def interrupt_after(monkeypatch: pytest.MonkeyPatch, batches: int) -> None:
    """Make the forward pass raise KeyboardInterrupt (as Ctrl-C does) on a later batch."""
    calls = {"n": 0}
    original = Extractor.__call__

    def call(self: Extractor, x: Any) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] > batches:
            raise KeyboardInterrupt
        return original(self, x)

    monkeypatch.setattr(Extractor, "__call__", call)


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".parquet"])
def test_ctrl_c_then_resume_equals_a_clean_run(
    model_file: Path,
    folder: Path,
    clean: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
) -> None:
    out = tmp_path / f"f{suffix}"
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        result = run(*command(model_file, folder, out))
    assert result.exit_code == 130, result.output
    assert "interrupted; run the same command again to resume" in result.stderr
    spool = out if suffix == ".h5" else tmp_path / f".f{suffix}.partial.h5"
    with h5py.File(spool) as f:  # readable, and says how far it got
        assert f["progress"][0] == 6 and len(f["paths"]) == 6
        assert not f.attrs["complete"]
    resumed = run(*command(model_file, folder, out))
    assert resumed.exit_code == 1, resumed.output
    assert resumed.stderr.count("layertap: skipped") == 2  # also the one from the first run
    if suffix == ".h5":
        assert_same(contents(out), contents(clean))
    else:
        clean_other = tmp_path / f"clean{suffix}"
        assert run(*command(model_file, folder, clean_other)).exit_code == 1
        assert_same(contents(out), contents(clean_other))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_rows_past_the_last_commit_are_cut(
    model_file: Path, folder: Path, clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "f.h5"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        assert run(*command(model_file, folder, out)).exit_code == 130
    with h5py.File(out, "r+") as f:  # a batch half written when the process died
        for name in ("emb", "backbone.conv", "paths"):
            f[name].resize(len(f[name]) + 2, axis=0)
        f["paths"][-2:] = ["torn", "torn"]
    assert run(*command(model_file, folder, out)).exit_code == 1
    assert_same(contents(out), contents(clean))


def test_another_run_is_refused_and_left_untouched(
    model_file: Path, folder: Path, clean: Path, tmp_path: Path
) -> None:
    out = tmp_path / "f.h5"
    out.write_bytes(clean.read_bytes())
    args = command(model_file, folder, out)
    other = [a if a != "emb=embedding" else "emb=gap" for a in args]
    result = run(*other)
    assert result.exit_code == 2
    assert "differs in: taps" in result.stderr and "--overwrite" in result.stderr
    assert out.read_bytes() == clean.read_bytes()
    again = run(*args[:-1])  # the same run: finished already, nothing to do
    assert again.exit_code == 1 and out.read_bytes() == clean.read_bytes()
    assert again.stdout == f"{out} is complete already (15 rows, 2 failed); nothing to do\n"
    assert run(*other, "--overwrite").exit_code == 1
    with h5py.File(out) as f:
        assert json.loads(f.attrs["taps"])["emb"]["layer"] == "gap"


CHILD = """
import sys, time
from layertap.io import write as _write
from layertap.cli import main

original = _write.FeatureWriter.write

def write(self, *args, **kwargs):
    original(self, *args, **kwargs)
    print("committed", self.rows, flush=True)
    time.sleep(0.05)

_write.FeatureWriter.write = write
main(sys.argv[1:])
"""


def test_sigkill_mid_run_then_resume_equals_a_clean_run(
    model_file: Path, folder: Path, clean: Path, tmp_path: Path
) -> None:
    out = tmp_path / "f.h5"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *command(model_file, folder, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        for _ in range(3):
            assert child.stdout.readline().startswith("committed")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with h5py.File(out) as f:
        rows = int(f["progress"][0])
        assert 6 <= rows < 15 and not f.attrs["complete"]
        assert list(f["paths"].asstr())[:rows] == contents(clean)["paths"][:rows]
    result = run(*command(model_file, folder, out)[:-1])  # without -q: says it resumed
    assert result.exit_code == 1, result.output
    assert f"(resumed after {rows})" in result.stdout
    assert_same(contents(out), contents(clean))
