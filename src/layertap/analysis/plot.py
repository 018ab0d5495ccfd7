"""Pictures of analysis results: scores per layer with error bars, similarity heatmaps.

Drawn with matplotlib's object API (``Figure`` + the Agg canvas, never ``pyplot``'s
global state), as :mod:`layertap.explainer.viz` draws; each returns a
:class:`~layertap.explainer.viz.Picture` (PNG bytes, shown inline in Jupyter).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from layertap.explainer.viz import Picture, new_figure, to_picture

__all__ = ["heatmap", "scores_plot"]


def scores_plot(
    names: Sequence[str], means: Sequence[float], stds: Sequence[float], ylabel: str, best: int
) -> Picture:
    """A score per layer with ±1 std error bars; the best layer drawn in another colour.

    Example:
        >>> scores_plot(["a", "b"], [0.5, 0.8], [0.1, 0.05], "accuracy", 1).png[:4]
        b'\\x89PNG'
    """
    figure = new_figure(max(4.0, 0.6 * len(names) + 2), 3.2)
    ax = figure.add_subplot()
    x = np.arange(len(names))
    colours = ["#d95f02" if i == best else "#1b9e77" for i in range(len(names))]
    ax.bar(x, means, yerr=stds, color=colours, capsize=4)
    tilted = len(names) > 4 or max((len(n) for n in names), default=0) > 12
    ax.set_xticks(x, list(names), rotation=30 if tilted else 0, ha="right" if tilted else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(f"linear probe: {ylabel} per layer (mean ± std over folds)")
    ax.grid(axis="y", alpha=0.3)
    return to_picture(figure)


def heatmap(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str) -> Picture:
    """A matrix of similarities as a heatmap, each cell labelled with its value.

    Example:
        >>> heatmap(np.eye(2), ["a", "b"], ["a", "b"], "CKA").png[:4]
        b'\\x89PNG'
    """
    figure = new_figure(max(3.5, 0.55 * len(cols) + 2.5), max(3.0, 0.5 * len(rows) + 1.5))
    ax = figure.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", vmin=min(0.0, float(np.nanmin(matrix))), vmax=1.0)
    ax.set_xticks(range(len(cols)), list(cols), rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), list(rows))
    if matrix.size <= 400:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 else "black")  # fmt: skip
    figure.colorbar(image, ax=ax)
    ax.set_title(title)
    return to_picture(figure)
