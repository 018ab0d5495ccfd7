"""What layertap costs next to a plain ``predict``: ratios measured side by side.

MobileNetV2 (``weights=None``, 160x160, alpha 1.0) nested in a Sequential head
(``gap``, ``logits``); each measurement predicts ``--batches`` batches of 32 images.
All variants run interleaved, once to warm up (tracing, compiling) and then
``--repeats`` rounds in a rotating order; the table reports ratios of medians and,
since a shared 2-core VM sometimes runs a whole measurement at half speed (times
cluster at x, 2x, 4x), also ratios of the best times.

Usage::

    python benchmarks/bench_core.py                       # tensorflow (the default)
    python benchmarks/bench_core.py --backend jax --repeats 5 --batches 4
    KERAS_BACKEND=torch python benchmarks/bench_core.py

Rows (ratio = median time / median time of the row it is compared with):

- ``seven taps``: one Extractor, five taps inside the backbone + gap + logits,
  vs plain ``model.predict``. Target <= 1.05.
- ``early tap``: one Extractor on backbone/block_3_expand_relu vs a hand-built
  truncated model of the same prefix (target <= 1.05), and vs the full model.
- ``per-layer recipe``: one truncated model per tap, each predicted separately
  (inner taps truncated from the backbone's own graph, since the nested recipe fails
  in Keras 3), vs plain ``model.predict``, for comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

BATCH = 32
EARLY = "block_3_expand_relu"
SIZE = 160
# five taps inside the backbone, at various depths
INNER = ["block_1_expand_relu", EARLY, "block_6_project_BN", "block_12_add", "out_relu"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--backend",
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        choices=["tensorflow", "jax", "torch"],
        help="Keras backend (default: $KERAS_BACKEND or tensorflow)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--batches", type=int, default=4, help="batches of 32 per measurement")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np

    import layertap

    if keras.backend.backend() != args.backend:
        sys.exit(f"keras was already imported with backend {keras.backend.backend()!r}")

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(SIZE, SIZE, 3), alpha=1.0, name="backbone"
    )
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    inner = INNER
    taps = [f"backbone/{n}" for n in inner] + ["gap", "logits"]

    n = args.batches * BATCH
    x = np.random.default_rng(0).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype("float32")

    ex7 = layertap.Extractor(model, taps)
    ex_early = layertap.Extractor(model, f"backbone/{EARLY}")
    hand_early = keras.Model(base.inputs, base.get_layer(EARLY).output)
    # the same seven outputs from a multi-output model built by hand in plain Keras
    # (gap and logits re-called on the backbone's own output), and the same graph
    # with every output reduced to one number per image: the compute of seven taps
    # without the cost of handing their feature maps to numpy
    gap = model.get_layer("gap")(base.outputs[0])
    same7 = {n: base.get_layer(n).output for n in inner}
    same7 |= {"gap": gap, "logits": model.get_layer("logits")(gap)}
    hand7 = keras.Model(base.inputs, same7)
    reduced7 = keras.Model(
        base.inputs,
        {k: keras.ops.mean(v, axis=tuple(range(1, len(v.shape)))) for k, v in same7.items()},
    )
    recipe = [keras.Model(base.inputs, base.get_layer(name).output) for name in inner]
    recipe.append(keras.Model(model.inputs, model.get_layer("gap").output))
    recipe.append(keras.Model(model.inputs, model.outputs[0]))

    def predict(m: Any) -> Callable[[], Any]:
        return lambda: m.predict(x, batch_size=BATCH, verbose=0)

    variants: dict[str, Callable[[], Any]] = {
        "plain": predict(model),
        "ex7": lambda: ex7.predict(x, batch_size=BATCH),
        "ex_early": lambda: ex_early.predict(x, batch_size=BATCH),
        "hand_early": predict(hand_early),
        "hand7": predict(hand7),
        "reduced7": predict(reduced7),
        "recipe7": lambda: [m.predict(x, batch_size=BATCH, verbose=0) for m in recipe],
    }

    load0 = os.getloadavg()
    # warm-up (trace / compile) and a sanity check that the numbers agree
    t0 = time.perf_counter()
    outs = {k: f() for k, f in variants.items()}
    warmup = time.perf_counter() - t0
    np.testing.assert_allclose(outs["ex7"]["logits"], outs["plain"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        outs["ex_early"][f"backbone/{EARLY}"], outs["hand_early"], rtol=1e-4, atol=1e-4
    )

    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for r in range(args.repeats):
        rotated = order[r % len(order) :] + order[: r % len(order)]
        for k in rotated:
            t = time.perf_counter()
            variants[k]()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}

    def ms(k: str) -> str:
        return f"{1000 * med[k] / args.batches:.1f}"

    rows = [
        ("seven taps (5 nested + gap + logits)", "ex7", "plain", "<= 1.05"),
        ("seven taps, overhead of layertap", "ex7", "hand7", "<= 1.05"),
        ("seven taps, compute only (diagnostic)", "reduced7", "plain", "~1"),
        ("early tap backbone/" + EARLY, "ex_early", "hand_early", "<= 1.05"),
        ("early tap vs full model", "ex_early", "plain", "well < 1"),
        ("per-layer recipe, same seven taps", "recipe7", "plain", "(reference)"),
    ]
    labels = {
        "plain": "model.predict",
        "ex7": "Extractor(7 taps).predict",
        "ex_early": "Extractor(early).predict",
        "hand_early": "hand-built prefix predict",
        "hand7": "same 7 outputs, hand-built",
        "reduced7": "same 7, each reduced to 1 number",
        "recipe7": "7 truncated models",
    }
    print(
        f"backend={keras.backend.backend()} keras={keras.__version__} "
        f"layertap={layertap.__version__} python={platform.python_version()} "
        f"cpus={os.cpu_count()} machine={platform.machine()} "
        f"loadavg before={load0[0]:.2f} after={os.getloadavg()[0]:.2f}"
    )
    print(
        f"MobileNetV2 {SIZE}x{SIZE} alpha 1.0 (weights=None) in a Sequential head; "
        f"batch {BATCH}, {args.batches} batches ({n} images) per measurement, "
        f"median of {args.repeats} interleaved repeats after a warm-up ({warmup:.1f}s)"
    )
    print(
        f"jit_compile: model={model.jit_compile} ex7.model={ex7.model.jit_compile} "
        f"ex_early.model={ex_early.model.jit_compile} hand_early={hand_early.jit_compile}"
    )
    print("taps:", ", ".join(taps))
    mb = {k: sum(v.nbytes for v in outs[k].values()) / 2**20 for k in ("ex7", "hand7")}
    print(
        f"features per measurement: ex7 {mb['ex7']:.0f} MiB, hand7 {mb['hand7']:.0f} MiB; "
        f"input {x.nbytes / 2**20:.0f} MiB"
    )
    print()
    print(
        "| measurement | variant | baseline | ms/batch | baseline ms/batch "
        "| ratio (medians) | ratio (best of) | target |"
    )
    print("|---|---|---|---:|---:|---:|---:|---|")
    for title, a, b, target in rows:
        ratio = med[a] / med[b]
        best = min(times[a]) / min(times[b])
        print(
            f"| {title} | {labels[a]} | {labels[b]} | {ms(a)} | {ms(b)} | "
            f"{ratio:.3f} | {best:.3f} | {target} |"
        )
    print()
    print("all repeats (s):")
    for k, v in times.items():
        print(f"  {k:10s} " + " ".join(f"{t:.3f}" for t in v) + f"  (min {min(v):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
