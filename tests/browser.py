"""Headless Chromium for the report tests: open a page offline, count decoded images,
read the console, take a screenshot. Tests skip with a reason when no browser is found."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

SKIP_REASON = "no chromium (apt-get install -y chromium)"
#: Pages, HTML and the docs site are the same whatever the Keras backend: their tests run
#: on the TensorFlow pass of `make test` only (the other passes skip them with this).
ONCE_REASON = "backend-independent (a page, the docs): run on the TensorFlow pass only"


def not_first_pass() -> bool:
    """Whether this is a pass of `make test` other than TensorFlow's."""
    import keras

    return bool(keras.backend.backend() != "tensorflow")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser() -> list[str]:
    binary = chromium()
    assert binary is not None
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND"]  # fmt: skip


def open_offline(page: Path) -> tuple[int, int, list[str]]:
    """``(images, images that did not decode, console lines)`` of ``page`` opened with
    every host unreachable. The console holds one line of the check's own."""
    check = page.with_name("check.html")
    script = (
        "<script>addEventListener('load',()=>{const i=[...document.images];"
        "const bad=i.filter(x=>!(x.complete&&x.naturalWidth>0)).length;"
        "document.title='CHECK '+i.length+' '+bad;console.log('layertap-check');});</script>"
    )
    check.write_text(page.read_text().replace("</body>", script + "</body>"))
    run = subprocess.run(
        [*_browser(), "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
         "--dump-dom", check.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    title = run.stdout.split("<title>CHECK ", 1)[1].split("</title>", 1)[0]
    images, bad = (int(n) for n in title.split())
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    return images, bad, console


def screenshot(page: Path, size: tuple[int, int] = (1000, 800)) -> np.ndarray:
    """The page's pixels (grayscale), ``size`` = (width, height)."""
    shot = page.with_name("shot.png")
    subprocess.run(
        [*_browser(), f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}",
         page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    with Image.open(shot) as img:
        return np.asarray(img.convert("L"), np.float32)
