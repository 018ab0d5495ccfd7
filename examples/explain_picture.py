"""The README's explain picture: Grad-CAM of the bundled example model on three sample
images, at two layers of its nested backbone.

Usage (from the repository root)::

    .venv/bin/python examples/explain_picture.py   # writes examples/explain.png
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

import layertap
from layertap.explainer import viz

ROOT = Path(__file__).resolve().parent
CLASSES = ["circle", "square", "triangle"]
LAYERS = ["backbone/block_3_relu", "backbone/block_4_add"]


def main() -> None:
    model = layertap.load_model(ROOT / "model" / "shapes_cnn.keras")
    files = [
        ROOT / "images" / name for name in ("00_circle.png", "04_square.png", "08_triangle.png")
    ]
    maps = {layer: layertap.explain(model, files, layer, method="gradcam") for layer in LAYERS}
    figure = viz.new_figure(7.5, 5.4)
    for row, path in enumerate(files):
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB").resize((192, 192), Image.Resampling.BILINEAR))
        panels = [("image", pixels)]
        for layer in LAYERS:
            panels.append((f"Grad-CAM at\n{layer}", viz.overlay(pixels, maps[layer][row]).array))
        target = CLASSES[maps[LAYERS[0]].info["targets"][row]]
        for col, (title, picture) in enumerate(panels):
            axes = figure.add_subplot(len(files), len(panels), row * len(panels) + col + 1)
            axes.imshow(picture)
            axes.set_axis_off()
            if row == 0:
                axes.set_title(title, fontsize=8)
            if col == 0:
                axes.text(-10, 96, target, rotation=90, ha="right", va="center", fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
    (ROOT / "explain.png").write_bytes(buffer.getvalue())
    print(f"wrote {ROOT / 'explain.png'}")


if __name__ == "__main__":
    main()
