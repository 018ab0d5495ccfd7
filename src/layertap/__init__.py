"""layertap: features from any layer of a pre-trained Keras model, in one forward pass.

The error classes load at once; everything that needs Keras loads on first use, so
``import layertap`` (and ``layertap --help``) does not start a Keras backend.

Example:
    >>> import keras, numpy as np, layertap
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
    ...                       keras.layers.Dense(1, name="out")])
    >>> [p.path for p in layertap.list_layers(m)]
    ['hidden', 'out']
    >>> layertap.Extractor(m, ["hidden"])(np.ones((2, 4), "float32"))["hidden"].shape
    (2, 3)
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from layertap._errors import (
    AmbiguousLayerError,
    BadInputError,
    BadSpecError,
    FeatureFileError,
    LabelError,
    LayerNotFoundError,
    LayertapError,
    MissingDependencyError,
    ModelLoadError,
    OutputError,
    UnsupportedModelError,
    UntracedLayerError,
)

if TYPE_CHECKING:
    from layertap.analysis.compare import Comparison, LayerDiff, compare_files
    from layertap.analysis.probe import LayerScore, ProbeResult, probe
    from layertap.analysis.reduction import LayerReduction, Reduction, reduce
    from layertap.analysis.similarity import Similarity, similarity
    from layertap.engines.compare import compare
    from layertap.engines.local import ExtractResult, Features, extract
    from layertap.explainer.methods import Explanation, explain
    from layertap.graph.capture import tap
    from layertap.graph.extractor import Extractor, TapInfo, feature_model, gradients
    from layertap.graph.gradients import Gradients
    from layertap.graph.load import load_model
    from layertap.graph.preset import Preset, load_preset
    from layertap.graph.walk import LayerInfo, list_layers, summary
    from layertap.io.read import FeatureReader, open_features

try:
    __version__ = version("layertap")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "probe": "layertap.analysis.probe",
    "reduce": "layertap.analysis.reduction",
    "Reduction": "layertap.analysis.reduction",
    "LayerReduction": "layertap.analysis.reduction",
    "ProbeResult": "layertap.analysis.probe",
    "LayerScore": "layertap.analysis.probe",
    "similarity": "layertap.analysis.similarity",
    "compare": "layertap.engines.compare",
    "compare_files": "layertap.analysis.compare",
    "Comparison": "layertap.analysis.compare",
    "LayerDiff": "layertap.analysis.compare",
    "Similarity": "layertap.analysis.similarity",
    "open_features": "layertap.io.read",
    "FeatureReader": "layertap.io.read",
    "extract": "layertap.engines.local",
    "ExtractResult": "layertap.engines.local",
    "Features": "layertap.engines.local",
    "Extractor": "layertap.graph.extractor",
    "TapInfo": "layertap.graph.extractor",
    "feature_model": "layertap.graph.extractor",
    "gradients": "layertap.graph.extractor",
    "Gradients": "layertap.graph.gradients",
    "explain": "layertap.explainer.methods",
    "Explanation": "layertap.explainer.methods",
    "LayerInfo": "layertap.graph.walk",
    "list_layers": "layertap.graph.walk",
    "summary": "layertap.graph.walk",
    "load_model": "layertap.graph.load",
    "Preset": "layertap.graph.preset",
    "load_preset": "layertap.graph.preset",
    "tap": "layertap.graph.capture",
}
#: Names that moved to :mod:`layertap.ray`; still found here, with a DeprecationWarning.
_MOVED_TO_RAY = frozenset({"FeatureMapper", "extract_dataset", "extract_parquet"})

__all__ = [
    "AmbiguousLayerError",
    "BadInputError",
    "BadSpecError",
    "Comparison",
    "Explanation",
    "ExtractResult",
    "Extractor",
    "FeatureFileError",
    "FeatureReader",
    "Features",
    "Gradients",
    "LabelError",
    "LayerDiff",
    "LayerInfo",
    "LayerNotFoundError",
    "LayerReduction",
    "LayerScore",
    "LayertapError",
    "MissingDependencyError",
    "ModelLoadError",
    "OutputError",
    "Preset",
    "ProbeResult",
    "Reduction",
    "Similarity",
    "TapInfo",
    "UnsupportedModelError",
    "UntracedLayerError",
    "__version__",
    "compare",
    "compare_files",
    "explain",
    "extract",
    "feature_model",
    "gradients",
    "list_layers",
    "load_model",
    "load_preset",
    "open_features",
    "probe",
    "reduce",
    "similarity",
    "summary",
    "tap",
]


def __getattr__(name: str) -> Any:
    """Import the Keras-backed names on first use."""
    if name in _MOVED_TO_RAY:
        import warnings

        warnings.warn(
            f"layertap.{name} moved to layertap.ray.{name}", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module("layertap.ray"), name)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'layertap' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
