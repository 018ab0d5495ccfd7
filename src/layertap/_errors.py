"""The exceptions layertap raises for a user's mistake.

Every class here derives from :class:`LayertapError`, so one ``except`` clause
catches them all (the command line does exactly that)::

    LayertapError                 base: a user mistake, message says what is valid
    ├── LayerNotFoundError        a spec names no layer; close matches listed
    │   └── UntracedLayerError    a spec reaches inside a layer whose call() did not trace
    ├── AmbiguousLayerError       a spec fits several places (names them, or the @k choices)
    ├── BadSpecError              a spec that is not an int, a name, a path or a glob
    ├── BadInputError             inputs that do not fit the model's inputs
    ├── UnsupportedModelError     a model layertap cannot walk (and why)
    ├── ModelLoadError            a model file that cannot be read (names the file)
    ├── OutputError               an output file that cannot or may not be written
    ├── FeatureFileError          a feature source that is not layertap's, or a key it lacks
    ├── LabelError                labels that do not match the rows, or cannot be probed
    └── MissingDependencyError    an optional package is not installed (names the extra)

Example:
    >>> import layertap
    >>> issubclass(layertap.LayerNotFoundError, layertap.LayertapError)
    True
"""

from __future__ import annotations

import importlib
from types import ModuleType


class LayertapError(Exception):
    """A user mistake; the message names the bad value and what would be valid."""


class LayerNotFoundError(LayertapError, LookupError):
    """A layer spec matches no tappable place."""


class UntracedLayerError(LayerNotFoundError):
    """A spec reaches inside a custom layer whose ``call()`` could not be traced."""


class AmbiguousLayerError(LayertapError, LookupError):
    """A layer spec matches several places, or a layer called several times lacks ``@k``."""


class BadSpecError(LayertapError, ValueError):
    """A layer spec of the wrong type or syntax."""


class BadInputError(LayertapError, ValueError):
    """Inputs whose number, names or shapes do not fit the model."""


class UnsupportedModelError(LayertapError, TypeError):
    """A model that layertap cannot walk into a graph of tappable places."""


class ModelLoadError(LayertapError, OSError):
    """A model file that does not exist, is not a model, or cannot be read."""


class OutputError(LayertapError, OSError):
    """An output path with an unknown suffix, that exists already, or cannot be written."""


class FeatureFileError(LayertapError, ValueError):
    """A feature file or folder layertap did not write, or a key it does not hold."""


class LabelError(LayertapError, ValueError):
    """Labels whose count or paths do not match the rows, or with a single class."""


class MissingDependencyError(LayertapError, ImportError):
    """An optional package a feature needs is not installed; names the extra to install."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingDependencyError` naming ``extra``.

    Example:
        >>> require("json", "core", "reading JSON").__name__
        'json'
        >>> require("no_such_module", "ray", "the Ray engine")
        Traceback (most recent call last):
        ...
        layertap._errors.MissingDependencyError: the Ray engine needs the package \
'no_such_module', which is not installed: pip install 'layertap[ray]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the package {module!r}, which is not installed: "
            f"pip install 'layertap[{extra}]'"
        ) from exc
