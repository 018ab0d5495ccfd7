"""Ray engine on one machine vs the local engine: the same 1,000 JPEGs, one run each.

Model: keras.applications.MobileNetV2(weights=None, input_shape=(128, 128, 3)),
saved to a .keras file (no weights are downloaded); tap ``out_relu`` with
``pool="avg"`` (1280 floats per image). Images: 1,000 random-noise JPEGs of
160x120 to 320x240 pixels, generated into a temp folder. Both engines write
Parquet. Ray runs on this machine only (loopback, no dashboard); its start-up
(``ray.init``) is timed apart.

Usage::

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_ray.py [--images 1000]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from PIL import Image


def make_images(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = (160, 120) if i % 2 else (320, 240)
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import ray

    import layertap
    import layertap.ray as _ray

    logging.getLogger("ray").setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="layertap-bench-ray-"))
    images = tmp / "images"
    images.mkdir()
    t = time.perf_counter()
    make_images(images, args.images)
    print(f"{args.images} JPEGs written in {time.perf_counter() - t:.1f} s")
    model = tmp / "mobilenetv2_128.keras"
    keras.applications.MobileNetV2(weights=None, input_shape=(128, 128, 3)).save(model)
    layers = {"emb": "out_relu"}
    cpus = os.cpu_count() or 1
    print(f"backend {keras.backend.backend()}, {cpus} CPUs, batch size {args.batch_size}")

    rows: list[tuple[str, float, int]] = []
    t = time.perf_counter()
    local = layertap.extract(
        str(model),
        [images],
        layers,
        tmp / "local.parquet",
        pool="avg",
        batch_size=args.batch_size,
        progress=False,
    )
    rows.append(("local engine", time.perf_counter() - t, local.rows))  # type: ignore[union-attr]

    t = time.perf_counter()
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        _node_ip_address="127.0.0.1",
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter() - t
    # A fifth of the images too, to split a Ray run into a fixed start-up cost and a
    # marginal throughput (what a million images would see).
    fifth = sorted(images.iterdir())[: args.images // 5]
    try:
        for concurrency, inputs, label in [
            (1, [images], "ray, 1 actor"),
            (cpus, [images], f"ray, {cpus} actors"),
            (1, fifth, "ray, 1 actor, 1/5"),
        ]:
            if label == f"ray, {cpus} actors" and cpus == 1:
                continue
            t = time.perf_counter()
            result = _ray.extract_parquet(
                model,
                inputs,
                layers,
                tmp / label.replace(" ", "").replace(",", "_").replace("/", "of"),
                pool="avg",
                batch_size=args.batch_size,
                concurrency=concurrency,
                num_cpus=1,
            )
            rows.append((label, time.perf_counter() - t, result.rows))
    finally:
        ray.shutdown()

    base = rows[0][1]
    print(f"ray.init (not in the times below): {started:.1f} s")
    print(f"{'engine':22} {'rows':>6} {'seconds':>8} {'images/s':>9} {'time / local':>13}")
    for name, seconds, n in rows:
        print(f"{name:22} {n:6d} {seconds:8.1f} {n / seconds:9.1f} {seconds / base:13.2f}")
    (_, t_all, n_all), (_, t_fifth, n_fifth) = rows[1], rows[-1]
    marginal = (n_all - n_fifth) / (t_all - t_fifth)
    fixed = t_all - n_all / marginal
    print(
        f"ray, 1 actor: fixed start-up {fixed:.1f} s (driver plan, actor start, model "
        f"load), then {marginal:.1f} images/s; local engine {rows[0][2] / base:.1f} images/s"
    )


if __name__ == "__main__":
    main()
