"""Train the small example model that ``make demo`` taps, and write its sample images.

The model has the realistic transfer-learning shape layertap is built for: a
Functional "backbone" (named conv blocks) nested inside a Functional head
(``gap`` -> ``embedding`` -> ``logits``). It learns to tell circles, squares and
triangles apart on synthetic 64x64 RGB images drawn with Pillow, generated
deterministically from a seed. Inputs are RGB scaled to [0, 1] (layertap's
``rescale`` preset).

Run (about half a minute on two CPU cores; any Keras backend)::

    .venv/bin/python examples/train_example_model.py

Writes ``examples/model/shapes_cnn.keras`` and ``examples/images/*.{png,jpg}``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

CLASSES = ("circle", "square", "triangle")
SIZE = 64
SIZES = (64, 64, 96, 128, 160, 200)  # sizes images are drawn at, before resizing to SIZE
HERE = Path(__file__).resolve().parent


def draw_shape(rng: np.random.Generator, label: int, size: int = SIZE) -> Image.Image:
    """One RGB image of ``size`` x ``size``: a shape of class ``label`` on a noise background."""
    noise = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    bg = Image.fromarray(noise, "RGB").resize((size, size), Image.Resampling.BILINEAR)
    bg = bg.filter(ImageFilter.GaussianBlur(radius=size / 32))
    # Dim the background so the shape stands out but colour alone does not give the class.
    img = Image.fromarray((np.asarray(bg) * rng.uniform(0.3, 0.7)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    color = tuple(int(c) for c in rng.integers(96, 256, 3))
    r = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(r + 2, size - r - 2, 2)
    if CLASSES[label] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif CLASSES[label] == "square":
        a = rng.uniform(0, math.pi / 2)
        corners = [a + k * math.pi / 2 + math.pi / 4 for k in range(4)]
        draw.polygon([(cx + r * math.cos(t), cy + r * math.sin(t)) for t in corners], fill=color)
    else:
        a = rng.uniform(0, 2 * math.pi)
        corners = [a + k * 2 * math.pi / 3 for k in range(3)]
        draw.polygon([(cx + r * math.cos(t), cy + r * math.sin(t)) for t in corners], fill=color)
    return img


def as_input(img: Image.Image) -> np.ndarray:
    """What layertap's ``rescale`` preset makes of an image: bilinear resize, then / 255."""
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype="float32") / 255.0


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (float32 in [0, 1], NHWC) and their labels, the same for the same seed.

    Like real photos, images are drawn at several sizes, some saved as JPEG, and
    resized to the model's input the way layertap resizes them.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    images = []
    for y in labels:
        img = draw_shape(rng, int(y), int(rng.choice(SIZES)))
        if rng.random() < 0.5:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
            img = Image.open(buf).convert("RGB")
        images.append(as_input(img))
    return np.stack(images), labels.astype("int32")


def build_model() -> keras.Model:
    """A Functional head around a nested Functional backbone with named blocks."""
    inp = keras.Input((SIZE, SIZE, 3), name="backbone_input")
    x = inp
    for i, filters in enumerate((16, 32, 64), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block_{i}_conv")(x)
        x = keras.layers.ReLU(name=f"block_{i}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block_{i}_pool")(x)
    # A residual block at the end, so the backbone is a real graph, not a chain.
    y = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="block_4_conv")(x)
    x = keras.layers.Add(name="block_4_add")([x, y])
    backbone = keras.Model(inp, x, name="backbone")

    image = keras.Input((SIZE, SIZE, 3), name="image")
    h = backbone(image)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = keras.layers.Dense(32, activation="relu", name="embedding")(h)
    out = keras.layers.Dense(len(CLASSES), activation="softmax", name="logits")(h)
    return keras.Model(image, out, name="shapes_cnn")


def write_samples(out_dir: Path, seed: int) -> list[Path]:
    """Twelve sample images: .png and .jpg, several larger than 64x64, one with EXIF rotation."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():
        if old.suffix.lower() in (".png", ".jpg", ".jpeg"):
            old.unlink()
    rng = np.random.default_rng(seed)
    sizes = SIZES
    written = []
    for i in range(12):
        label = i % len(CLASSES)
        size = sizes[i % len(sizes)]
        img = draw_shape(rng, label, size)
        if i == 5:  # a non-square image, so resizing changes the aspect ratio
            img = img.resize((size + 40, size), Image.Resampling.BILINEAR)
        suffix = ".jpg" if i % 2 else ".png"
        path = out_dir / f"{i:02d}_{CLASSES[label]}{suffix}"
        if i == 7:  # stored rotated, with an EXIF tag saying how to turn it upright
            exif = Image.Exif()
            exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
            img.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
        elif suffix == ".jpg":
            img.save(path, quality=90)
        else:
            img.save(path)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=1800)
    parser.add_argument("--n-test", type=int, default=450)
    parser.add_argument("--model-dir", type=Path, default=HERE / "model")
    parser.add_argument("--image-dir", type=Path, default=HERE / "images")
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    x_train, y_train = make_dataset(args.n_train, args.seed)
    x_test, y_test = make_dataset(args.n_test, args.seed + 1)
    print(f"data: {len(x_train)} train / {len(x_test)} held-out images, {SIZE}x{SIZE} RGB")

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, verbose=2)
    loss, acc = model.evaluate(x_test, y_test, batch_size=128, verbose=0)
    print(f"held-out accuracy: {acc:.3f} (loss {loss:.3f}; chance is {1 / len(CLASSES):.3f})")

    args.model_dir.mkdir(parents=True, exist_ok=True)
    path = args.model_dir / "shapes_cnn.keras"
    # Save an uncompiled copy: no optimizer state, a third of the size, and what a
    # feature extractor needs anyway.
    inference = build_model()
    inference.set_weights(model.get_weights())
    inference.save(path)
    print(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB)")
    samples = write_samples(args.image_dir, args.seed + 2)
    print(f"wrote {len(samples)} sample images to {args.image_dir}")
    print(f"done in {time.perf_counter() - start:.0f} s (backend {keras.backend.backend()})")


if __name__ == "__main__":
    main()
