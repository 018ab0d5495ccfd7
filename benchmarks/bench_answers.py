"""What the answers cost (issue 18): probes over a file, streaming memory, float16 files.

All rows are measured in one run, side by side:

- ``probe over a file``: ``layertap.probe(file.h5, y)`` / scikit-learn's
  ``cross_val_score`` with the same pipeline and folds on the same arrays already in
  memory (one layer after the other). The probe reads each layer from the file and
  runs exactly that ``cross_val_score``; the timings interleave over ``--repeats``
  rounds, medians (and best-of). Target <= 1.1.
- ``similarity peak RSS``: minibatch CKA (``similarity(f, unbiased=True,
  batch_size=500)``, every pair of 2 keys x 1024 values) of a file of 20,000 rows /
  of 2,000 rows. Each runs in a fresh subprocess (its peak RSS: ``VmHWM`` in ``/proc``),
  the files written to a temp folder first. Target <= 1.2: memory is bounded by the
  block, not the rows. The whole-data CKA of the same 20,000 rows in memory would hold
  2 x 80 MiB of float32 (twice that as float64) plus its n x n Grams.
- ``reduce peak RSS``: ``layertap.reduce(f, out.h5, pca=64, chunk=1000)`` at 20,000 /
  2,000 rows, the same way (a slot left for it if ``layertap.reduce`` is missing).
  Target <= 1.2.
- ``float16 file size``: ``extract(..., dtype="float16")`` / the float32 file, for
  HDF5, NPZ and Parquet, 4,000 rows of two 512-wide taps of a small Dense model.
  Target 0.5.

Usage::

    python benchmarks/bench_answers.py                # ~1-2 min on 2 CPUs
    python benchmarks/bench_answers.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _timing import environment, interleaved  # noqa: E402

KEYS = ("a", "b")
WIDTH = 1024
SMALL, LARGE = 2_000, 20_000

# VmHWM (this process's peak RSS) rather than getrusage's ru_maxrss: on Linux ru_maxrss
# keeps the parent's high-water mark across fork + exec, so a child would report the
# benchmark's own peak.
_CHILD = r"""
import json, sys
import layertap, layertap.analysis.similarity, layertap.io.read
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
what, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
before = hwm()
if what == "similarity":
    s = layertap.similarity(path, unbiased=True, batch_size=500)
    assert s.matrix.shape == (2, 2)
else:
    layertap.reduce(path, out, pca=64, chunk=1000, overwrite=True)
print(json.dumps({"before_kib": before, "peak_kib": hwm()}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="timed rounds of the probe (default 7)")
    p.add_argument("--probe-rows", type=int, default=4000, help="rows probed (default 4000)")
    return p.parse_args(argv)


def write_arrays(path: Path, arrays: dict[str, Any], step: int = 1000) -> Path:
    """``{key: (rows, width) float32}`` written as layertap's extract writes HDF5."""
    from layertap.io.schema import TapInfo, TapSchema
    from layertap.io.write import open_writer

    rows = len(next(iter(arrays.values())))
    taps = [TapInfo(k, k, (None, *v.shape[1:]), "float32") for k, v in arrays.items()]
    schema = TapSchema.build(taps, {k: "keep" for k in arrays}, "hdf5")
    writer = open_writer(path, schema, {"model": "bench"}, fingerprint={"bench": rows})
    for i in range(0, rows, step):
        part = {k: v[i : i + step] for k, v in arrays.items()}
        writer.write([f"row{j}" for j in range(i, min(i + step, rows))], part)
    writer.close()
    return path


def features(rows: int, width: int, seed: int = 0) -> dict[str, Any]:
    """Two related float32 layers: ``b`` is a random linear map of ``a`` plus noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.normal(size=(rows, width)).astype("float32")
    mix = (rng.normal(size=(width, width)) / np.sqrt(width)).astype("float32")
    b = a @ mix + 0.5 * rng.normal(size=(rows, width)).astype("float32")
    return {"a": a, "b": b}


def peak_rss(what: str, path: Path, out: Path) -> dict[str, float]:
    """Peak RSS (MiB) of one streaming call on ``path``, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, what, str(path), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} on {path} failed:\n{done.stderr[-2000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return {k.replace("_kib", ""): v / 1024 for k, v in record.items()}


def probe_rows(d: Path, rows: int, repeats: int) -> tuple[dict[str, list[float]], str]:
    import numpy as np
    from sklearn.model_selection import cross_val_score

    import layertap
    from layertap.analysis.probe import default_estimator, folds_for

    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, rows)
    arrays = features(rows, 128, seed=1)
    for k in KEYS:  # a signal the probe can find
        arrays[k][:, 0] += y
    writer_path = write_arrays(d / "probe.h5", arrays)

    def in_memory() -> Any:
        return {
            k: cross_val_score(
                default_estimator(False), arrays[k], y, cv=folds_for(False, 5, 0),
                scoring="accuracy",
            )
            for k in KEYS
        }  # fmt: skip

    def over_file() -> Any:
        return layertap.probe(writer_path, y, cv=5, seed=0)

    got, want = over_file(), in_memory()
    same = all(np.allclose(got[k].folds, want[k]) for k in KEYS)
    times = interleaved({"file": over_file, "memory": in_memory}, repeats)
    return times, f"folds equal: {same}; accuracy a={got['a'].mean:.3f}"


def float16_sizes(d: Path) -> dict[str, float]:
    import keras
    import numpy as np

    import layertap

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(512, name="h1"), keras.layers.Dense(512, name="h2")]
    )
    x = np.random.default_rng(0).normal(size=(4000, 64)).astype("float32")
    ratios = {}
    for suffix in ("h5", "npz", "parquet"):
        a = layertap.extract(model, x, ["h1", "h2"], d / f"f32.{suffix}", batch_size=500)
        b = layertap.extract(model, x, ["h1", "h2"], d / f"f16.{suffix}", batch_size=500,
                             dtype="float16")  # fmt: skip
        ratios[suffix] = os.path.getsize(b.path) / os.path.getsize(a.path)
        ratios[suffix + "_mib"] = os.path.getsize(a.path) / 2**20
    return ratios


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load0 = os.getloadavg()[0]
    import layertap

    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        times, note = probe_rows(d, args.probe_rows, args.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((
            f"probe over a file ({args.probe_rows} rows, 2 layers x 128, 5 folds)",
            f"{med['file']:.2f} s / {med['memory']:.2f} s",
            f"{med['file'] / med['memory']:.3f} (best of: "
            f"{min(times['file']) / min(times['memory']):.3f})",
            "<= 1.1",
        ))  # fmt: skip
        files = {n: write_arrays(d / f"f{n}.h5", features(n, WIDTH)) for n in (SMALL, LARGE)}
        has_reduce = hasattr(layertap, "reduce") and "reduce" in layertap.__all__
        for what in ("similarity", "reduce"):
            if what == "reduce" and not has_reduce:
                rows.append(("reduce peak RSS", "(layertap.reduce missing)", "-", "<= 1.2"))
                continue
            rss = {n: peak_rss(what, files[n], d / f"r{n}.h5") for n in (SMALL, LARGE)}
            call = (
                "similarity(unbiased, batch_size=500)" if what == "similarity"
                else "reduce(pca=64, chunk=1000)"
            )  # fmt: skip
            rows.append((
                f"{what} peak RSS, {LARGE:,} / {SMALL:,} rows x 2 keys x {WIDTH}: {call}",
                f"{rss[LARGE]['peak']:.0f} MiB / {rss[SMALL]['peak']:.0f} MiB "
                f"(after imports: {rss[SMALL]['before']:.0f} MiB)",
                f"{rss[LARGE]['peak'] / rss[SMALL]['peak']:.3f}",
                "<= 1.2",
            ))  # fmt: skip
        sizes = float16_sizes(d)
        for suffix in ("h5", "npz", "parquet"):
            rows.append((
                f"float16 file size / float32, {suffix} (4,000 rows x 2 taps x 512)",
                f"float32 file {sizes[suffix + '_mib']:.1f} MiB",
                f"{sizes[suffix]:.3f}",
                "0.5",
            ))  # fmt: skip
    print(environment(load0))
    print(f"probe: {note}; median of {args.repeats} interleaved rounds")
    print()
    print("| measurement | values | ratio | target |")
    print("|---|---|---:|---|")
    for title, values, ratio, target in rows:
        print(f"| {title} | {values} | {ratio} | {target} |")
    print()
    print("probe rounds (s): " + "; ".join(
        f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items()
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
