"""Stage 5 (minimal), data: image files on disk -> preprocessed batches for a model.

Three steps, each usable alone:

1. :func:`expand_inputs`: files, folders (recursively, sorted) and glob patterns
   -> one list of paths.
2. :func:`load_image`: one file -> a float array the model's input takes (EXIF
   orientation applied, converted to RGB or grayscale by the model's channel
   count, resized to the model's height and width, scaled by a preset).
3. :class:`ImageBatches`: paths -> ``(paths, array)`` batches; a file that cannot
   be decoded is skipped and recorded in ``.failed`` as ``(path, reason)``.

:class:`ImageSpec` holds what the model wants (size, channels, layout) and the
preprocessing preset; :meth:`ImageSpec.from_model` reads it from the model's input.

Presets (``PRESETS``): ``rescale`` (multiply by 1/255, so pixels lie in [0, 1])
and ``none`` (pixels as float32 in [0, 255], for models that normalise inside).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from layertap._errors import BadInputError

__all__ = [
    "PRESETS",
    "ImageBatches",
    "ImageSpec",
    "expand_inputs",
    "load_image",
]

_GLOB_CHARS = frozenset("*?[")


def _rescale(x: np.ndarray) -> np.ndarray:
    scaled: np.ndarray = x * np.float32(1.0 / 255.0)
    return scaled


def _none(x: np.ndarray) -> np.ndarray:
    return x


#: Preprocessing presets: name -> function of a float32 array with pixels in [0, 255].
PRESETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rescale": _rescale,
    "none": _none,
}


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What one image must become to enter the model.

    Attributes:
        height: rows after resizing.
        width: columns after resizing.
        channels: 3 (RGB) or 1 (grayscale, ``L``).
        channels_first: the model takes ``(C, H, W)`` instead of ``(H, W, C)``.
        preset: a name from ``PRESETS``.

    Example:
        >>> ImageSpec(32, 48, 3).describe()["size"]
        [32, 48]
    """

    height: int
    width: int
    channels: int = 3
    channels_first: bool = False
    preset: str = "rescale"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise BadInputError(
                f"unknown preprocessing preset {self.preset!r}; valid presets: "
                f"{', '.join(repr(p) for p in PRESETS)}"
            )
        if self.channels not in (1, 3):
            raise BadInputError(
                f"images have 1 (grayscale) or 3 (RGB) channels, not {self.channels}"
            )

    @classmethod
    def from_model(cls, model: Any, *, preset: str = "rescale") -> ImageSpec:
        """Read size, channels and layout from a one-input image model's input shape.

        Example:
            >>> import keras
            >>> m = keras.Sequential([keras.Input((40, 30, 3)), keras.layers.Flatten()])
            >>> ImageSpec.from_model(m)
            ImageSpec(height=40, width=30, channels=3, channels_first=False, preset='rescale')
        """
        inputs = list(model.inputs)
        if len(inputs) != 1:
            raise BadInputError(
                f"model {model.name!r} has {len(inputs)} inputs; images can feed only "
                "a model with one image input"
            )
        shape = tuple(inputs[0].shape)
        if len(shape) != 4:
            raise BadInputError(
                f"model {model.name!r} takes inputs of shape {shape}, not images "
                "(batch, height, width, channels)"
            )
        _, a, b, c = shape
        if c in (1, 3):
            height, width, channels, first = a, b, c, False
        elif a in (1, 3):
            height, width, channels, first = b, c, a, True
        else:
            raise BadInputError(
                f"model {model.name!r} takes inputs of shape {shape}: neither the last "
                "nor the first axis after the batch has 1 or 3 channels"
            )
        if height is None or width is None:
            raise BadInputError(
                f"model {model.name!r} takes images of any size {shape}, so layertap "
                "cannot choose one size to batch them at; give the model a fixed input size"
            )
        return cls(int(height), int(width), int(channels), first, preset)

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the preprocessing, stored beside the features.

        Example:
            >>> ImageSpec(8, 8, 1, preset="none").describe()["color_mode"]
            'L'
        """
        return {
            "preset": self.preset,
            "size": [self.height, self.width],
            "color_mode": "RGB" if self.channels == 3 else "L",
            "layout": "CHW" if self.channels_first else "HWC",
            "resample": "bilinear",
            "exif_transpose": True,
        }


def _expand_one(item: str | os.PathLike[str]) -> list[Path]:
    text = os.fspath(item)
    path = Path(text)
    if path.is_dir():
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    if path.exists():
        return [path]
    if _GLOB_CHARS & set(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [p for p in found if p.is_file()]
        if not files:
            raise BadInputError(f"input pattern {text!r} matches no file")
        return files
    raise BadInputError(f"input {text!r} does not exist (expected an image file, folder or glob)")


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Turn files, folders and glob patterns into one list of files, in a stable order.

    A folder gives every file below it, recursively, sorted by path; files and
    folders whose name starts with ``.`` are left out. A pattern (``*``, ``?``,
    ``[...]``; ``**`` crosses folders) gives its matches, sorted. Other items are
    kept in the order given; a file named twice is kept once. Files are not
    opened here: one that is not an image fails later, in :class:`ImageBatches`,
    and is reported there.

    Raises :class:`~layertap.BadInputError` for an item that does not exist, a
    pattern that matches nothing, or when no file is found at all.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ["b.png", "a.jpg", "sub/c.png", ".hidden"]:
        ...     (d / name).parent.mkdir(exist_ok=True); (d / name).touch()
        >>> [p.relative_to(d).as_posix() for p in expand_inputs([d])]
        ['a.jpg', 'b.png', 'sub/c.png']
    """
    seen: set[Path] = set()
    files: list[Path] = []
    for item in inputs:
        for path in _expand_one(item):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                files.append(path)
    if not files:
        raise BadInputError("no input files found (the folders given are empty)")
    return files


def load_image(path: str | os.PathLike[str], spec: ImageSpec) -> np.ndarray:
    """Decode one image file into the float32 array ``spec`` describes.

    The image is turned upright by its EXIF orientation, converted to RGB or
    grayscale, resized (bilinear, aspect ratio not kept) to ``spec``'s size and
    scaled by ``spec.preset``. Raises ``OSError`` (or ``ValueError``) when the file
    cannot be decoded.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "red.png"
        >>> Image.new("RGB", (100, 50), (255, 0, 0)).save(f)
        >>> x = load_image(f, ImageSpec(8, 16))
        >>> x.shape, x.dtype.name, float(x[..., 0].max())
        ((8, 16, 3), 'float32', 1.0)
    """
    with warnings.catch_warnings():
        # Pillow warns about harmless file quirks (palette transparency, odd EXIF);
        # a file it cannot decode raises instead, and that is reported.
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img = img.convert("RGB" if spec.channels == 3 else "L")
            if img.size != (spec.width, spec.height):
                img = img.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if spec.channels_first:
        array = np.transpose(array, (2, 0, 1))
    return np.ascontiguousarray(PRESETS[spec.preset](array), dtype=np.float32)


class ImageBatches:
    """Iterate ``(paths, array)`` batches of decoded images; record the files that fail.

    ``array`` has shape ``(len(paths), H, W, C)`` (or ``(n, C, H, W)``); a batch
    holds ``batch_size`` images except the last. A file that cannot be decoded is
    skipped and appended to :attr:`failed` as ``(path, reason)``; the run goes on.

    Attributes:
        paths: the files, in order.
        failed: ``(path, reason)`` for every file skipped so far.
        done: how many files were read or skipped so far (for a progress bar).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (9, 9)).save(d / "a.png"); _ = (d / "b.png").write_text("no")
        >>> batches = ImageBatches(expand_inputs([d]), ImageSpec(4, 4), batch_size=8)
        >>> [(len(p), x.shape) for p, x in batches]
        [(1, (1, 4, 4, 3))]
        >>> [(Path(p).name, why[:26]) for p, why in batches.failed]
        [('b.png', 'cannot identify image file')]
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        spec: ImageSpec,
        *,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch size must be at least 1, not {batch_size}")
        self.paths = [os.fspath(p) for p in paths]
        self.spec = spec
        self.batch_size = batch_size
        self.failed: list[tuple[str, str]] = []
        self.done = 0

    def __len__(self) -> int:
        """The number of files (not batches)."""
        return len(self.paths)

    def __iter__(self) -> Iterator[tuple[list[str], np.ndarray]]:
        names: list[str] = []
        arrays: list[np.ndarray] = []
        for path in self.paths:
            try:
                arrays.append(load_image(path, self.spec))
                names.append(path)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                self.failed.append((path, _reason(exc)))
            self.done += 1
            if len(names) == self.batch_size:
                yield names, np.stack(arrays)
                names, arrays = [], []
        if names:
            yield names, np.stack(arrays)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, UnidentifiedImageError):
        # Pillow names the file again; the path is stored beside the reason anyway.
        text = "cannot identify image file (not an image, or a format Pillow cannot read)"
    return text or type(exc).__name__
