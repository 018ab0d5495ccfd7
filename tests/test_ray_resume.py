"""The Ray engine resumes: the driver killed mid-run, the same command again equals a
clean run, and the parts written before the kill are kept.

Each run is the real command line in its own process group, which starts its own
loopback Ray; a slow preprocessing function (``tests/slow_inputs.py``) makes the run
long enough to kill it after a few parts are written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")
# ~55 s a run: the resume logic (parts, fingerprints, renames, what is rerun) is the
# engine's, the same on every backend, so it runs once; tests/test_ray.py runs the Ray
# engine's values on every backend.
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the Ray resume logic does not depend on the backend; checked on TensorFlow",
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model file and 24 images plus 2 files that are not images."""
    d = tmp_path_factory.mktemp("ray_resume")
    inp = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(3, 3, activation="relu", name="conv")(inp)
    out = keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D(name="gap")(h))
    keras.Model(inp, out).save(d / "m.keras")
    images = d / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(24):
        pixels = rng.integers(0, 255, (10 + i % 3, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{i:02d}.png")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    (images / "notes.txt").write_text("not an image")
    return d / "m.keras", images


def command(model: Path, images: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "layertap", "extract", str(model), str(images),
        "-l", "emb=gap", "-l", "conv", "--pool", "conv=max",
        "--preprocess", "tests.slow_inputs:rescale_slowly",
        "--engine", "ray", "--concurrency", "1", "-b", "2", "--out", str(out),
    ]  # fmt: skip


def start(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # the driver and the Ray it starts: one process group
    )


def finish(args: list[str]) -> subprocess.CompletedProcess[str]:
    child = start(args)
    stdout, stderr = child.communicate(timeout=600)
    return subprocess.CompletedProcess(args, child.returncode, stdout, stderr)


def rows(out: Path) -> dict[str, dict[str, list[float]]]:
    table = pq.read_table(out).to_pydict()
    return {
        name: dict(zip(table["path"], values, strict=True))
        for name, values in table.items()
        if name != "path"
    }


def test_driver_killed_mid_run_then_resume_equals_a_clean_run(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, images = files
    clean = finish(command(model, images, tmp_path / "clean"))
    assert clean.returncode == 1, clean.stderr  # two inputs skipped
    out = tmp_path / "resumed"
    child = start(command(model, images, out))
    deadline = time.monotonic() + 300
    while len(list(out.glob("part-*.parquet"))) < 3:
        assert child.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no parts written in time"
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.communicate(timeout=60)  # reaps it and closes its pipes
    kept = {p.name for p in out.glob("part-*.parquet")}
    assert not (out / "_layertap.json").exists(), "the run finished before the kill"
    again = finish([*command(model, images, out)])
    assert again.returncode == 1, again.stderr
    assert "resumed after" in again.stdout, again.stdout
    summary = json.loads((out / "_layertap.json").read_text())
    assert kept <= set(summary["parts"])  # the whole parts written before the kill stay
    assert not list(out.glob("_tmp-*"))
    want, got = rows(tmp_path / "clean"), rows(out)
    assert got.keys() == want.keys()
    for name in want:
        assert sorted(got[name]) == sorted(want[name])  # every input once, no duplicates
        for path, value in want[name].items():
            np.testing.assert_allclose(got[name][path], value, rtol=1e-6, atol=1e-6)
    assert pq.read_table(out).num_rows == 24
    clean_summary = json.loads((tmp_path / "clean" / "_layertap.json").read_text())
    assert sorted(map(tuple, summary["failed"])) == sorted(map(tuple, clean_summary["failed"]))
    for key in ("fingerprint", "rows", "taps", "layers", "pool", "preprocessing"):
        assert summary[key] == clean_summary[key], key
    done = finish([*command(model, images, out)])  # a third time: complete, nothing to do
    assert "complete already" in done.stdout, done.stdout
