"""Which source for which inputs: :class:`InputOptions` (the input part of a run) and
:func:`make_source`, which picks the :class:`~layertap.io.source.Source` for them.

This module does not import Keras.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from layertap._errors import BadInputError
from layertap.io.arrays import (
    ARRAY_SUFFIXES,
    ArraySource,
    ArraysSource,
    IterableSource,
    is_pydataset,
)
from layertap.io.expand import expand_inputs
from layertap.io.images import RESAMPLE, FileSource, ImageSpec, Preprocess, resolve_preprocess
from layertap.io.source import Source
from layertap.io.text import Encode, TextSource, expand_text_inputs

__all__ = ["InputOptions", "is_text_preprocessor", "make_source"]


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """How inputs become model inputs: the input part of a run (images and arrays today).

    Attributes:
        preprocess: a name from :data:`~layertap.io.images.PRESETS`, ``"module:function"``
            or a callable; ``None`` is ``"rescale"`` for image files and ``"none"`` for arrays.
        size: ``(height, width)`` for a model that takes images of any size.
        resize: a name from :data:`~layertap.io.images.RESAMPLE`.
        workers: decoding threads (``None``: min(8, CPUs)).
        text_column: the column (``.csv``, Parquet) or field (``.jsonl``) holding the text
            (``None``: ``"text"``).
        sequence_length: tokens per text for a model with a text preprocessor (``None``:
            the preprocessor's own).
        preset_images: the preprocessing a keras-hub preset brings for image files (its
            image converter), used when ``preprocess`` is ``None``; arrays are not
            passed through it.

    Example:
        >>> InputOptions(preprocess="tf", size=(32, 32)).preprocess_for("files")
        'tf'
        >>> InputOptions(resize="blurry")
        Traceback (most recent call last):
        ...
        layertap._errors.BadInputError: unknown resize method 'blurry'; valid: 'nearest', \
'bilinear', 'bicubic', 'lanczos', 'box', 'hamming'
    """

    preprocess: str | Preprocess | None = None
    size: tuple[int, int] | None = None
    resize: str = "bilinear"
    workers: int | None = None
    text_column: str | None = None
    sequence_length: int | None = None
    preset_images: Preprocess | None = None

    def __post_init__(self) -> None:
        if self.sequence_length is not None and self.sequence_length < 1:
            raise BadInputError(f"sequence length must be at least 1, not {self.sequence_length}")
        if self.preprocess is not None and not is_text_preprocessor(self.preprocess):
            resolve_preprocess(self.preprocess)
        if self.resize not in RESAMPLE:
            raise BadInputError(
                f"unknown resize method {self.resize!r}; valid: "
                f"{', '.join(repr(r) for r in RESAMPLE)}"
            )
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise BadInputError(f"size must be (height, width) >= 1, not {self.size!r}")
        if self.workers is not None and self.workers < 1:
            raise BadInputError(f"workers must be at least 1, not {self.workers}")

    def preprocess_for(self, kind: str) -> str | Preprocess:
        """The preprocessing for ``"files"`` (images) or anything else (arrays)."""
        if self.preprocess is not None:
            return self.preprocess
        if kind == "files":
            return self.preset_images or "rescale"
        return "none"

    def image_spec(self, model: Any, size: tuple[int, int] | None = None) -> ImageSpec:
        """What each image file becomes for ``model`` (:meth:`ImageSpec.from_model`);
        ``size`` stands in for :attr:`size` when given."""
        return ImageSpec.from_model(
            model,
            preprocess=self.preprocess_for("files"),
            size=size or self.size,
            resize=self.resize,
        )


def is_text_preprocessor(preprocess: Any) -> bool:
    """A keras-hub preprocessor object (it tokenizes; it is not a per-image function).

    Example:
        >>> is_text_preprocessor("tf"), is_text_preprocessor(None)
        (False, False)
    """
    return type(preprocess).__module__.startswith("keras_hub")


def _text_source(inputs: Any, encode: Encode, options: InputOptions, batch_size: int) -> TextSource:
    """Text files (one path, or ``Path`` objects in a list) and texts (``str`` in a list)."""
    items = [Path(inputs)] if isinstance(inputs, str | os.PathLike) else list(inputs)
    expanded: list[str | Path] = []
    for item in items:
        expanded.extend(expand_text_inputs([item]) if isinstance(item, os.PathLike) else [item])
    return TextSource(
        expanded,
        encode,
        batch_size=batch_size,
        text_column=options.text_column,
        description={"sequence_length": options.sequence_length},
    )


def _as_named_arrays(inputs: Any, expected: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A dict of arrays, or a list of arrays named in the model's input order; else None."""
    if isinstance(inputs, Mapping):
        return dict(inputs)
    if (
        isinstance(inputs, list | tuple)
        and inputs
        and all(isinstance(a, np.ndarray) for a in inputs)
    ):
        names = list(expected or {})
        if len(names) != len(inputs):
            raise BadInputError(
                f"got {len(inputs)} input arrays, but the model has {len(names)} inputs "
                f"{names!r}: pass a list in that order or a dict keyed by name"
            )
        return dict(zip(names, inputs, strict=True))
    return None


def _all_paths(inputs: Any) -> bool:
    return isinstance(inputs, list | tuple) and all(
        isinstance(i, str | os.PathLike) for i in inputs
    )


def make_source(
    inputs: Any,
    model: Any,
    options: InputOptions = InputOptions(),  # noqa: B008 (frozen, so safe to share)
    *,
    batch_size: int = 32,
    spec: ImageSpec | None = None,
    encode: Encode | None = None,
    expected: Mapping[str, tuple[int | None, ...]] | None = None,
) -> Source:
    """Pick the :class:`Source` for ``inputs``.

    Paths (a str, a ``PathLike`` or a list of them) are files; a numpy array is
    rows; anything else iterable is batches. ``spec`` (default: from ``model`` and
    ``options``) says what an image file becomes. With ``encode`` (a model with a text
    preprocessor), inputs are text: a path or a list of ``Path`` objects are text files
    (:data:`~layertap.io.text.TEXT_SUFFIXES`), and each ``str`` in a list is one text.

    A dict of arrays, a list of arrays (in input order), or ``.npz`` / Parquet files
    feed a model's several inputs (:class:`ArraysSource`); ``expected`` (``{input name:
    row shape}``) names them and checks their shapes.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> make_source(np.zeros((4, 3)), m).kind
        'array'
    """
    if encode is not None and isinstance(inputs, np.ndarray) and inputs.dtype.kind in "UO":
        inputs = [str(t) for t in inputs.ravel()]  # an array of strings: the texts
    if encode is not None and not isinstance(inputs, np.ndarray | Mapping):
        return _text_source(inputs, encode, options, batch_size)
    named = _as_named_arrays(inputs, expected)
    if named is not None:
        return ArraysSource(named, batch_size=batch_size, expected=expected or None)
    if isinstance(inputs, np.ndarray):
        return ArraySource(
            inputs, batch_size=batch_size, preprocess=options.preprocess_for("array")
        )
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    if _all_paths(inputs):
        paths = expand_inputs(inputs)
        if all(p.suffix.lower() in ARRAY_SUFFIXES for p in paths):
            names = expected or {}
            return ArraysSource.from_files(paths, names, batch_size=batch_size)
        workers = options.workers
        if all(os.fspath(p).lower().endswith(".npy") for p in paths):
            # Arrays only: no image decoding, so the model need not take images.
            arrays = ImageSpec(1, 1, 3, preprocess=options.preprocess_for("array"))
            src = FileSource(paths, arrays, batch_size=batch_size, workers=workers)
            src.preprocessing = {"preset": arrays.preset}
            return src
        spec = spec or options.image_spec(model)
        return FileSource(paths, spec, batch_size=batch_size, workers=workers)
    if isinstance(inputs, Iterable) or is_pydataset(inputs):
        return IterableSource(inputs, preprocess=options.preprocess_for("iterable"))
    raise BadInputError(
        f"inputs of type {type(inputs).__name__} are not supported: pass paths, a numpy "
        "array, an iterable of batches, a tf.data.Dataset or a keras.utils.PyDataset"
    )
