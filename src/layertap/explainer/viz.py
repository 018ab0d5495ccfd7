"""Stage 7, pictures: feature-map grids, heatmap overlays and activation statistics.

Keras-free. Drawing uses matplotlib (the ``viz`` extra) through its object API
(``Figure`` + the Agg canvas), never ``pyplot``'s global state, with perceptually
uniform colour maps (``viridis`` for activations, ``inferno`` for heatmaps). Every
function returns a :class:`Picture`: PNG bytes that Jupyter shows inline
(``_repr_png_``) and that ``save()`` writes.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from layertap._errors import BadInputError, require
from layertap.explainer.maps import upsample

__all__ = [
    "Picture",
    "activation_stats",
    "attention_rows",
    "colour_legend",
    "feature_grid",
    "grid_channels",
    "heatmap_row",
    "layer_stats",
    "new_figure",
    "overlay",
    "to_picture",
    "to_rgb",
    "token_colours",
]

ACTIVATION_CMAP = "viridis"
HEATMAP_CMAP = "inferno"
#: Signed attributions: blue below zero, white at zero, red above (a diverging map).
DIVERGING_CMAP = "RdBu_r"


class Picture:
    """A PNG image: shown inline in Jupyter, saved with :meth:`save`.

    Attributes:
        png: the PNG file's bytes.
        array: the RGB pixels, ``(H, W, 3)`` uint8.

    Example:
        >>> p = Picture.from_array(np.zeros((4, 6, 3), np.uint8))
        >>> p.array.shape, p.png[:4]
        ((4, 6, 3), b'\\x89PNG')
    """

    def __init__(self, png: bytes) -> None:
        self.png = png

    @classmethod
    def from_array(cls, rgb: np.ndarray) -> Picture:
        """A picture of RGB pixels ``(H, W, 3)`` uint8."""
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, format="PNG")
        return cls(buffer.getvalue())

    @property
    def array(self) -> np.ndarray:
        with Image.open(io.BytesIO(self.png)) as img:
            return np.asarray(img.convert("RGB"))

    def data_uri(self) -> str:
        """``data:image/png;base64,...``: the picture inside an HTML page, no file needed."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the PNG file."""
        with open(path, "wb") as f:
            f.write(self.png)

    def _repr_png_(self) -> bytes:
        return self.png

    def _repr_html_(self) -> str:
        return f'<img src="{self.data_uri()}"/>'


def _colormap(name: str) -> Any:
    matplotlib = require("matplotlib", "viz", "drawing pictures")
    return matplotlib.colormaps[name]


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches on the Agg canvas (no
    pyplot, no global state); :func:`to_picture` turns it into a :class:`Picture`.

    Example:
        >>> to_picture(new_figure(1.0, 1.0)).png[:4]
        b'\\x89PNG'
    """
    require("matplotlib", "viz", "drawing pictures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def to_picture(figure: Any) -> Picture:
    """The figure drawn as a PNG :class:`Picture` (its margins trimmed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return Picture(buffer.getvalue())


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Any image array ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` as uint8 RGB for display.

    Values already in [0, 255] are kept; others (a model's [-1, 1] or [0, 1] input) are
    stretched to the full range.

    Example:
        >>> to_rgb(np.array([[0.0, 1.0]])).tolist()
        [[[0, 0, 0], [255, 255, 255]]]
    """
    x = np.asarray(image, np.float32)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise BadInputError(f"an image is (H, W), (H, W, 1) or (H, W, 3), got {x.shape}")
    if x.min() < 0 or x.max() <= 1.0:
        span = x.max() - x.min()
        x = (x - x.min()) / (span if span > 0 else 1.0) * 255.0
    out: np.ndarray = np.clip(x, 0, 255).round().astype(np.uint8)
    return out


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45) -> Picture:
    """A heatmap in [0, 1] over its image (resized to the image), ``inferno`` colours.

    Example:
        >>> img = np.zeros((8, 8, 3), np.uint8); heat = np.ones((4, 4), np.float32)
        >>> overlay(img, heat).array.shape
        (8, 8, 3)
    """
    rgb = to_rgb(image)
    height, width = rgb.shape[:2]
    heat = upsample(np.asarray(heatmap, np.float32)[None], (height, width))[0]
    colours = _colormap(HEATMAP_CMAP)(np.clip(heat, 0, 1))[..., :3] * 255.0
    blended = (1 - alpha) * rgb.astype(np.float32) + alpha * colours
    return Picture.from_array(np.clip(blended, 0, 255).round().astype(np.uint8))


def heatmap_row(maps: np.ndarray, titles: Sequence[str] | None = None) -> Picture:
    """Maps ``(n, H, W)`` in [0, 1] side by side (how an :class:`Explanation` shows).

    Example:
        >>> heatmap_row(np.zeros((2, 5, 5))).png[:4]
        b'\\x89PNG'
    """
    n = len(maps)
    figure = new_figure(2.0 * n, 2.2)
    for i, m in enumerate(maps):
        axes = figure.add_subplot(1, n, i + 1)
        axes.imshow(m, cmap=HEATMAP_CMAP, vmin=0, vmax=1)
        axes.set_axis_off()
        if titles is not None:
            axes.set_title(titles[i], fontsize=8)
    return to_picture(figure)


def grid_channels(activation: np.ndarray, count: int, order: str) -> np.ndarray:
    """The channels a feature-map grid shows: the first ``count``, or the ``count`` with
    the largest mean activation (``"top"``, largest first).

    Example:
        >>> a = np.stack([np.full((2, 2), v) for v in (0.1, 0.9, 0.5)], axis=-1)
        >>> grid_channels(a, 2, "first").tolist(), grid_channels(a, 2, "top").tolist()
        ([0, 1], [1, 2])
    """
    if order == "first":
        return np.arange(min(count, activation.shape[-1]))
    return np.argsort(-activation.mean(axis=(0, 1)), kind="stable")[:count]


def feature_grid(
    activation: np.ndarray, *, count: int = 16, order: str = "top", title: str | None = None
) -> Picture:
    """The feature maps of one spatial activation ``(H, W, C)``: the first ``count``
    channels (``order="first"``) or those with the largest mean (``"top"``).

    Each channel is drawn with its own scale (``viridis``) and titled with its index.

    Example:
        >>> feature_grid(np.random.default_rng(0).random((6, 6, 10)), count=4).png[:4]
        b'\\x89PNG'
    """
    a = np.asarray(activation, np.float32)
    if a.ndim != 3:
        raise BadInputError(
            f"a feature-map grid draws one spatial activation (H, W, channels), got {a.shape}"
        )
    if order not in ("first", "top"):
        raise BadInputError(f"order {order!r}: valid are 'first' and 'top'")
    channels = grid_channels(a, count, order)
    columns = int(np.ceil(np.sqrt(len(channels))))
    rows = int(np.ceil(len(channels) / columns))
    figure = new_figure(1.4 * columns, 1.5 * rows + (0.3 if title else 0))
    for i, c in enumerate(channels):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.imshow(a[..., c], cmap=ACTIVATION_CMAP)
        axes.set_title(f"#{int(c)}", fontsize=7)
        axes.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=9)
    return to_picture(figure)


def activation_stats(stats: Mapping[str, Mapping[str, float]]) -> Picture:
    """Per-layer statistics (``mean``, ``std``, ``min``, ``max``, ``zeros``: the fraction
    of exact zeros), layers in order along the x axis.

    Example:
        >>> s = {"a": {"mean": 0.1, "std": 1.0, "min": -2, "max": 3, "zeros": 0.5},
        ...      "b": {"mean": 0.4, "std": 0.5, "min": 0, "max": 1, "zeros": 0.0}}
        >>> activation_stats(s).png[:4]
        b'\\x89PNG'
    """
    names = list(stats)
    x = np.arange(len(names))
    figure = new_figure(max(4.0, 0.6 * len(names) + 2), 4.0)
    top, bottom = figure.add_subplot(2, 1, 1), figure.add_subplot(2, 1, 2)
    colours = _colormap(ACTIVATION_CMAP)
    mean = np.array([stats[n]["mean"] for n in names])
    std = np.array([stats[n]["std"] for n in names])
    top.fill_between(x, [stats[n]["min"] for n in names], [stats[n]["max"] for n in names],
                     color=colours(0.85), alpha=0.35, label="min-max")  # fmt: skip
    top.errorbar(x, mean, yerr=std, color=colours(0.25), marker="o", label="mean ± std")
    top.set_ylabel("activation")
    top.legend(fontsize=7)
    bottom.bar(x, [stats[n]["zeros"] for n in names], color=colours(0.55))
    bottom.set_ylabel("fraction zero")
    bottom.set_ylim(0, 1)
    for axes in (top, bottom):
        axes.set_xticks(x)
        axes.set_xticklabels(names if axes is bottom else [], rotation=45, ha="right", fontsize=7)
    return to_picture(figure)


def layer_stats(activation: np.ndarray) -> dict[str, float]:
    """The statistics :func:`activation_stats` plots, of one tap over a batch.

    Example:
        >>> layer_stats(np.array([0.0, 2.0]))
        {'mean': 1.0, 'std': 1.0, 'min': 0.0, 'max': 2.0, 'zeros': 0.5}
    """
    a = np.asarray(activation, np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "zeros": float((a == 0).mean()),
    }


def token_colours(values: np.ndarray, scale: float) -> list[str]:
    """Background colours (``#rrggbb``) of signed values on :data:`DIVERGING_CMAP`,
    ``-scale`` blue, 0 white, ``+scale`` red.

    Example:
        >>> token_colours(np.array([-1.0, 0.0, 1.0]), 1.0)
        ['#053061', '#f7f6f6', '#67001f']
    """
    cmap = _colormap(DIVERGING_CMAP)
    where = 0.5 + 0.5 * np.clip(np.asarray(values, np.float64) / (scale or 1.0), -1.0, 1.0)
    rgb = (np.asarray(cmap(where))[..., :3] * 255).round().astype(int)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb.reshape(-1, 3)]


def colour_legend(scale: float, label: str = "attribution") -> Picture:
    """A colour bar from ``-scale`` to ``+scale`` on :data:`DIVERGING_CMAP`: the key to
    :func:`token_colours`.

    Example:
        >>> colour_legend(0.5).png[:4]
        b'\\x89PNG'
    """
    figure = new_figure(4.0, 0.5)
    axes = figure.add_axes((0.05, 0.45, 0.9, 0.35))
    axes.imshow(np.linspace(-1, 1, 256)[None], cmap=DIVERGING_CMAP, aspect="auto",
                extent=(-scale, scale, 0, 1))  # fmt: skip
    axes.set_yticks([])
    axes.set_xticks([-scale, 0.0, scale])
    axes.set_xticklabels([f"{-scale:.3g}", "0", f"{scale:.3g}"], fontsize=7)
    axes.set_title(label, fontsize=7)
    return to_picture(figure)


def attention_rows(
    rows: np.ndarray, tokens: Sequence[str], layers: Sequence[str] | None = None
) -> Picture:
    """One row per layer ``(layers, tokens)`` in [0, 1] (how much the first token attends
    to each token, say), token strings along the bottom, ``viridis``.

    Example:
        >>> attention_rows(np.full((2, 3), 1 / 3), ["[CLS]", "a", "[SEP]"]).png[:4]
        b'\\x89PNG'
    """
    count, length = rows.shape
    figure = new_figure(max(2.5, 0.32 * length + 1.0), 0.3 * count + 1.0)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(rows, cmap=ACTIVATION_CMAP, vmin=0.0, aspect="auto")
    axes.set_xticks(range(length))
    axes.set_xticklabels(list(tokens), rotation=90, fontsize=7)
    axes.set_yticks(range(count))
    axes.set_yticklabels(list(layers) if layers is not None else [str(i) for i in range(count)],
                         fontsize=7)  # fmt: skip
    return to_picture(figure)
