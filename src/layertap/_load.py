"""Stage 1, load: a model file -> ``keras.Model``, safe by default, never compiled."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import keras

from layertap._errors import ModelLoadError

__all__ = ["load_model"]

_FORMATS = ".keras (Keras 3) and .h5 / .hdf5 (Keras HDF5) files"


def _check_file(path: Path) -> str:
    """Return the file's format ('keras' or 'h5'), or raise naming the problem."""
    if not path.exists():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} is a directory; layertap reads {_FORMATS}")
    if zipfile.is_zipfile(path):
        return "keras"
    if h5py.is_hdf5(path):
        return "h5"
    raise ModelLoadError(
        f"model file {str(path)!r} is neither a .keras archive nor an HDF5 file "
        f"(truncated or not a model?); layertap reads {_FORMATS}"
    )


def load_model(
    path: str | os.PathLike[str],
    *,
    custom_objects: Mapping[str, Any] | None = None,
    safe_mode: bool = True,
) -> keras.Model:
    """Load a ``.keras`` or ``.h5`` model file, uncompiled and in safe mode.

    Args:
        path: the model file.
        custom_objects: ``{class name: class}`` for custom layers the file uses.
        safe_mode: keep Keras's refusal to run code stored in the file (``Lambda``
            layers). Turn it off only for files you trust.

    Example:
        >>> import keras, tempfile, os
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> f = os.path.join(tempfile.mkdtemp(), "m.keras"); m.save(f)
        >>> load_model(f).output_shape
        (None, 2)
    """
    path = Path(path)
    kind = _check_file(path)
    if kind == "keras" and path.suffix != ".keras":
        raise ModelLoadError(
            f"model file {str(path)!r} is a .keras archive without the .keras "
            "suffix; rename it to end in .keras"
        )
    if kind == "h5" and path.suffix not in (".h5", ".hdf5"):
        raise ModelLoadError(
            f"model file {str(path)!r} is an HDF5 file without the .h5 suffix; "
            "rename it to end in .h5"
        )
    try:
        model = keras.saving.load_model(
            path,
            custom_objects=dict(custom_objects or {}),
            compile=False,
            safe_mode=safe_mode,
        )
    except Exception as exc:  # Keras raises many types; name the file and reason
        reason = " ".join(str(exc).split())
        if "safe_mode" in reason or "Lambda" in reason:
            raise ModelLoadError(
                f"model file {str(path)!r} holds code (a Lambda layer) that would run "
                "on loading; safe mode refuses it. If you trust the file, load it "
                "with safe_mode=False"
            ) from exc
        if len(reason) > 400:
            reason = reason[:400] + "..."
        raise ModelLoadError(f"cannot load model file {str(path)!r}: {reason}") from exc
    if not isinstance(model, keras.Model):
        raise ModelLoadError(
            f"model file {str(path)!r} holds a {type(model).__name__}, not a keras.Model"
        )
    return model
