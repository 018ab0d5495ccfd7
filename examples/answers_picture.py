"""The README's probe and similarity pictures, from the bundled example model.

300 shapes drawn as the model was trained on (a fresh seed), features at five places
written by ``layertap.extract`` (each spatial map averaged over positions), then a
linear probe per layer and the CKA between layers, both read from the file.

Usage (from the repository root)::

    .venv/bin/python examples/answers_picture.py  # examples/probe.png, similarity.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import layertap

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from train_example_model import make_dataset  # noqa: E402

LAYERS = [
    "backbone/block_1_relu",
    "backbone/block_2_relu",
    "backbone/block_3_relu",
    "backbone/block_4_add",
    "embedding",
]


def main() -> None:
    model = layertap.load_model(ROOT / "model" / "shapes_cnn.keras")
    images, labels = make_dataset(300, seed=2026)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shapes.h5"
        layertap.extract(model, images, LAYERS, out, pool="avg", progress=False)
        result = layertap.probe(out, labels, cv=5)
        print(result.table())
        result.plot().save(ROOT / "probe.png")
        cka = layertap.similarity(out)
        print(cka.table())
        cka.plot().save(ROOT / "similarity.png")


if __name__ == "__main__":
    main()
