"""Stage 5, data: inputs -> preprocessed batches for a model, decoding in worker threads.

Every name of stage 5, importable from here; each lives in the module of its source:

- :mod:`layertap.io.source`: :class:`Batch` and :class:`Source`, what every kind gives;
- :mod:`layertap.io.expand`: files, folders (recursive, sorted, hidden entries left
  out), glob patterns and ``.txt`` / ``.csv`` lists of paths -> files
  (:func:`expand_inputs`);
- :mod:`layertap.io.images`: image files and ``.npy`` arrays (one row per input):
  :data:`PRESETS`, :data:`RESAMPLE`, :class:`ImageSpec`, :func:`load_image`,
  :func:`decode_image`, the threaded :class:`Decoder` and :class:`FileSource`;
- :mod:`layertap.io.arrays`: a numpy array (:class:`ArraySource`), named arrays and
  ``.npz`` / Parquet files of them (:class:`ArraysSource`), and any iterable of batches,
  a ``tf.data.Dataset`` or a ``keras.utils.PyDataset`` (:class:`IterableSource`; an
  element may be ``x`` or ``(x, y, ...)``, only ``x`` is used);
- :mod:`layertap.io.text`: lines and rows of text files (:class:`TextSource`);
- :mod:`layertap.io.inputs`: :class:`InputOptions` and :func:`make_source`, which picks
  the kind.

Every source yields :class:`Batch` records: the row ids (file paths, ``file.npy[i]``,
``array[i]``), the preprocessed array, the inputs that failed on the way, and how many
inputs were consumed in all. A source can start at any input index, which is what a
resumed run needs.

Example:
    >>> from layertap.io import data, images
    >>> data.ImageSpec is images.ImageSpec
    True
"""

from __future__ import annotations

from layertap.io.arrays import ARRAY_SUFFIXES, ArraySource, ArraysSource, IterableSource
from layertap.io.expand import expand_inputs
from layertap.io.images import (
    PRESETS,
    RESAMPLE,
    Decoder,
    FileSource,
    ImageSpec,
    Preprocess,
    decode_image,
    load_image,
    resolve_preprocess,
)
from layertap.io.inputs import InputOptions, is_text_preprocessor, make_source
from layertap.io.source import Batch, Source
from layertap.io.text import TEXT_SUFFIXES, Encode, TextSource, expand_text_inputs

__all__ = [
    "ARRAY_SUFFIXES",
    "PRESETS",
    "RESAMPLE",
    "TEXT_SUFFIXES",
    "ArraySource",
    "ArraysSource",
    "Batch",
    "Decoder",
    "Encode",
    "FileSource",
    "ImageSpec",
    "InputOptions",
    "IterableSource",
    "Preprocess",
    "Source",
    "TextSource",
    "decode_image",
    "expand_inputs",
    "expand_text_inputs",
    "is_text_preprocessor",
    "load_image",
    "make_source",
    "resolve_preprocess",
]
