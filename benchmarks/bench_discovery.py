"""What discovery costs: ``layertap.list_layers`` on keras-hub backbones, per backend.

The backbones are the test matrix's (``tests/hub_backbones.py``: small configs, random
weights, nothing downloaded). For each backbone and backend, one fresh process builds
the backbone and measures, side by side:

- ``list (first)``: the first ``list_layers`` call, which traces every custom layer;
- ``list (median)``: the median of ``--repeats`` more calls (each walks and traces anew);
- ``predict``: the median of ``--repeats`` warm ``predict_on_batch`` calls on 2 rows,
  for scale; the last column is ``list (median) / predict``.

Usage::

    python benchmarks/bench_discovery.py                    # all three backends
    python benchmarks/bench_discovery.py --backend jax --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax", "torch")


def measure(backend: str, repeats: int) -> list[dict[str, object]]:
    """Run in a process whose KERAS_BACKEND is ``backend``: one record per backbone."""
    sys.path.insert(0, str(ROOT))
    import keras
    import numpy as np

    import layertap
    from tests.hub_backbones import BACKBONES

    assert keras.backend.backend() == backend
    records = []
    for name, build in BACKBONES.items():
        keras.utils.set_random_seed(0)
        model, make_inputs = build()
        start = time.perf_counter()
        places = layertap.list_layers(model)
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            layertap.list_layers(model)
            times.append(time.perf_counter() - start)
        x = make_inputs(np.random.default_rng(0), 2)
        model.predict_on_batch(x)
        predict = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.predict_on_batch(x)
            predict.append(time.perf_counter() - start)
        records.append(
            {
                "backbone": name,
                "backend": backend,
                "places": len(places),
                "untraced": sum(1 for p in places if p.trace_error),
                "first_ms": first * 1e3,
                "median_ms": statistics.median(times) * 1e3,
                "predict_ms": statistics.median(predict) * 1e3,
            }
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, action="append")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(os.environ["KERAS_BACKEND"], args.repeats)))
        return
    records = []
    for backend in args.backend or BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        records.extend(json.loads(out.strip().splitlines()[-1]))
    print(f"list_layers on keras-hub backbones; {platform.node()}, {os.cpu_count()} CPUs, ", end="")
    print(f"load {os.getloadavg()[0]:.2f}, repeats {args.repeats}")
    header = "| backbone | backend | places | untraced | list (first) ms | list (median) ms |"
    print(header + " predict (2 rows) ms | list / predict |")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['backbone']} | {r['backend']} | {r['places']} | {r['untraced']} | "
            f"{r['first_ms']:.0f} | {r['median_ms']:.0f} | {r['predict_ms']:.1f} | "
            f"{r['median_ms'] / r['predict_ms']:.1f} |"  # type: ignore[operator]
        )


if __name__ == "__main__":
    main()
