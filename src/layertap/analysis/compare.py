"""Where two sets of features part, layer by layer: relative error, max error, CKA.

:class:`DiffStats` accumulates, batch by batch, what :class:`LayerDiff` reports for one
tap seen through two models (or two feature files) over the same inputs:

- ``rel_error = ||a - b||_F / ||a||_F`` over every row (``a``: the first model), from
  the running sums of ``||a - b||²`` and ``||a||²`` (float64), so it equals the formula
  over the whole data whatever the batches;
- ``max_abs = max |a - b|``;
- ``cka``: minibatch linear CKA (Nguyen et al. 2021), as
  :func:`layertap.similarity` computes it with ``batch_size``: per block of rows the
  HSICs of ``(a, b)``, ``(a, a)`` and ``(b, b)`` (the unbiased estimator by default,
  :mod:`layertap.analysis.similarity`), summed over blocks, then
  ``sum hsic(a, b) / sqrt(sum hsic(a, a) * sum hsic(b, b))``. A last block shorter than
  the estimator needs (4 rows unbiased, 2 biased) joins the block before it. Fewer
  rows than that in all: ``cka`` is NaN.

Rows are flattened. :func:`compare_files` compares two feature sources (anything
:func:`~layertap.io.read.open_features` takes) through the reader in blocks of
``batch_size`` rows; :func:`layertap.compare` (in :mod:`layertap.engines.compare`) runs
two models over the same inputs and feeds the same :class:`DiffStats`, so both give the
same numbers for the same features and batch size.

This module does not import Keras.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from layertap._errors import BadInputError, FeatureFileError
from layertap.analysis.similarity import MIN_UNBIASED_ROWS, _check_rows, _gram, _hsic
from layertap.io.read import open_features

__all__ = ["Comparison", "DiffStats", "LayerDiff", "compare_files"]

#: The ``rel_error`` above which a layer counts as divergent, unless told otherwise.
DEFAULT_THRESHOLD = 1e-3


@dataclasses.dataclass(frozen=True)
class LayerDiff:
    """How one tap differs between two models over the same inputs.

    Attributes:
        rel_error: ``||a - b||_F / ||a||_F`` over all rows (NaN when ``a`` is all zeros
            and ``b`` is not; 0 when both are).
        max_abs: the largest ``|a - b|``.
        cka: minibatch linear CKA between the rows of ``a`` and ``b`` (1: the same up
            to rotation and scale).

    Example:
        >>> LayerDiff(0.01, 0.2, 0.999).rel_error
        0.01
    """

    rel_error: float
    max_abs: float
    cka: float


class DiffStats:
    """Running sums from which one tap's :class:`LayerDiff` follows; fed batch by batch.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a = rng.normal(size=(10, 3))
        >>> s = DiffStats()
        >>> for i in range(0, 10, 4):
        ...     s.update(a[i : i + 4], 1.1 * a[i : i + 4])
        >>> d = s.result()
        >>> round(d.rel_error, 6), round(d.cka, 6)
        (0.1, 1.0)
    """

    def __init__(self, unbiased: bool = True) -> None:
        self.unbiased = unbiased
        self.rows = 0
        self.diff2 = 0.0  # sum of (a - b)²
        self.norm2 = 0.0  # sum of a²
        self.max_abs = 0.0
        self.hsic_ab = self.hsic_aa = self.hsic_bb = 0.0
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def minimum(self) -> int:
        """Rows one CKA block needs."""
        return MIN_UNBIASED_ROWS if self.unbiased else 2

    def update(self, a: Any, b: Any) -> None:
        """Add one batch: the same rows of the tap in model A and model B."""
        x = np.asarray(a, np.float64).reshape(len(a), -1)
        y = np.asarray(b, np.float64).reshape(len(b), -1)
        if x.shape != y.shape:
            raise BadInputError(
                f"the two models give this tap different shapes per row ({x.shape[1:]} values "
                f"vs {y.shape[1:]}); compare taps of the same shape"
            )
        if not len(x):
            return
        delta = x - y
        self.rows += len(x)
        self.diff2 += float(np.vdot(delta, delta))
        self.norm2 += float(np.vdot(x, x))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(delta))) if delta.size else 0.0)
        # One block is held back, so that a short last block can join it.
        if self._pending is not None:
            px, py = self._pending
            if len(x) < self.minimum:
                x, y = np.concatenate([px, x]), np.concatenate([py, y])
            else:
                self._block(px, py)
        self._pending = (x, y)

    def _block(self, x: np.ndarray, y: np.ndarray) -> None:
        if len(x) < self.minimum:
            return
        gx, gy = _gram(x, self.unbiased), _gram(y, self.unbiased)
        self.hsic_ab += _hsic(gx, gy, self.unbiased)
        self.hsic_aa += _hsic(gx, gx, self.unbiased)
        self.hsic_bb += _hsic(gy, gy, self.unbiased)

    def result(self) -> LayerDiff:
        """The :class:`LayerDiff` of every row added so far."""
        if self._pending is not None:
            self._block(*self._pending)
            self._pending = None
        if self.norm2 > 0:
            rel = math.sqrt(self.diff2 / self.norm2)
        else:
            rel = 0.0 if self.diff2 == 0 else math.nan
        denominator = self.hsic_aa * self.hsic_bb
        cka = self.hsic_ab / math.sqrt(denominator) if denominator > 0 else math.nan
        return LayerDiff(rel, self.max_abs, cka)


@dataclasses.dataclass(frozen=True)
class Comparison(Mapping[str, LayerDiff]):
    """``{key: LayerDiff}`` in model order, and what was compared.

    Attributes:
        diffs: ``{key: LayerDiff}``, in the order of the layers in the model (files:
            in the file's key order).
        rows: rows (inputs) compared.
        batch_size: rows per batch (and per CKA block).
        unbiased: CKA with the unbiased HSIC.
        sources: what A and B were (model names or paths, files).
        layers: ``{key: canonical layer path}`` (in A).

    Example:
        >>> c = Comparison({"conv": LayerDiff(0.0, 0.0, 1.0), "dense": LayerDiff(0.02, 0.1, 0.99)},
        ...                rows=8, batch_size=4)
        >>> c.first_divergent(1e-3), c["dense"].cka
        ('dense', 0.99)
    """

    diffs: Mapping[str, LayerDiff]
    rows: int = 0
    batch_size: int = 32
    unbiased: bool = True
    sources: tuple[str, str] = ("A", "B")
    layers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __getitem__(self, key: str) -> LayerDiff:
        return self.diffs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.diffs)

    def __len__(self) -> int:
        return len(self.diffs)

    def first_divergent(self, threshold: float = DEFAULT_THRESHOLD) -> str | None:
        """The first key (in model order) whose ``rel_error`` exceeds ``threshold``, or None.

        A NaN ``rel_error`` (A all zeros, B not) counts as divergent.

        Example:
            >>> c = Comparison({"a": LayerDiff(0.0, 0.0, 1.0), "b": LayerDiff(1e-4, 1e-3, 1.0)})
            >>> c.first_divergent(1e-3) is None, c.first_divergent(1e-5)
            (True, 'b')
        """
        for key, d in self.diffs.items():
            if math.isnan(d.rel_error) or d.rel_error > threshold:
                return key
        return None

    @property
    def title(self) -> str:
        """What was compared, in words."""
        hsic = "unbiased HSIC" if self.unbiased else "biased HSIC"
        a, b = self.sources
        return (
            f"compare A={a} vs B={b}: {self.rows} rows; rel_error = ||A-B||/||A||, "
            f"CKA ({hsic}, minibatches of {self.batch_size})"
        )

    def table(self, threshold: float | None = DEFAULT_THRESHOLD) -> str:
        """One layer a line; the first divergent one (``rel_error > threshold``) marked.

        Example:
            >>> c = Comparison({"conv": LayerDiff(0.0, 0.0, 1.0),
            ...                 "dense": LayerDiff(0.02, 0.1, 0.99)}, rows=8, batch_size=4)
            >>> print(c.table())  # doctest: +NORMALIZE_WHITESPACE
            compare A=A vs B=B: 8 rows; rel_error = ||A-B||/||A||, CKA (unbiased HSIC,
            minibatches of 4)
            layer  rel_error  max_abs    cka
            conv   0          0          1.0000
            dense  2.000e-02  1.000e-01  0.9900  <- first divergent (rel_error > 0.001)
        """
        first = self.first_divergent(threshold) if threshold is not None else None
        width = max([len("layer"), *(len(k) for k in self.diffs)])
        lines = [self.title, f"{'layer':<{width}}  {'rel_error':<9}  {'max_abs':<9}  cka"]
        for key, d in self.diffs.items():
            mark = f"  <- first divergent (rel_error > {threshold:g})" if key == first else ""
            lines.append(
                f"{key:<{width}}  {_number(d.rel_error):<9}  {_number(d.max_abs):<9}  "
                f"{d.cka:.4f}{mark}"
            )
        if threshold is not None and first is None:
            lines.append(f"no layer diverges (every rel_error <= {threshold:g})")
        return "\n".join(lines)

    def to_dict(self, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
        """A JSON-ready record: the settings, ``first_divergent`` and ``layers`` (NaN: None)."""

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {
            "sources": list(self.sources),
            "rows": self.rows,
            "batch_size": self.batch_size,
            "unbiased": self.unbiased,
            "threshold": threshold,
            "first_divergent": self.first_divergent(threshold),
            "layers": {
                k: {
                    "layer": self.layers.get(k, ""),
                    **{f: clean(v) for f, v in dataclasses.asdict(d).items()},
                }
                for k, d in self.diffs.items()
            },
        }

    def plot(self, threshold: float | None = DEFAULT_THRESHOLD) -> Any:
        """``rel_error`` per layer on a log scale (a PNG :class:`~layertap.explainer.viz.Picture`).

        Exact zeros are drawn at the bottom of the axis, hollow; the threshold is a
        dashed line.

        Example:
            >>> c = Comparison({"a": LayerDiff(0.0, 0.0, 1.0), "b": LayerDiff(0.02, 0.1, 0.9)})
            >>> c.plot().png[:4]
            b'\\x89PNG'
        """
        return _rel_error_plot(self, threshold)

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        import html

        image = f'<img src="{self.plot().data_uri()}"/>' if self.diffs else ""
        return f"<pre>{html.escape(self.table())}</pre>{image}"


def _number(v: float) -> str:
    return "nan" if math.isnan(v) else "0" if v == 0 else f"{v:.3e}"


def _rel_error_plot(c: Comparison, threshold: float | None) -> Any:
    from layertap.explainer.viz import new_figure, to_picture

    names = list(c.diffs)
    values = np.array([c.diffs[k].rel_error for k in names], np.float64)
    positive = values[np.isfinite(values) & (values > 0)]
    floor = float(min([*positive, threshold or 1.0, 1.0])) / 100
    figure = new_figure(max(4.0, 0.6 * len(names) + 2), 3.2)
    ax = figure.add_subplot()
    x = np.arange(len(names))
    shown = np.where(np.isfinite(values) & (values > 0), values, floor)
    zero = ~(np.isfinite(values) & (values > 0))
    ax.plot(x, shown, color="#1b9e77", zorder=1)
    ax.scatter(x[~zero], shown[~zero], color="#1b9e77", zorder=2, label="rel_error")
    if zero.any():
        ax.scatter(x[zero], shown[zero], facecolors="none", edgecolors="#555555", zorder=2,
                   label="0 (exactly equal)")  # fmt: skip
    first = c.first_divergent(threshold) if threshold is not None else None
    if first is not None:
        i = names.index(first)
        ax.scatter([i], [shown[i]], color="#d95f02", s=80, zorder=3, label="first divergent")
    if threshold is not None:
        ax.axhline(threshold, color="#d95f02", linestyle="--", linewidth=1,
                   label=f"threshold {threshold:g}")  # fmt: skip
    ax.set_yscale("log")
    tilted = len(names) > 4 or max((len(n) for n in names), default=0) > 12
    ax.set_xticks(x, names, rotation=30 if tilted else 0, ha="right" if tilted else "center")
    ax.set_ylabel("||A - B|| / ||A||")
    ax.set_title("where the models part: relative error per layer")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return to_picture(figure)


def _file_keys(ra: Any, rb: Any, layers: Sequence[str] | str | None) -> list[str]:
    keys = ra.keys if layers is None else ([layers] if isinstance(layers, str) else list(layers))
    for key in keys:
        ra.column(key)  # names the key, the file and what is valid
    missing = [k for k in keys if k not in rb.keys]
    if missing:
        raise FeatureFileError(
            f"{rb.source} (B) lacks {', '.join(map(repr, missing))}, which {ra.source} (A) "
            f"holds; B's keys: {', '.join(rb.keys) or 'none'} (pass layers= the keys to compare)"
        )
    return keys


def compare_files(
    a: Any,
    b: Any,
    layers: Sequence[str] | str | None = None,
    *,
    batch_size: int = 32,
    unbiased: bool = True,
) -> Comparison:
    """Compare the same keys of two feature sources, as :func:`layertap.compare` does models.

    ``a`` and ``b`` are anything :func:`~layertap.io.read.open_features` takes (files
    ``extract`` wrote, ``Features``, dicts of arrays) holding the same inputs in the same
    order; they are read in blocks of ``batch_size`` rows. The way to compare a model on
    two backends: extract to a file on each, then compare the files.

    Args:
        a: the reference source (``rel_error`` divides by it).
        b: the other source.
        layers: the keys to compare (default: every key of ``a``; each must be in ``b``).
        batch_size: rows per block (the CKA's minibatch).
        unbiased: CKA with the unbiased HSIC estimator.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(12, 5))
        >>> c = compare_files({"h": x, "y": x}, {"h": x, "y": x + 0.01}, batch_size=4)
        >>> c["h"].rel_error, c.first_divergent(1e-3), round(c["y"].cka, 3)
        (0.0, 'y', 1.0)
    """
    check_batch_size(batch_size, unbiased)
    ra, rb = open_features(a), open_features(b)
    _check_rows(ra, rb)
    keys = _file_keys(ra, rb, layers)
    diffs = {}
    for key in keys:
        stats = DiffStats(unbiased)
        for x, y in zip(ra.chunks(key, batch_size), rb.chunks(key, batch_size), strict=True):
            stats.update(x, y)
        diffs[key] = stats.result()
    layer_paths = {k: ra.layer(k) for k in keys}
    return Comparison(diffs, ra.rows, batch_size, unbiased, (ra.source, rb.source), layer_paths)


def check_batch_size(batch_size: int, unbiased: bool) -> None:
    """A :class:`~layertap.BadInputError` when a batch is too small for the CKA's blocks.

    Example:
        >>> check_batch_size(2, unbiased=True)
        Traceback (most recent call last):
        ...
        layertap._errors.BadInputError: batch_size=2: the unbiased CKA needs at least 4 rows \
per batch (or unbiased=False: 2)
    """
    minimum = MIN_UNBIASED_ROWS if unbiased else 2
    if batch_size < minimum:
        what = "the unbiased CKA" if unbiased else "CKA"
        extra = " (or unbiased=False: 2)" if unbiased else ""
        raise BadInputError(
            f"batch_size={batch_size}: {what} needs at least {minimum} rows per batch{extra}"
        )
