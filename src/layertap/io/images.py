"""Image files -> model input rows: presets, :class:`ImageSpec`, decoding in threads.

Image files are decoded by a pool of threads (Pillow releases the GIL while it
decodes and resizes) a few batches ahead of the model, so decoding overlaps compute
while memory stays bounded by the batch size. Each image is turned upright by its
EXIF orientation, converted to RGB, or to grayscale for a one-channel model,
resized to the model's input size, and preprocessed by a preset (:data:`PRESETS`).
``.npy`` files give rows the same way (:class:`Decoder`, :class:`FileSource`).

This module does not import Keras.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from layertap._errors import BadInputError
from layertap.io.source import Batch, Source

__all__ = [
    "Decoder",
    "FileSource",
    "ImageSpec",
    "PRESETS",
    "Preprocess",
    "RESAMPLE",
    "decode_image",
    "load_image",
    "resolve_preprocess",
]

# ImageNet statistics as keras.applications.imagenet_utils uses them (RGB order).
_CAFFE_MEAN = np.array([123.68, 116.779, 103.939], np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)

Preprocess = Callable[[np.ndarray], np.ndarray]


def _none(x: np.ndarray) -> np.ndarray:
    return x


def _rescale(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x * np.float32(1.0 / 255.0)
    return out


def _tf(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / np.float32(127.5) - np.float32(1.0)
    return out


def _per_channel(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    # A one-channel (grayscale) input gets the mean of the three channels' values.
    return values if x.shape[-1] == 3 else values.mean(keepdims=True)


def _caffe(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x - _per_channel(x, _CAFFE_MEAN)
    return out[..., ::-1] if x.shape[-1] == 3 else out


def _torch(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.float32(255.0) - _per_channel(x, _TORCH_MEAN)) / _per_channel(
        x, _TORCH_STD
    )
    return out


#: Preprocessing presets: name -> function of float32 pixels in [0, 255], channels last.
PRESETS: dict[str, Preprocess] = {
    "none": _none,
    "rescale": _rescale,
    "tf": _tf,
    "caffe": _caffe,
    "torch": _torch,
}

#: Resize methods (Pillow filters) by name.
RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def resolve_preprocess(preprocess: str | Preprocess) -> tuple[str, Preprocess]:
    """A preset name, ``"module:function"`` or a callable -> ``(description, function)``.

    Example:
        >>> name, fn = resolve_preprocess("tf")
        >>> name, fn(np.array([0.0, 255.0], np.float32)).tolist()
        ('tf', [-1.0, 1.0])
        >>> resolve_preprocess("numpy:sqrt")[0]
        'numpy:sqrt'
    """
    if callable(preprocess):
        module = getattr(preprocess, "__module__", None) or "?"
        name = getattr(preprocess, "__qualname__", None) or type(preprocess).__name__
        return f"{module}:{name}", preprocess
    if preprocess in PRESETS:
        return preprocess, PRESETS[preprocess]
    module_name, sep, attr = preprocess.partition(":")
    if not sep or not module_name or not attr:
        raise BadInputError(
            f"unknown preprocessing {preprocess!r}; valid: "
            f"{', '.join(repr(p) for p in PRESETS)}, a callable, or 'module:function'"
        )
    try:
        fn: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as exc:
        raise BadInputError(f"preprocessing {preprocess!r} cannot be imported: {exc}") from exc
    if not callable(fn):
        raise BadInputError(f"preprocessing {preprocess!r} is a {type(fn).__name__}, not callable")
    return preprocess, fn


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What one image file must become to enter the model.

    Attributes:
        height: rows after resizing.
        width: columns after resizing.
        channels: 3 (RGB) or 1 (grayscale, ``L``).
        channels_first: the model takes ``(C, H, W)`` instead of ``(H, W, C)``.
        preprocess: a name from :data:`PRESETS`, ``"module:function"`` or a callable.
        resize: a name from :data:`RESAMPLE`.
        preprocess_resizes: the preprocessing gets each image at its own size and
            returns it at ``(height, width)``, and Pillow does not resize. Set by
            :meth:`from_model` for a callable with a true ``resizes`` attribute, such as
            a keras-hub image converter (which crops to the aspect ratio first).

    Example:
        >>> ImageSpec(32, 48, 3).describe()["size"]
        [32, 48]
    """

    height: int
    width: int
    channels: int = 3
    channels_first: bool = False
    preprocess: str | Preprocess = "rescale"
    resize: str = "bilinear"
    preprocess_resizes: bool = False

    def __post_init__(self) -> None:
        resolve_preprocess(self.preprocess)
        if self.resize not in RESAMPLE:
            raise BadInputError(
                f"unknown resize method {self.resize!r}; valid: "
                f"{', '.join(repr(r) for r in RESAMPLE)}"
            )
        if self.channels not in (1, 3):
            raise BadInputError(
                f"images have 1 (grayscale) or 3 (RGB) channels, not {self.channels}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """One decoded image's array shape: ``(H, W, C)``, or ``(C, H, W)`` channels first."""
        if self.channels_first:
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)

    @property
    def preset(self) -> str:
        """The preprocessing's name (a preset, ``module:function`` or a callable's name)."""
        return resolve_preprocess(self.preprocess)[0]

    @classmethod
    def from_model(
        cls,
        model: Any,
        *,
        preprocess: str | Preprocess = "rescale",
        size: tuple[int, int] | None = None,
        resize: str = "bilinear",
    ) -> ImageSpec:
        """Read size, channels and layout from a one-input image model's input shape.

        ``size`` (height, width) is needed only when the model takes any size and
        ``preprocess`` does not resize to a size of its own (an ``image_size`` attribute).

        Example:
            >>> import keras
            >>> m = keras.Sequential([keras.Input((40, 30, 1)), keras.layers.Flatten()])
            >>> s = ImageSpec.from_model(m)
            >>> s.height, s.width, s.channels, s.channels_first
            (40, 30, 1, False)
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
        fn = resolve_preprocess(preprocess)[1]
        resizes = bool(getattr(fn, "resizes", False))
        own = getattr(fn, "image_size", None) if resizes else None
        if size is not None:
            height, width = size
        elif own is not None and (height is None or width is None):
            height, width = own
        if height is None or width is None:
            raise BadInputError(
                f"model {model.name!r} takes images of any size {shape}, so layertap "
                "cannot choose one size to batch them at; pass size=(H, W) (--size HxW)"
            )
        return cls(int(height), int(width), int(channels), first, preprocess, resize, resizes)

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the preprocessing, stored beside the features.

        Example:
            >>> ImageSpec(8, 8, 1, preprocess="none").describe()["color_mode"]
            'L'
        """
        described = {
            "preset": self.preset,
            "size": [self.height, self.width],
            "color_mode": "RGB" if self.channels == 3 else "L",
            "layout": "CHW" if self.channels_first else "HWC",
            "resample": "by the preprocessing" if self.preprocess_resizes else self.resize,
            "exif_transpose": True,
        }
        describe = getattr(resolve_preprocess(self.preprocess)[1], "describe", None)
        if callable(describe):  # a keras-hub image converter: its settings
            described["preprocessing"] = describe()
        return described


def load_image(path: str | os.PathLike[str], spec: ImageSpec) -> np.ndarray:
    """Decode one image file into the float32 array ``spec`` describes.

    The image is turned upright by its EXIF orientation, converted to RGB or
    grayscale, resized (``spec.resize``, aspect ratio not kept) to ``spec``'s size
    and preprocessed. Raises ``OSError`` (or ``ValueError``) when the file cannot
    be decoded.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> f = Path(tempfile.mkdtemp()) / "red.png"
        >>> Image.new("RGB", (100, 50), (255, 0, 0)).save(f)
        >>> x = load_image(f, ImageSpec(8, 16))
        >>> x.shape, x.dtype.name, float(x[..., 0].max())
        ((8, 16, 3), 'float32', 1.0)
    """
    with Image.open(path) as img:
        return decode_image(img, spec)


def decode_image(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """An open PIL image -> the float32 array ``spec`` describes (``img`` is not changed).

    The steps of :func:`load_image` after opening the file: EXIF turn, RGB or ``L``,
    resize, float32, preprocess, layout.

    Example:
        >>> decode_image(Image.new("L", (5, 4), 255), ImageSpec(2, 2, 1)).tolist()
        [[[1.0], [1.0]], [[1.0], [1.0]]]
    """
    with warnings.catch_warnings():
        # Pillow warns about harmless file quirks (palette transparency, odd EXIF);
        # a file it cannot decode raises instead, and that is reported.
        warnings.simplefilter("ignore")
        out = ImageOps.exif_transpose(img)
        out = out.convert("RGB" if spec.channels == 3 else "L")
        if out.size != (spec.width, spec.height) and not spec.preprocess_resizes:
            out = out.resize((spec.width, spec.height), RESAMPLE[spec.resize])
        array = np.asarray(out, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    array = np.asarray(resolve_preprocess(spec.preprocess)[1](array), dtype=np.float32)
    if array.shape != (spec.height, spec.width, spec.channels):
        raise ValueError(
            f"the preprocessing {spec.preset} gave an image of shape {array.shape}, not "
            f"{(spec.height, spec.width, spec.channels)}"
        )
    if spec.channels_first:
        array = np.transpose(array, (2, 0, 1))
    return np.ascontiguousarray(array)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, UnidentifiedImageError):
        # Pillow names the file again; the path is stored beside the reason anyway.
        text = "cannot identify image file (not an image, or a format Pillow cannot read)"
    elif isinstance(exc, FileNotFoundError):
        text = "no such file"
    return text or type(exc).__name__


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class Decoder:
    """Image files and ``.npy`` rows -> model input rows, in a pool of threads.

    Both engines decode with this: the local engine through :class:`FileSource`, the
    Ray engine's actors directly (:meth:`decode`), so an input gets the same array, or
    the same reason for being skipped, on either.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> d = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (9, 9)).save(d / "a.png")
        >>> with Decoder(ImageSpec(4, 4)) as dec:
        ...     [(x is None, why[:12]) for x, why in dec.decode([(str(d / "a.png"), -1),
        ...                                                     (str(d / "b.png"), -1)])]
        [(False, ''), (True, 'no such file')]
    """

    def __init__(self, spec: ImageSpec, workers: int | None = None) -> None:
        self.spec = spec
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._preprocess = resolve_preprocess(spec.preprocess)[1]
        self._arrays: dict[str, np.ndarray] = {}
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def npy(self, path: str) -> np.ndarray:
        """The rows of a ``.npy`` file, memory-mapped (opened once)."""
        if path not in self._arrays:
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise BadInputError(f"input {path!r} is not a readable .npy array: {exc}") from exc
            if array.ndim < 1:
                raise BadInputError(f"input {path!r} holds a scalar, not rows of inputs")
            self._arrays[path] = array
        return self._arrays[path]

    def load(self, path: str, row: int) -> np.ndarray:
        """One input: an image file (``row`` -1) or row ``row`` of a ``.npy`` file.

        Raises what a bad file raises (``OSError``, ``ValueError``, ...).
        """
        if row < 0:
            return load_image(path, self.spec)
        x = np.asarray(self.npy(path)[row], dtype=np.float32)
        return np.asarray(self._preprocess(x), dtype=np.float32)

    def submit(self, path: str, row: int) -> Future[np.ndarray]:
        """:meth:`load` in a worker thread."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="layertap-decode")
        return self._pool.submit(self.load, path, row)

    def decode(self, items: Sequence[tuple[str, int]]) -> list[tuple[np.ndarray | None, str]]:
        """``(array, "")`` or ``(None, reason)`` for each ``(path, row)``, in order."""
        futures = [self.submit(path, row) for path, row in items]
        return [_outcome(future) for future in futures]

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _outcome(future: Future[np.ndarray]) -> tuple[np.ndarray | None, str]:
    try:
        return future.result(), ""
    except _DECODE_ERRORS as exc:
        return None, _reason(exc)


class FileSource(Source):
    """Image files and ``.npy`` arrays, decoded in threads a few batches ahead.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> d = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (9, 9)).save(d / "a.png"); _ = (d / "b.png").write_text("no")
        >>> from layertap.io.expand import expand_inputs
        >>> src = FileSource(expand_inputs([d]), ImageSpec(4, 4), batch_size=8)
        >>> [(b.ids[0][-5:], b.x.shape, b.failed[0][1][:26], b.end) for b in src.batches()]
        [('a.png', (1, 4, 4, 3), 'cannot identify image file', 2)]
    """

    kind = "files"

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        spec: ImageSpec,
        *,
        batch_size: int = 32,
        workers: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch size must be at least 1, not {batch_size}")
        self.spec = spec
        self.batch_size = batch_size
        self.decoder = Decoder(spec, workers)
        self.workers = self.decoder.workers
        # One entry per input: (id, path, row of a .npy file or -1 for an image).
        self.entries: list[tuple[str, str, int]] = []
        npys: list[str] = []
        for p in paths:
            text = os.fspath(p)
            if text.lower().endswith(".npy"):
                array = self.decoder.npy(text)
                npys.append(text)
                self.entries.extend((f"{text}[{i}]", text, i) for i in range(len(array)))
            else:
                self.entries.append((text, text, -1))
        self.total = len(self.entries)
        self.preprocessing = spec.describe()
        self.input_shape = self._input_shape(npys)
        h = hashlib.sha256()
        for entry_id, _, _ in self.entries:
            h.update(entry_id.encode() + b"\0")
        for path in sorted(set(npys)):
            st = os.stat(path)
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        self.fingerprint = h.hexdigest()

    def _input_shape(self, npys: list[str]) -> tuple[int, ...] | None:
        if npys:
            shapes = {tuple(self.decoder.npy(p).shape[1:]) for p in npys}
            return shapes.pop() if len(shapes) == 1 else None
        s = self.spec
        return (
            (s.channels, s.height, s.width) if s.channels_first else (s.height, s.width, s.channels)
        )

    def items(self) -> list[dict[str, Any]]:
        return [{"path": i, "file": f, "row": r} for i, f, r in self.entries]

    def batches(self, start: int = 0) -> Iterator[Batch]:
        window = 2 * self.batch_size + self.workers  # about two batches decoded ahead
        pending: collections.deque[tuple[int, Future[np.ndarray]]] = collections.deque()
        todo = iter(range(start, len(self.entries)))

        def refill() -> None:
            while len(pending) < window:
                i = next(todo, None)
                if i is None:
                    return
                _, path, row = self.entries[i]
                pending.append((i, self.decoder.submit(path, row)))

        ids: list[str] = []
        arrays: list[np.ndarray] = []
        failed: list[tuple[str, str]] = []
        try:
            refill()
            while pending:
                i, future = pending.popleft()
                refill()
                entry_id = self.entries[i][0]
                x, reason = _outcome(future)
                if x is None:
                    failed.append((entry_id, reason))
                else:
                    arrays.append(x)
                    ids.append(entry_id)
                if len(ids) == self.batch_size or (not pending and (ids or failed)):
                    x_batch = np.stack(arrays) if arrays else np.zeros((0,), np.float32)
                    yield Batch(ids, x_batch, failed, i + 1)
                    ids, arrays, failed = [], [], []
        finally:
            for _, future in pending:
                future.cancel()

    def close(self) -> None:
        self.decoder.close()
