"""How similar are two layers' representations of the same inputs: linear CKA and RSA.

:func:`similarity` compares every tap of ``a`` with every tap of ``b`` (``b`` omitted:
``a`` with itself) over the same rows, each row flattened, and returns a
:class:`Similarity` matrix. The formulations, with ``X`` (n x p) and ``Y`` (n x q) one
block of rows, ``K = X Xᵀ`` and ``L = Y Yᵀ`` (linear kernels):

**Linear CKA** (Kornblith et al. 2019), ``unbiased=False``::

    HSIC₀(K, L) = tr(K H L H) / (n - 1)²          H = I - 11ᵀ/n
    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

which equals ``||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)`` for centred ``X``, ``Y``.

**Unbiased** (``unbiased=True``): the unbiased HSIC estimator of Song et al. (2012),
with ``K̃``, ``L̃`` the Gram matrices with their diagonals set to zero::

    HSIC₁ = [tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1] / (n (n - 3))

It needs at least 4 rows in a block (the ``n - 3``).

**Minibatches** (``batch_size=B``; Nguyen et al. 2021): the rows are read in consecutive
blocks of ``B`` (a last block too short for the estimator, fewer than 4 rows, is folded
into the one before), each block's HSIC values are summed over the blocks, and::

    CKA = Σ_b HSIC(K_b, L_b) / sqrt(Σ_b HSIC(K_b, K_b) · Σ_b HSIC(L_b, L_b))

so memory is one block of every tap plus one ``B x B`` Gram matrix per tap:
O(B · Σ features + taps · B²), whatever the number of rows. With ``B = n`` it is the
whole-data estimate; with the unbiased HSIC, smaller blocks estimate the same
quantity (the paper's minibatch CKA); with the biased HSIC, each block's bias remains.

**Whole data** (``batch_size=None``), exact, without an n x n matrix when every layer
is at most n values wide: both estimators follow from feature-space sums over the
rows (``XᵀY``, column sums, row norms; :class:`_PairStats`), streamed over chunks of
rows, one pass per pair of layers: memory O(p·q) plus a chunk. A layer wider than the
row count (p > n) is compared through the n x n Gram matrices of all rows instead,
smaller than the layer itself.

**RSA** (``method="rsa"``): each tap's representational dissimilarity matrix, ``1 -``
the Pearson correlation between rows (``numpy.corrcoef``), and the Spearman
correlation of two RDMs' upper triangles (diagonal left out; ``scipy.stats.spearmanr``).
Whole data only (O(n²) per tap).

The two sources must hold the same inputs in the same row order (their ``paths``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from layertap._errors import BadInputError, FeatureFileError, require
from layertap.io.read import FeatureReader, open_features

__all__ = ["METHODS", "Similarity", "cka", "hsic", "similarity"]

METHODS = ("cka", "rsa")
#: Rows an unbiased HSIC needs in a block.
MIN_UNBIASED_ROWS = 4


@dataclasses.dataclass(frozen=True)
class _Gram:
    """One block's Gram matrix, prepared for :func:`_hsic` (centred, or diagonal zeroed)."""

    g: np.ndarray
    total: float
    rowsum: np.ndarray

    @property
    def n(self) -> int:
        return len(self.g)


def _gram(x: np.ndarray, unbiased: bool) -> _Gram:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    k = x @ x.T
    if unbiased:
        np.fill_diagonal(k, 0.0)
        return _Gram(k, float(k.sum()), k.sum(axis=0))
    centred = k - k.mean(axis=0)[None, :] - k.mean(axis=1)[:, None] + k.mean()
    return _Gram(centred, 0.0, np.zeros(0))


def _hsic(a: _Gram, b: _Gram, unbiased: bool) -> float:
    n = a.n
    trace = float(np.vdot(a.g, b.g))  # tr(A B) for symmetric A, B
    if not unbiased:
        return trace / (n - 1) ** 2  # tr(HKH HLH) = tr(K H L H)
    cross = a.total * b.total / ((n - 1) * (n - 2)) - 2.0 * float(a.rowsum @ b.rowsum) / (n - 2)
    return (trace + cross) / (n * (n - 3))


def hsic(x: Any, y: Any, *, unbiased: bool = False) -> float:
    """HSIC with linear kernels of the rows of ``x`` and ``y`` (the formulas above).

    Example:
        >>> x = np.array([[0.0, 1], [1, 0], [2, 2], [3, 1], [1, 3], [0, 0]])
        >>> round(hsic(x, x), 3), round(hsic(x, x, unbiased=True), 3)
        (4.004, 3.067)
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_block(len(x), unbiased)
    return _hsic(_gram(x, unbiased), _gram(y, unbiased), unbiased)


def cka(x: Any, y: Any, *, unbiased: bool = False) -> float:
    """Linear CKA between the rows of ``x`` (n x p) and ``y`` (n x q), whole data.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(50, 4))
        >>> round(cka(x, x), 6), round(cka(x, 3 * x @ np.linalg.qr(rng.normal(size=(4, 4)))[0]), 6)
        (1.0, 1.0)
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_block(len(x), unbiased)
    gx, gy = _gram(x, unbiased), _gram(y, unbiased)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(
            _hsic(gx, gy, unbiased) / np.sqrt(_hsic(gx, gx, unbiased) * _hsic(gy, gy, unbiased))
        )


def _check_block(n: int, unbiased: bool) -> None:
    need = MIN_UNBIASED_ROWS if unbiased else 2
    if n < need:
        what = "the unbiased HSIC" if unbiased else "CKA"
        raise BadInputError(f"{what} needs at least {need} rows, not {n}")


def _fold_tail(blocks: Iterable[np.ndarray], minimum: int) -> Iterator[np.ndarray]:
    """Blocks as they come, but a last one shorter than ``minimum`` joins the one before."""
    previous: np.ndarray | None = None
    for block in blocks:
        if previous is not None:
            if len(block) < minimum:
                block = np.concatenate([previous, block])
            else:
                yield previous
        previous = block
    if previous is not None:
        yield previous


@dataclasses.dataclass(frozen=True, eq=False)
class Similarity:
    """A similarity matrix: ``matrix[i, j]`` compares ``rows[i]`` (of ``a``) with ``cols[j]``.

    Attributes:
        matrix: ``(len(rows), len(cols))`` float64.
        rows: the keys of ``a``.
        cols: the keys of ``b`` (of ``a`` when ``b`` was not given).
        method: ``"cka"`` or ``"rsa"``.
        unbiased: CKA with the unbiased HSIC.
        batch_size: rows per block (``None``: whole data).
        n: rows compared.
        sources: what ``a`` and ``b`` were.

    Example:
        >>> s = Similarity(np.array([[1.0, 0.5]]), ("a",), ("a", "b"))
        >>> s["a", "b"]
        0.5
    """

    matrix: np.ndarray
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    method: str = "cka"
    unbiased: bool = False
    batch_size: int | None = None
    n: int = 0
    sources: tuple[str, str] = ("", "")

    def __getitem__(self, pair: tuple[str, str]) -> float:
        return float(self.matrix[self.rows.index(pair[0]), self.cols.index(pair[1])])

    @property
    def title(self) -> str:
        """What was computed, in words."""
        if self.method == "rsa":
            return f"RSA (Spearman of 1 - Pearson RDMs) over {self.n} rows"
        hsic = "unbiased HSIC" if self.unbiased else "biased HSIC"
        blocks = f", minibatches of {self.batch_size}" if self.batch_size else ""
        return f"linear CKA ({hsic}{blocks}) over {self.n} rows"

    def table(self) -> str:
        """The matrix as text: rows of ``a``, columns of ``b``.

        Example:
            >>> print(Similarity(np.array([[1.0, 0.25]]), ("x",), ("x", "y"), n=8).table())
            linear CKA (biased HSIC) over 8 rows
               x       y
            x  1.0000  0.2500
        """
        width = max([0, *(len(r) for r in self.rows)]) + 2
        cols = [max(6, len(c)) for c in self.cols]
        head = " " * width + "  ".join(f"{c:<{w}}" for c, w in zip(self.cols, cols, strict=True))
        lines = [self.title, head.rstrip()]
        for name, values in zip(self.rows, self.matrix, strict=True):
            cells = "  ".join(f"{v:<{w}.4f}" for v, w in zip(values, cols, strict=True))
            lines.append(f"{name:<{width}}{cells}".rstrip())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (``matrix`` as nested lists; NaN as ``None``)."""
        matrix = [[None if np.isnan(v) else float(v) for v in row] for row in self.matrix]
        return {
            "method": self.method,
            "unbiased": self.unbiased,
            "batch_size": self.batch_size,
            "n": self.n,
            "sources": list(self.sources),
            "rows": list(self.rows),
            "cols": list(self.cols),
            "matrix": matrix,
        }

    def plot(self) -> Any:
        """The matrix as a heatmap (a PNG :class:`~layertap.explainer.viz.Picture`)."""
        from layertap.analysis.plot import heatmap

        return heatmap(self.matrix, self.rows, self.cols, self.title)

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        import html

        return f'<pre>{html.escape(self.table())}</pre><img src="{self.plot().data_uri()}"/>'


def _check_rows(a: FeatureReader, b: FeatureReader) -> None:
    if a.rows != b.rows:
        raise FeatureFileError(f"{a.source} has {a.rows} rows and {b.source} {b.rows}: "
                               "compare features of the same inputs")  # fmt: skip
    pa, pb = a.paths, b.paths
    if not np.array_equal(pa, pb):
        i = int(np.argmax(pa != pb))
        raise FeatureFileError(
            f"{a.source} and {b.source} do not hold the same inputs in the same order "
            f"(row {i}: {str(pa[i])!r} vs {str(pb[i])!r})"
        )


class _PairStats:
    """Sums over rows from which the whole-data HSIC of two layers follows exactly.

    With ``a_i = |x_i|²``, ``b_i = |y_i|²`` and the column sums ``s_x``, ``s_y``::

        Xcᵀ Yc   = XᵀY - s_x s_yᵀ / n                      (biased: ||Xcᵀ Yc||²_F)
        tr(K̃L̃)  = ||XᵀY||²_F - Σ a_i b_i
        1ᵀK̃1    = |s_x|² - Σ a_i
        1ᵀK̃L̃1  = s_xᵀ XᵀY s_y - (Σ a_i y_i)·s_y - (Σ b_i x_i)·s_x + Σ a_i b_i

    so memory is ``p x q`` (plus a chunk of rows), whatever the number of rows.
    """

    def __init__(self, p: int, q: int) -> None:
        self.n = 0
        self.xy = np.zeros((p, q))
        self.sx, self.sy = np.zeros(p), np.zeros(q)
        self.bx, self.ay = np.zeros(p), np.zeros(q)
        self.sa = self.sb = self.ab = 0.0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        y = np.asarray(y, np.float64).reshape(len(y), -1)
        a, b = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        self.n += len(x)
        self.xy += x.T @ y
        self.sx += x.sum(axis=0)
        self.sy += y.sum(axis=0)
        self.bx += b @ x
        self.ay += a @ y
        self.sa += float(a.sum())
        self.sb += float(b.sum())
        self.ab += float(a @ b)

    def hsic(self, unbiased: bool) -> float:
        n = self.n
        if not unbiased:
            centred = self.xy - np.outer(self.sx, self.sy) / n
            return float(np.sum(centred**2)) / (n - 1) ** 2
        trace = float(np.sum(self.xy**2)) - self.ab
        ones = (float(self.sx @ self.sx) - self.sa) * (float(self.sy @ self.sy) - self.sb)
        k_l = float(self.sx @ self.xy @ self.sy) - self.ay @ self.sy - self.bx @ self.sx + self.ab
        return (trace + ones / ((n - 1) * (n - 2)) - 2.0 * float(k_l) / (n - 2)) / (n * (n - 3))


def _pair_hsic(a: FeatureReader, ka: str, b: FeatureReader, kb: str, unbiased: bool) -> float:
    """The whole-data HSIC of ``a[ka]`` and ``b[kb]``, streamed over chunks of rows."""
    stats = _PairStats(a.dim(ka), b.dim(kb))
    for x, y in zip(a.chunks(ka), b.chunks(kb), strict=True):
        stats.update(x, y)
    return stats.hsic(unbiased)


def _feature_space_matrix(a: FeatureReader, b: FeatureReader | None, unbiased: bool) -> np.ndarray:
    """Whole-data CKA of every pair from feature-space sums: one streamed pass per pair."""
    rb = a if b is None else b
    ka, kb = a.keys, rb.keys
    self_a = {k: _pair_hsic(a, k, a, k, unbiased) for k in ka}
    self_b = self_a if b is None else {k: _pair_hsic(rb, k, rb, k, unbiased) for k in kb}
    out = np.zeros((len(ka), len(kb)))
    for i, x in enumerate(ka):
        for j, y in enumerate(kb):
            if b is None and j < i:
                out[i, j] = out[j, i]
                continue
            cross = self_a[x] if b is None and x == y else _pair_hsic(a, x, rb, y, unbiased)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[i, j] = cross / np.sqrt(self_a[x] * self_b[y])
    return out


def _cka_matrix(
    a: FeatureReader, b: FeatureReader | None, unbiased: bool, batch_size: int | None
) -> np.ndarray:
    """Every key of ``a`` against every key of ``b`` in one pass over blocks of rows."""
    step = batch_size or max(a.rows, 1)
    minimum = MIN_UNBIASED_ROWS if unbiased else 2
    ka = a.keys
    kb = ka if b is None else b.keys
    xy, xx, yy = np.zeros((len(ka), len(kb))), np.zeros(len(ka)), np.zeros(len(kb))
    streams_a = [_fold_tail(a.chunks(k, step), minimum) for k in ka]
    streams_b = [] if b is None else [_fold_tail(b.chunks(k, step), minimum) for k in kb]
    for blocks in zip(*streams_a, *streams_b, strict=True):
        grams = [_gram(x, unbiased) for x in blocks]
        ga = grams[: len(ka)]
        gb = ga if b is None else grams[len(ka) :]
        self_a = np.array([_hsic(g, g, unbiased) for g in ga])
        self_b = self_a if b is None else np.array([_hsic(h, h, unbiased) for h in gb])
        for i, g in enumerate(ga):
            for j, h in enumerate(gb):
                xy[i, j] += self_a[i] if g is h else _hsic(g, h, unbiased)
        xx += self_a
        yy += self_b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(xy / np.sqrt(np.outer(xx, yy)), np.float64)


def _widths(a: FeatureReader, b: FeatureReader | None) -> list[int]:
    return [a.dim(k) for k in a.keys] + ([] if b is None else [b.dim(k) for k in b.keys]) + [0]


def _rdm(reader: FeatureReader, key: str) -> np.ndarray:
    x = np.asarray(reader.read(key), np.float64).reshape(reader.rows, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 - np.asarray(np.corrcoef(x), np.float64).reshape(reader.rows, reader.rows)
    return np.asarray(d[np.triu_indices(reader.rows, k=1)])


def _rsa_matrix(a: FeatureReader, b: FeatureReader | None) -> np.ndarray:
    stats = require("scipy.stats", "analysis", "RSA")
    ra = [_rdm(a, k) for k in a.keys]
    rb = ra if b is None else [_rdm(b, k) for k in b.keys]
    out = np.zeros((len(ra), len(rb)))
    for i, x in enumerate(ra):
        for j, y in enumerate(rb):
            out[i, j] = 1.0 if x is y else float(stats.spearmanr(x, y).statistic)
    return out


def _check_options(method: str, unbiased: bool, batch_size: int | None, rows: int) -> None:
    if method not in METHODS:
        raise BadInputError(f"unknown similarity method {method!r}; valid: {', '.join(METHODS)}")
    if method == "rsa" and (unbiased or batch_size is not None):
        raise BadInputError(
            "RSA compares whole-data RDMs: it takes neither unbiased nor batch_size"
        )
    minimum = MIN_UNBIASED_ROWS if unbiased else 2
    if batch_size is not None and batch_size < minimum:
        raise BadInputError(f"batch_size={batch_size}: a block needs at least {minimum} rows")
    if rows < minimum:
        raise BadInputError(
            f"{method.upper()} needs at least {minimum} rows; the features have {rows}"
        )


def similarity(
    a: Any,
    b: Any = None,
    *,
    method: str = "cka",
    unbiased: bool = False,
    batch_size: int | None = None,
) -> Similarity:
    """Compare every layer of ``a`` with every layer of ``b`` (or of ``a``): CKA or RSA.

    Args:
        a: anything :func:`~layertap.io.read.open_features` takes.
        b: another such source holding the same inputs in the same order, or ``None``
            (``a``'s layers against each other).
        method: ``"cka"`` (linear CKA) or ``"rsa"``.
        unbiased: CKA with the unbiased HSIC estimator.
        batch_size: CKA over consecutive blocks of this many rows (bounded memory).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(40, 5))
        >>> s = similarity({"x": x, "2x": 2 * x, "noise": rng.normal(size=(40, 5))})
        >>> s.rows, round(s["x", "2x"], 6), s["x", "noise"] < 0.5
        (('x', '2x', 'noise'), 1.0, True)
    """
    ra = open_features(a)
    rb = None if b is None else open_features(b)
    _check_options(method, unbiased, batch_size, ra.rows)
    if rb is not None:
        _check_rows(ra, rb)
    if method == "rsa":
        matrix = _rsa_matrix(ra, rb)
    elif batch_size is None and max(_widths(ra, rb)) <= ra.rows:
        matrix = _feature_space_matrix(ra, rb, unbiased)
    else:  # blocks of rows; batch_size None: one block of all rows (n x n Grams, n < width)
        matrix = _cka_matrix(ra, rb, unbiased, batch_size)
    cols = ra.keys if rb is None else rb.keys
    sources = (ra.source, ra.source if rb is None else rb.source)
    return Similarity(
        matrix, tuple(ra.keys), tuple(cols), method, unbiased, batch_size, ra.rows, sources
    )
