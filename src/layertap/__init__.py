"""layertap: features from any layer of a pre-trained Keras model, in one forward pass.

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

from importlib.metadata import PackageNotFoundError, version

from layertap._errors import (
    AmbiguousLayerError,
    BadInputError,
    BadSpecError,
    LayerNotFoundError,
    LayertapError,
    ModelLoadError,
    UnsupportedModelError,
)
from layertap._extractor import Extractor, TapInfo
from layertap._graph import LayerInfo, list_layers, summary
from layertap._load import load_model

try:
    __version__ = version("layertap")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AmbiguousLayerError",
    "BadInputError",
    "BadSpecError",
    "Extractor",
    "LayerInfo",
    "LayerNotFoundError",
    "LayertapError",
    "ModelLoadError",
    "TapInfo",
    "UnsupportedModelError",
    "__version__",
    "list_layers",
    "load_model",
    "summary",
]
