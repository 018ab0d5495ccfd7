"""The runs whose outputs are pinned in ``tests/golden/`` (and how to read them back).

``python -m tests.golden.runs`` (from the repository root, TensorFlow backend) writes
the golden files. They were written by commit 3f361ce, before the engines were
restructured; ``tests/test_golden.py`` makes the same runs and compares every dataset,
column and attribute with them.

Everything in a run is deterministic: the model's weights come from a seeded numpy
generator, the images are written by the same generator, and every path is relative to
the working folder. The model's file hash (the ``.keras`` zip stores its save time) and
the package version are the only values replaced before comparing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
from PIL import Image

GOLDEN = Path(__file__).parent


def build_model() -> keras.Model:
    """A Functional backbone nested in a Sequential head, weights from a seeded rng."""
    inp = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    g = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    backbone = keras.Model(inp, g, name="backbone")
    model = keras.Sequential(
        [keras.Input((10, 10, 3)), backbone, keras.layers.Dense(3, name="head")], name="golden"
    )
    rng = np.random.default_rng(7)
    for w in model.weights:
        w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    return model


def write_inputs(folder: Path) -> None:
    """``model.keras`` and ``images/``: 7 images of 3 sizes and 2 files that are not."""
    build_model().save(folder / "model.keras")
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(7):
        size = (10 + 4 * (i % 3), 8 + 3 * (i % 2))
        pixels = rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{i}.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (images / "notes.txt").write_text("not an image")


def command(out: str, *extra: str) -> list[str]:
    """The CLI arguments of one run (from the folder ``write_inputs`` filled)."""
    return [
        "extract", "model.keras", "images", "-l", "conv=backbone/conv", "-l", "emb=backbone/gap",
        "-l", "head", "--pool", "emb=keep", "--pool", "conv=avg", "-b", "3", "-o", out, "-q",
        *extra,
    ]  # fmt: skip


def _normal(value: Any) -> Any:
    """An attribute with the run-specific parts (model file hash, version) replaced."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and value.startswith("{") and '"model"' in value:
        parsed = json.loads(value)
        if isinstance(parsed, dict) and "inputs" in parsed:  # the fingerprint
            parsed["model"] = "<hash of model.keras>"
            return parsed
    return value


def _attrs(attrs: Any) -> dict[str, Any]:
    out = {k: _normal(v) for k, v in attrs.items()}
    if "layertap_version" in out:
        out["layertap_version"] = "<version>"
    return out


def read_h5(path: Path) -> dict[str, Any]:
    """Every dataset (with its attributes) and the file's attributes."""
    found: dict[str, Any] = {"attrs": _attrs(json.loads(json.dumps(dict(_h5_attrs(path)))))}
    with h5py.File(path) as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                data = obj.asstr()[:] if obj.dtype.kind == "O" else obj[:]
                found[name] = (np.asarray(data), obj.dtype.str, dict(_attrs(obj.attrs)))

        f.visititems(visit)
    return found


def _h5_attrs(path: Path) -> dict[str, Any]:
    with h5py.File(path) as f:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}


def read_npz(path: Path) -> dict[str, Any]:
    """Every array (``__layertap__`` parsed and normalised)."""
    with np.load(path, allow_pickle=False) as z:
        found: dict[str, Any] = {k: (z[k], z[k].dtype.str) for k in z.files if k != "__layertap__"}
        found["__layertap__"] = _attrs(json.loads(str(z["__layertap__"])))
    return found


def read_parquet(path: Path) -> dict[str, Any]:
    """Columns (rows sorted by path), field metadata and schema metadata of a file or folder."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    order = np.argsort(np.array(table["path"].to_pylist()), kind="stable")
    found: dict[str, Any] = {
        f.name: (
            str(f.type),
            {k.decode(): v.decode() for k, v in (f.metadata or {}).items()},
            [table[f.name].to_pylist()[i] for i in order],
        )
        for f in table.schema
    }
    if path.is_dir():
        parts = sorted(path.glob("part-*.parquet"))
        metas = [json.loads(pq.read_schema(p).metadata[b"layertap"]) for p in parts]
        for meta in metas:  # per part: its rows and failures; compared in sum below
            meta.pop("rows"), meta.pop("failed")
            meta["taps"] = {k: {**t, "shape": t["shape"][1:]} for k, t in json.loads(
                meta["taps"]).items()}  # fmt: skip
        found["schema_metadata"] = [_attrs(m) for m in metas][:1]
        summary = json.loads((path / "_layertap.json").read_text())
        summary.pop("parts")
        summary["failed"] = sorted(map(tuple, summary["failed"]))
        found["summary"] = _attrs(summary)
        failed = pq.read_table(path / "_failed.parquet")
        found["_failed"] = sorted(
            zip(*(failed[c].to_pylist() for c in failed.column_names), strict=True)
        )
    else:
        meta = json.loads(pq.read_schema(path).metadata[b"layertap"])
        found["schema_metadata"] = _attrs(meta)
    return found


def read_any(path: Path) -> dict[str, Any]:
    """The reader for ``path``'s format."""
    if path.suffix == ".h5":
        return read_h5(path)
    if path.suffix == ".npz":
        return read_npz(path)
    return read_parquet(path)


def runs() -> dict[str, list[str]]:
    """``{output name: CLI arguments}`` of every golden run."""
    return {
        "f.h5": command("f.h5"),
        "f.npz": command("f.npz"),
        "f.parquet": command("f.parquet"),
        "ray": command("ray", "--engine", "ray", "--concurrency", "1"),
    }


def main() -> None:
    """Write the golden files into ``tests/golden/`` (run from the repository root)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    work = Path(tempfile.mkdtemp())
    write_inputs(work)
    for name, args in runs().items():
        done = subprocess.run(
            [sys.executable, "-m", "layertap", *args], cwd=work, capture_output=True, text=True
        )
        if done.returncode not in (0, 1):
            raise SystemExit(f"{name}: {done.stderr}")
        target = GOLDEN / name
        if target.is_dir():
            shutil.rmtree(target)
        if (work / name).is_dir():
            shutil.copytree(work / name, target)
        else:
            shutil.copy(work / name, target)
    print("golden files written to", GOLDEN, "backend", os.environ.get("KERAS_BACKEND"))


if __name__ == "__main__":
    main()
