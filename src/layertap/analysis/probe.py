"""Per-layer linear probes: how well a linear model reads the labels off each layer.

:func:`probe` cross-validates one scikit-learn estimator per tap and returns a
:class:`ProbeResult`. The defaults, exactly:

- classes (integer, string or boolean labels): ``make_pipeline(StandardScaler(),
  LogisticRegression(max_iter=1000))``, folds ``StratifiedKFold(cv, shuffle=True,
  random_state=seed)``, scored by accuracy;
- floating-point labels: ``make_pipeline(StandardScaler(), Ridge())``, folds
  ``KFold(cv, shuffle=True, random_state=seed)``, scored by R²;

each row flattened to one vector, and the scores are scikit-learn's
``cross_val_score(estimator, X, y, cv=folds, scoring=...)``, fold by fold. A layer
wider than ``max_dim`` values is first reduced to ``max_dim`` by scikit-learn's
``GaussianRandomProjection(max_dim, random_state=seed)`` (fitted without the labels, so
nothing leaks between folds); the result and the table say so.

Memory: one layer at a time is read whole (through :func:`~layertap.io.read.open_features`),
as scikit-learn's cross-validation needs it; the other layers stay on disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from layertap._errors import LabelError, require
from layertap.analysis.labels import is_regression, match_labels
from layertap.io.read import FeatureReader, open_features

__all__ = ["LayerScore", "ProbeResult", "default_estimator", "folds_for", "probe"]


@dataclasses.dataclass(frozen=True)
class LayerScore:
    """One layer's cross-validated score.

    Attributes:
        mean: the mean over folds.
        std: the standard deviation over folds (``numpy.std``, ddof 0).
        folds: the score of each fold, as ``cross_val_score`` returns them.
        dim: values per row of the layer (flattened).
        projected: the width it was randomly projected to, or ``None``.

    Example:
        >>> LayerScore(0.75, 0.05, (0.7, 0.8), 64).mean
        0.75
    """

    mean: float
    std: float
    folds: tuple[float, ...]
    dim: int
    projected: int | None = None


@dataclasses.dataclass(frozen=True)
class ProbeResult(Mapping[str, LayerScore]):
    """``{key: LayerScore}`` in the file's key order, and how the scores were made.

    Attributes:
        scores: ``{key: LayerScore}``.
        metric: ``"accuracy"`` or ``"r2"``.
        cv: folds.
        seed: the folds' (and projections') random state.
        rows: rows probed.
        classes: the number of classes (``None`` for a regression).
        estimator: the estimator, as ``repr`` shows it.

    Example:
        >>> r = ProbeResult({"a": LayerScore(0.5, 0.1, (0.4, 0.6), 8),
        ...                  "b": LayerScore(0.9, 0.0, (0.9, 0.9), 8)}, "accuracy", 2, 0, 10, 2, "")
        >>> r.best, r["a"].folds
        ('b', (0.4, 0.6))
    """

    scores: Mapping[str, LayerScore]
    metric: str
    cv: int
    seed: int
    rows: int
    classes: int | None
    estimator: str

    def __getitem__(self, key: str) -> LayerScore:
        return self.scores[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def best(self) -> str:
        """The key of the layer with the highest mean score."""
        return max(self.scores, key=lambda k: self.scores[k].mean)

    def table(self) -> str:
        """The scores as text, one layer a line, the best one marked ``<- best``.

        Example:
            >>> r = ProbeResult({"emb": LayerScore(0.9, 0.05, (0.85, 0.95), 8192, 4096)},
            ...                 "accuracy", 2, 0, 10, 2, "LogisticRegression()")
            >>> print(r.table())  # doctest: +NORMALIZE_WHITESPACE
            linear probe: 2-fold accuracy over 10 rows, 2 classes, seed 0; LogisticRegression()
            layer  accuracy         dim
            emb    0.9000 ± 0.0500  8192 -> 4096 (random projection)  <- best
        """
        what = f"{self.classes} classes" if self.classes is not None else "regression"
        head = (
            f"linear probe: {self.cv}-fold {self.metric} over {self.rows} rows, {what}, "
            f"seed {self.seed}; {self.estimator}"
        )
        names = list(self.scores)
        width = max([len("layer"), *(len(k) for k in names)])
        lines = [head, f"{'layer':<{width}}  {self.metric:<15}  dim"]
        best = self.best if names else None
        for key in names:
            s = self.scores[key]
            dim = (
                f"{s.dim}"
                if s.projected is None
                else f"{s.dim} -> {s.projected} (random projection)"
            )
            mark = "  <- best" if key == best else ""
            lines.append(f"{key:<{width}}  {s.mean:.4f} ± {s.std:.4f}  {dim}{mark}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: the settings, ``best`` and ``layers`` {key: score}."""
        return {
            "metric": self.metric,
            "cv": self.cv,
            "seed": self.seed,
            "rows": self.rows,
            "classes": self.classes,
            "estimator": self.estimator,
            "best": self.best if self.scores else None,
            "layers": {k: dataclasses.asdict(v) for k, v in self.scores.items()},
        }

    def plot(self) -> Any:
        """The mean score per layer with ±1 std error bars (a PNG :class:`Picture`)."""
        from layertap.analysis.plot import scores_plot

        names = list(self.scores)
        return scores_plot(
            names,
            [self.scores[k].mean for k in names],
            [self.scores[k].std for k in names],
            self.metric,
            names.index(self.best),
        )

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        import html

        picture = self.plot().data_uri() if self.scores else ""
        image = f'<img src="{picture}"/>' if picture else ""
        return f"<pre>{html.escape(self.table())}</pre>{image}"


def default_estimator(regression: bool) -> Any:
    """The default probe: scaler + logistic regression (classes) or + ridge (values).

    Example:
        >>> default_estimator(False)
        Pipeline(steps=[('standardscaler', StandardScaler()),
                        ('logisticregression', LogisticRegression(max_iter=1000))])
    """
    require("sklearn", "analysis", "linear probes")
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    last = Ridge() if regression else LogisticRegression(max_iter=1000)
    return make_pipeline(StandardScaler(), last)


def folds_for(regression: bool, cv: int, seed: int) -> Any:
    """The default splitter: ``StratifiedKFold`` for classes, ``KFold`` for values.

    Example:
        >>> folds_for(False, 5, 0)
        StratifiedKFold(n_splits=5, random_state=0, shuffle=True)
    """
    require("sklearn", "analysis", "linear probes")
    from sklearn.model_selection import KFold, StratifiedKFold

    kind = KFold if regression else StratifiedKFold
    return kind(cv, shuffle=True, random_state=seed)


def _check_labels(y: np.ndarray, cv: int, regression: bool) -> int | None:
    """The number of classes (``None``: a regression); a :class:`LabelError` if unusable."""
    if cv < 2:
        raise LabelError(f"cv={cv}: cross-validation needs at least 2 folds")
    if regression:
        if len(y) < cv:
            raise LabelError(f"{len(y)} rows cannot be split into cv={cv} folds")
        return None
    found, counts = np.unique(y, return_counts=True)
    classes = found.tolist()
    if len(classes) < 2:
        only = classes[0] if classes else None
        raise LabelError(f"the labels hold one class only ({only!r}); a probe needs two or more")
    if counts.min() < cv:
        small = classes[int(np.argmin(counts))]
        raise LabelError(
            f"class {small!r} has {int(counts.min())} rows, fewer than the cv={cv} folds "
            "(each fold needs one of every class); lower --cv or add rows"
        )
    return len(classes)


def _keys(reader: FeatureReader, layers: Sequence[str] | str | None) -> list[str]:
    if layers is None:
        return reader.keys
    keys = [layers] if isinstance(layers, str) else list(layers)
    for key in keys:
        reader.column(key)  # names the key and what is valid
    return keys


def _layer_matrix(
    reader: FeatureReader, key: str, max_dim: int, seed: int
) -> tuple[Any, int, int | None]:
    x = reader.read(key).reshape(reader.rows, -1)
    dim = int(x.shape[1])
    if dim <= max_dim:
        return x, dim, None
    from sklearn.random_projection import GaussianRandomProjection

    projection = GaussianRandomProjection(n_components=max_dim, random_state=seed)
    return projection.fit_transform(x), dim, max_dim


def probe(
    features: Any,
    labels: Any,
    *,
    layers: Sequence[str] | str | None = None,
    cv: int = 5,
    seed: int = 0,
    estimator: Any = None,
    max_dim: int = 4096,
) -> ProbeResult:
    """Cross-validate a linear probe on each layer of ``features``; one score per layer.

    Args:
        features: anything :func:`~layertap.io.read.open_features` takes (a feature
            file, a Ray folder, ``Features``, a dict of arrays).
        labels: one per row (an array), or a ``.csv`` / ``.json`` / ``.npy`` file
            (:mod:`layertap.analysis.labels`: matched to the rows by path).
        layers: the keys to probe (default: every tap; masks are not probed).
        cv: folds.
        seed: ``random_state`` of the folds and of the random projection.
        estimator: a scikit-learn estimator (default: :func:`default_estimator`).
        max_dim: layers wider than this are randomly projected to it first.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat([0, 1], 20)
        >>> feats = {"noise": rng.normal(size=(40, 3)), "signal": y[:, None] + rng.normal(
        ...     scale=0.1, size=(40, 2))}
        >>> r = probe(feats, y, cv=4)
        >>> r.best, r["signal"].mean, len(r["noise"].folds)
        ('signal', 1.0, 4)
    """
    require("sklearn", "analysis", "linear probes")
    from sklearn.model_selection import cross_val_score

    reader = open_features(features)
    keys = _keys(reader, layers)
    y = match_labels(labels, reader)
    regression = is_regression(y)
    classes = _check_labels(y, cv, regression)
    model = estimator if estimator is not None else default_estimator(regression)
    splitter = folds_for(regression, cv, seed)
    metric = "r2" if regression else "accuracy"
    scores = {}
    for key in keys:
        x, dim, projected = _layer_matrix(reader, key, max_dim, seed)
        folds = cross_val_score(model, x, y, cv=splitter, scoring=metric)
        scores[key] = LayerScore(
            float(np.mean(folds)),
            float(np.std(folds)),
            tuple(float(f) for f in folds),
            dim,
            projected,
        )
    return ProbeResult(scores, metric, cv, seed, reader.rows, classes, _describe(model))


def _describe(model: Any) -> str:
    """``StandardScaler() + LogisticRegression(max_iter=1000)`` for a pipeline; else its repr."""
    steps = getattr(model, "steps", None)
    parts = [step for _, step in steps] if isinstance(steps, list) else [model]
    return " + ".join(" ".join(repr(p).split()) for p in parts)
