"""Shared by the benchmarks: interleaved timing rounds and the environment line.

Not a benchmark itself (``make bench`` runs ``benchmarks/[!_]*.py``).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any


def interleaved(variants: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each variant in ``repeats`` rounds; round r starts at variant r, so no
    variant always runs first (or right after the same neighbour)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for r in range(repeats):
        for k in order[r % len(order) :] + order[: r % len(order)]:
            t = time.perf_counter()
            variants[k]()
            times[k].append(time.perf_counter() - t)
    return times


def environment(load_before: float, **versions: str) -> str:
    """One line: backend and its version, Keras, ``versions``, Python, CPUs, load."""
    import keras

    import layertap

    backend = keras.backend.backend()
    engine = sys.modules.get({"tensorflow": "tensorflow", "jax": "jax"}.get(backend, "torch"))
    extra = " ".join(f"{k}={v}" for k, v in versions.items())
    return (
        f"backend={backend} {getattr(engine, '__name__', '')}="
        f"{getattr(engine, '__version__', '?')} keras={keras.__version__} "
        f"{extra + ' ' if extra else ''}layertap={layertap.__version__} "
        f"python={platform.python_version()} cpus={os.cpu_count()} "
        f"machine={platform.machine()} loadavg before={load_before:.2f} "
        f"after={os.getloadavg()[0]:.2f}"
    )
