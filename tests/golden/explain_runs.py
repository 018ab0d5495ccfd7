"""Maps pinned in ``tests/golden/explain.npz``, written on TensorFlow, compared on every
backend by ``tests/test_explain.py`` (JAX and torch must give TensorFlow's maps).

``python -m tests.golden.explain_runs`` (from the repository root, TensorFlow backend)
writes the file. The model is a keras.applications MobileNetV2 (alpha 0.35, 48 px,
``weights=None``) nested in a Sequential head, with weights drawn from a seeded numpy
generator (so every backend builds the same model without a weights file), saved to
``.keras`` and loaded back before explaining.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

GOLDEN = Path(__file__).parent / "explain.npz"
LAYER = "block_6_expand_relu"
#: (method, extra options) pinned.
RUNS = (
    ("gradcam", {}),
    ("gradcam++", {}),
    ("layercam", {}),
    ("scorecam", {"max_channels": 8}),
    ("saliency", {}),
)


def build_model() -> keras.Model:
    backbone = keras.applications.MobileNetV2(
        input_shape=(48, 48, 3), include_top=False, weights=None, alpha=0.35
    )
    model = keras.Sequential(
        [
            keras.Input((48, 48, 3)),
            backbone,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, activation="softmax", name="head"),
        ],
        name="nested_mobilenet",
    )
    rng = np.random.default_rng(11)
    for w in model.weights:
        if "variance" in w.path or "gamma" in w.path:
            value = rng.uniform(0.5, 1.5, w.shape)
        else:
            value = rng.normal(0, 0.2, w.shape)
        w.assign(value.astype("float32"))
    return model


def inputs() -> np.ndarray:
    return np.random.default_rng(5).uniform(-1, 1, (3, 48, 48, 3)).astype("float32")


def compute(folder: Path) -> dict[str, np.ndarray]:
    """Every pinned map, from the model saved to ``folder`` and loaded back."""
    from layertap.explainer.methods import explain

    build_model().save(folder / "model.keras")
    model = keras.saving.load_model(folder / "model.keras")
    layer = f"{model.layers[0].name}/{LAYER}"
    x = inputs()
    out = {}
    for method, options in RUNS:
        where = None if method == "saliency" else layer
        out[method] = np.asarray(explain(model, x, where, method=method, **options))
    return out


if __name__ == "__main__":
    import tempfile

    assert keras.backend.backend() == "tensorflow", "golden maps are written on TensorFlow"
    with tempfile.TemporaryDirectory() as tmp:
        maps = compute(Path(tmp))
    np.savez_compressed(GOLDEN, **maps)
    print(
        f"wrote {GOLDEN} ({os.path.getsize(GOLDEN)} bytes):", {k: v.shape for k, v in maps.items()}
    )
