"""Quiet by default: ``layertap`` prints its own lines, not its backends' log lines.

The commands run as real processes (the backends write their lines to file descriptor
2 from C++, at import, which an in-process runner would not see), with the current
Keras backend and without ``TF_CPP_MIN_LOG_LEVEL`` and the other variables layertap
sets. What layertap itself writes to stderr is exactly:

- its progress bar (``tqdm``, only when stderr is a terminal): ``  0%|...| 0/2 [...]``;
- ``layertap: skipped PATH: REASON`` for an input that cannot be read;
- ``layertap: error: ...`` for a usage error.

Its summary (``wrote N rows to ...``) and ``layertap layers``' table go to stdout.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest
from click.testing import CliRunner

from layertap.cli import cli

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "model" / "shapes_cnn.keras"
IMAGES = [ROOT / "examples" / "images" / name for name in ("00_circle.png", "01_square.jpg")]
#: What layertap sets when not --verbose (each only where the user has not).
QUIET_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "RAY_DEDUP_LOGS_SKIP_REGEX")

#: layertap's own stderr lines (see the module docstring).
OWN_LINE = re.compile(
    r"layertap: skipped .+: .+"
    r"|layertap: error: .+"
    r"|\d+%\|[^|]*\| *\d+/\d+ \[[^\]]*\]"
)
#: Pieces of the lines TensorFlow, XLA, absl, gRPC and Ray print on their own.
NOISE = (
    "oneDNN",
    "cuda",
    "absl",
    "TensorFlow binary",
    "cpu_feature_guard",
    "I0000",
    "W0000",
    "E0000",
    "computation placer",
    "Unable to register",
    "port.cc",
    "core_worker",
    " INFO ",
    "(MapWorker",
    "Token authentication",
    "Ray Data",
    "streaming_executor",
)


def command(*args: object) -> list[str]:
    """``layertap ARGS``: the installed console script, else ``python -m layertap``."""
    script = shutil.which("layertap", path=str(Path(sys.executable).parent))
    start = [script] if script else [sys.executable, "-m", "layertap"]
    return [*start, *(str(a) for a in args)]


def environment() -> dict[str, str]:
    """This process's environment, on the current backend, without what layertap sets."""
    env = {k: v for k, v in os.environ.items() if k not in QUIET_VARIABLES}
    return {**env, "KERAS_BACKEND": keras.backend.backend(), "COLUMNS": "100"}


def assert_own_lines_only(stderr: str, stdout: str = "") -> list[str]:
    """Every piece of stderr (split at newlines and carriage returns) is layertap's own."""
    pieces = [p.strip() for p in re.split(r"[\r\n]+", stderr) if p.strip()]
    strangers = [p for p in pieces if not OWN_LINE.fullmatch(p)]
    assert not strangers, stderr
    for marker in NOISE:
        assert marker.lower() not in (stderr + stdout).lower(), (marker, stderr, stdout)
    return pieces


def run_on_a_terminal(args: list[str], timeout: float = 300) -> tuple[int, str, str]:
    """Run ``args`` with stderr on a pseudo-terminal (so the progress bar shows)."""
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, env=environment())
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                if child.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # Linux: EIO once the child has closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        stdout, _ = child.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if child.poll() is None:
            child.kill()
    return child.returncode, stdout.decode(), seen.decode(errors="replace")


# --- as a process ---------------------------------------------------------------------


def test_layers_prints_only_the_table() -> None:
    proc = subprocess.run(
        command("layers", MODEL),
        capture_output=True,
        text=True,
        env=environment(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n", 1)[0].split() == [
        "index", "path", "class", "output", "shape", "params",
    ]  # fmt: skip
    assert assert_own_lines_only(proc.stderr, proc.stdout) == []


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal needs POSIX")
def test_extract_prints_its_progress_bar_and_summary_only(tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    code, stdout, stderr = run_on_a_terminal(
        command("extract", MODEL, *IMAGES, "-l", "gap", "-o", out, "-b", "1")
    )
    assert code == 0, stderr
    assert stdout == f"wrote 2 rows to {out}: gap (2, 64)\n"
    pieces = assert_own_lines_only(stderr, stdout)
    assert any("/2 [" in p for p in pieces), stderr  # the bar still sees a terminal


def test_only_the_native_log_lines_are_left_out() -> None:
    """What C code writes to descriptor 2 passes but for the backends' log lines; what
    Python writes to ``sys.stderr`` passes as it is, to the same terminal (or pipe)."""
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796278462.961505    3176 port.cc:153] oneDNN custom operations are on.",
        "E0000 00:00:1700000000.000000   12 cuda_dnn.cc:8310] Unable to register cuDNN factory",
        "W1203 06:16:34.176000  4259 fork_posix.cc:71] Other threads are calling into gRPC",
        "2024-01-01 12:00:00.123456: I tensorflow/core/util/port.cc:113] oneDNN custom ops",
        "[2026-12-03 06:16:39,722 E 4259 4259] core_worker.cc:2465: Actor with class name",
        "F0000 00:00:1700000000.000000   12 check.cc:1] Check failed: kept, a crash",
        "a native line that is not a log line",
    ]
    native = "".join(line + "\n" for line in lines).encode()
    code = (
        "import os, sys\n"
        "from layertap.cli import _native_logs_hidden\n"
        "tty = sys.stderr.isatty()\n"
        "with _native_logs_hidden():\n"
        f"    os.write(2, {native!r})\n"
        "    print('python line', sys.stderr.isatty() == tty, file=sys.stderr)\n"
        "    os.write(2, b'no newline at the end')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # The pipe's lines and Python's reach stderr in either order; the last piece, last.
    assert proc.stderr.endswith("\nno newline at the end"), proc.stderr
    expected = [*lines[-2:], "python line True", "no newline at the end"]
    assert sorted(proc.stderr.splitlines()) == sorted(expected)


# --- the environment (in process) ----------------------------------------------------


@pytest.fixture
def unset(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No quiet variable set; after the test, each as it was (unset ones unset again)."""
    for name in QUIET_VARIABLES:
        monkeypatch.setenv(name, "")  # recorded, so that monkeypatch restores it
        monkeypatch.delenv(name)
    return monkeypatch


def test_quiet_sets_the_variables_the_user_has_not(unset: pytest.MonkeyPatch) -> None:
    unset.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    result = CliRunner().invoke(cli, ["layers", str(MODEL), "--max-depth", "0"])
    assert result.exit_code == 0, result.output
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's, left alone
    assert os.environ["GRPC_VERBOSITY"] == "ERROR"
    assert "RAY_DEDUP_LOGS_SKIP_REGEX" in os.environ


def test_verbose_sets_nothing(unset: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, ["--verbose", "layers", str(MODEL), "--max-depth", "0"])
    assert result.exit_code == 0, result.output
    assert [name for name in QUIET_VARIABLES if name in os.environ] == []


# --- Ray -----------------------------------------------------------------------------


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="~20 s; Ray's logging does not depend on the Keras backend: checked on TensorFlow",
)
def test_extract_on_ray_prints_no_ray_lines(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "feats"
    proc = subprocess.run(
        command("extract", MODEL, *IMAGES, "-l", "gap", "-o", out, "--engine", "ray",
                "--concurrency", "1"),
        capture_output=True,
        text=True,
        env=environment(),
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote 2 rows to {out}/ (Parquet parts)\n"
    assert assert_own_lines_only(proc.stderr, proc.stdout) == []
