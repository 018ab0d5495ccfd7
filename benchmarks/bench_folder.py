"""A folder of JPEGs to features on disk: layertap extract vs predict on decoded images.

Writes ``--images`` random 224x224 JPEGs into a temporary folder and saves
MobileNetV2 (``weights=None``, 224x224, with its classifier) as a ``.keras`` file.

- **throughput**: images/s of ``layertap.extract(model file, folder, {"logits": -1},
  out="features.h5")`` (decode in threads, forward pass, HDF5 writes; the model load
  and one warm-up run on a few images are not timed) over images/s of
  ``model.predict`` on the same images already decoded into one array in memory.
  Target >= 0.85.
- **memory**: peak RSS of a fresh process running ``layertap extract`` on
  ``--rss-large`` images over that on ``--rss-small`` images. Target <= 1.10.

Usage::

    python benchmarks/bench_folder.py                     # tensorflow (the default)
    KERAS_BACKEND=jax python benchmarks/bench_folder.py --images 500
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SIZE = 224


def write_jpegs(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        # a smooth picture plus noise: decodes about as fast as a photo
        shift = rng.integers(0, SIZE)
        img = np.roll(base, shift, axis=1) // 2 + rng.integers(0, 128, (1, SIZE, 3), np.uint8)
        Image.fromarray(img).save(folder / f"img_{i:05d}.jpg", quality=90)


def child_rss(model: Path, folder: Path, out: Path, batch: int) -> None:
    """Run one extract in this process; print peak RSS in MiB."""
    import layertap

    layertap.extract(model, folder, {"logits": -1}, out, batch_size=batch, progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rss-small", type=int, default=200)
    parser.add_argument("--rss-large", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_rss(Path(args.child[0]), Path(args.child[1]), Path(args.child[2]), args.batch)
        return

    import keras
    import numpy as np

    import layertap
    from layertap.io.data import ImageSpec, expand_inputs, load_image

    tmp = Path(tempfile.mkdtemp(prefix="layertap-bench-"))
    n_big = max(args.images, args.rss_large)
    t0 = time.perf_counter()
    write_jpegs(tmp / "all", n_big)
    print(f"wrote {n_big} JPEGs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    model_file = tmp / "mobilenetv2.keras"
    keras.applications.MobileNetV2(weights=None, input_shape=(SIZE, SIZE, 3)).save(model_file)
    model = layertap.load_model(model_file)

    # Folders holding the first k images, as hard links.
    def subset(k: int) -> Path:
        d = tmp / f"n{k}"
        d.mkdir()
        for p in sorted((tmp / "all").iterdir())[:k]:
            os.link(p, d / p.name)
        return d

    folder = subset(args.images)
    warm = subset(args.batch * 2)

    # layertap extract: warm up (trace) on two batches, then time the whole folder.
    layertap.extract(model, warm, {"logits": -1}, tmp / "warm.h5", batch_size=args.batch)
    t0 = time.perf_counter()
    result = layertap.extract(
        model, folder, {"logits": -1}, tmp / "features.h5", batch_size=args.batch, progress=False
    )
    t_extract = time.perf_counter() - t0
    assert isinstance(result, layertap.ExtractResult) and result.rows == args.images

    # predict on the same images, decoded beforehand (decoding not timed).
    spec = ImageSpec.from_model(model)
    x = np.stack([load_image(p, spec) for p in expand_inputs([folder])])
    model.predict(x[: args.batch * 2], batch_size=args.batch, verbose=0)
    t0 = time.perf_counter()
    model.predict(x, batch_size=args.batch, verbose=0)
    t_predict = time.perf_counter() - t0
    del x

    rss = {}
    for k in (args.rss_small, args.rss_large):
        d = folder if k == args.images else subset(k)
        proc = subprocess.run(
            [sys.executable, __file__, "--batch", str(args.batch), "--child",
             str(model_file), str(d), str(tmp / f"rss{k}.h5")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rss[k] = float(proc.stdout.strip().splitlines()[-1])

    ips_extract = args.images / t_extract
    ips_predict = args.images / t_predict
    ratio_speed = ips_extract / ips_predict
    ratio_rss = rss[args.rss_large] / rss[args.rss_small]
    print(
        f"backend {keras.backend.backend()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"MobileNetV2 {SIZE}x{SIZE}, batch {args.batch}"
    )
    print(f"{'measure':48} {'value':>10} {'target':>8}  ok")
    rows = [
        (f"layertap extract, folder -> HDF5 ({args.images} JPEGs), img/s", ips_extract, "", ""),
        ("model.predict on decoded arrays, img/s", ips_predict, "", ""),
        ("throughput ratio extract / predict", ratio_speed, ">= 0.85", ratio_speed >= 0.85),
        (f"peak RSS, {args.rss_small} images, MiB", rss[args.rss_small], "", ""),
        (f"peak RSS, {args.rss_large} images, MiB", rss[args.rss_large], "", ""),
        (f"RSS ratio {args.rss_large} / {args.rss_small}", ratio_rss, "<= 1.10", ratio_rss <= 1.10),
    ]
    for name, value, target, ok in rows:
        mark = "" if ok == "" else ("yes" if ok else "NO")
        print(f"{name:48} {value:10.2f} {target:>8}  {mark}")


if __name__ == "__main__":
    main()
