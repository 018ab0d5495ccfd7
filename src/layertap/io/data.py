"""Stage 5, data: inputs -> preprocessed batches for a model, decoding in worker threads.

Inputs (:func:`make_source` picks the kind):

- image files, folders (recursive, sorted, hidden entries left out), glob patterns,
  ``.txt`` / ``.csv`` lists of paths, and ``.npy`` arrays (one row per input), in
  any mix (:func:`expand_inputs`; :class:`FileSource`);
- in Python also a numpy array (:class:`ArraySource`), and any iterable of batches,
  a ``tf.data.Dataset`` or a ``keras.utils.PyDataset`` (:class:`IterableSource`;
  an element may be ``x`` or ``(x, y, ...)``, only ``x`` is used).

Every source yields :class:`Batch` records: the row ids (file paths, ``file.npy[i]``,
``array[i]``), the preprocessed array, the inputs that failed on the way, and how many
inputs were consumed in all. A source can start at any input index, which is what a
resumed run needs.

Image files are decoded by a pool of threads (Pillow releases the GIL while it
decodes and resizes) a few batches ahead of the model, so decoding overlaps compute
while memory stays bounded by the batch size. Each image is turned upright by its
EXIF orientation, converted to RGB, or to grayscale for a one-channel model,
resized to the model's input size, and preprocessed by a preset (:data:`PRESETS`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import hashlib
import importlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from layertap._errors import BadInputError

__all__ = [
    "PRESETS",
    "RESAMPLE",
    "ARRAY_SUFFIXES",
    "ArraySource",
    "ArraysSource",
    "Batch",
    "Decoder",
    "FileSource",
    "ImageSpec",
    "InputOptions",
    "IterableSource",
    "Source",
    "TEXT_SUFFIXES",
    "TextSource",
    "expand_text_inputs",
    "is_text_preprocessor",
    "expand_inputs",
    "decode_image",
    "load_image",
    "make_source",
    "resolve_preprocess",
]

_GLOB_CHARS = frozenset("*?[")
_LIST_SUFFIXES = (".txt", ".csv")

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


# --- files -----------------------------------------------------------------------------


def _read_list(path: Path) -> list[Path]:
    """Paths listed one per line (.txt) or in the ``path`` / first column (.csv)."""
    base = path.parent
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".txt":
            items = [line.strip() for line in f]
            items = [s for s in items if s and not s.startswith("#")]
        else:
            rows = [row for row in csv.reader(f) if row and row[0].strip()]
            column = 0
            if rows and "path" in [c.strip().lower() for c in rows[0]]:
                column = [c.strip().lower() for c in rows[0]].index("path")
                rows = rows[1:]
            items = [row[column].strip() for row in rows]
    return [p if p.is_absolute() else base / p for p in map(Path, items)]


def _expand_one(item: str | os.PathLike[str]) -> list[Path]:
    text = os.fspath(item)
    path = Path(text)
    if path.is_dir():
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    if path.is_file() and path.suffix.lower() in _LIST_SUFFIXES:
        return _read_list(path)
    if path.exists():
        return [path]
    if _GLOB_CHARS & set(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [p for p in found if p.is_file()]
        if not files:
            raise BadInputError(f"input pattern {text!r} matches no file")
        return files
    raise BadInputError(
        f"input {text!r} does not exist (expected an image file, a folder, a glob, "
        "a .txt/.csv list of paths or a .npy array)"
    )


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Turn files, folders, glob patterns and path lists into one list of files.

    A folder gives every file below it, recursively, sorted by path; files and
    folders whose name starts with ``.`` are left out. A pattern (``*``, ``?``,
    ``[...]``; ``**`` crosses folders) gives its matches, sorted. A ``.txt`` file
    lists one path per line (``#`` comments and blank lines skipped); a ``.csv``
    file lists them in its ``path`` column (with a header) or its first column;
    relative paths in a list are relative to the list's folder, and a listed path
    that does not exist is reported later as a failed input. Other items are kept
    in the order given; a file named twice is kept once. Files are not opened
    here. Raises :class:`~layertap.BadInputError` for an item that does not exist,
    a pattern that matches nothing, or when no file is found at all.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ["b.png", "a.jpg", "sub/c.png", ".hidden"]:
        ...     (d / name).parent.mkdir(exist_ok=True); (d / name).touch()
        >>> [p.relative_to(d).as_posix() for p in expand_inputs([d])]
        ['a.jpg', 'b.png', 'sub/c.png']
        >>> _ = (d / "list.txt").write_text("sub/c.png\\n# a comment\\na.jpg\\n")
        >>> [p.relative_to(d).as_posix() for p in expand_inputs([d / "list.txt"])]
        ['sub/c.png', 'a.jpg']
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
    grayscale, resized (``spec.resize``, aspect ratio not kept) to ``spec``'s size
    and preprocessed. Raises ``OSError`` (or ``ValueError``) when the file cannot
    be decoded.

    Example:
        >>> import tempfile
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


# --- sources ---------------------------------------------------------------------------


@dataclasses.dataclass
class Batch:
    """One batch from a :class:`Source`.

    Attributes:
        ids: one id per row of ``x`` (a file path, ``file.npy[i]``, ``array[i]``,
            ``file:line`` of a text).
        x: the model's input for these rows (an array, or ``{input name: array}``).
        failed: ``(id, reason)`` for inputs skipped since the previous batch.
        end: the number of inputs consumed so far, counted from the first input.
    """

    ids: list[str]
    x: Any
    failed: list[tuple[str, str]]
    end: int


class Source:
    """Inputs as batches. ``len()`` is the number of inputs (``None`` when unknown).

    Attributes:
        kind: ``"files"``, ``"array"`` or ``"iterable"``.
        fingerprint: a hash of the inputs' identity (``None``: cannot resume).
        preprocessing: a JSON-able description of what is done to each input.
        input_shape: the shape of one input row as the model gets it (``None``: unknown
            before the first batch, or several inputs).
    """

    kind = "abstract"
    fingerprint: str | None = None
    preprocessing: dict[str, Any] = {}  # noqa: RUF012
    total: int | None = None
    input_shape: tuple[int, ...] | None = None

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Batches of the inputs from index ``start`` on."""
        raise NotImplementedError

    def sample(self) -> Any:
        """One row as the model takes it, batch dimension first (for shapes; ``None``:
        not known before the first batch)."""
        if self.input_shape is None:
            return None
        return np.zeros((1, *self.input_shape), np.float32)

    def items(self) -> list[dict[str, Any]] | None:
        """One record per input for an engine that ships rows to workers (``path`` is the
        row id), or ``None`` when the inputs cannot be listed (an iterable)."""
        return None

    def close(self) -> None:
        """Release worker threads."""


class Decoder:
    """Image files and ``.npy`` rows -> model input rows, in a pool of threads.

    Both engines decode with this: the local engine through :class:`FileSource`, the
    Ray engine's actors directly (:meth:`decode`), so an input gets the same array, or
    the same reason for being skipped, on either.

    Example:
        >>> import tempfile
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
        >>> d = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (9, 9)).save(d / "a.png"); _ = (d / "b.png").write_text("no")
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


class ArraySource(Source):
    """Rows of an in-memory array, preprocessed per batch; ids ``array[i]``.

    Example:
        >>> src = ArraySource(np.ones((5, 2), np.float32), batch_size=2)
        >>> [(b.ids, b.x.shape) for b in src.batches(start=2)]
        [(['array[2]', 'array[3]'], (2, 2)), (['array[4]'], (1, 2))]
    """

    kind = "array"

    def __init__(
        self, array: np.ndarray, *, batch_size: int = 32, preprocess: str | Preprocess = "none"
    ) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch size must be at least 1, not {batch_size}")
        if array.ndim < 1:
            raise BadInputError("input array is a scalar, not rows of inputs")
        self.array = array
        self.batch_size = batch_size
        name, self._fn = resolve_preprocess(preprocess)
        self.preprocessing = {"preset": name}
        self.total = len(array)
        self.input_shape = tuple(array.shape[1:])
        h = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
        h.update(np.ascontiguousarray(array).data)
        self.fingerprint = h.hexdigest()

    def batches(self, start: int = 0) -> Iterator[Batch]:
        for i in range(start, len(self.array), self.batch_size):
            j = min(i + self.batch_size, len(self.array))
            x = np.asarray(self._fn(np.asarray(self.array[i:j], dtype=np.float32)))
            yield Batch([f"array[{k}]" for k in range(i, j)], x, [], j)


class ArraysSource(Source):
    """Rows of several named arrays, one per model input (rows aligned); no preprocessing.

    From a dict of arrays (ids ``array[i]``), or from ``.npz`` files and Parquet files
    whose arrays / columns are named after the model's inputs (ids ``file[i]``). Arrays
    or columns the model does not take are ignored. With ``expected`` (``{input name:
    row shape}``, ``None`` for any size), a missing input or a row of another shape is
    a :class:`~layertap.BadInputError` naming it, before any batch runs.

    Example:
        >>> src = ArraysSource({"ids": np.zeros((3, 4), "int32"), "mask": np.ones((3, 4))},
        ...                    batch_size=2)
        >>> [(b.ids, sorted(b.x), b.x["ids"].dtype.name) for b in src.batches()]
        ... # doctest: +NORMALIZE_WHITESPACE
        [(['array[0]', 'array[1]'], ['ids', 'mask'], 'int32'),
         (['array[2]'], ['ids', 'mask'], 'int32')]
    """

    kind = "arrays"

    def __init__(
        self,
        arrays: Mapping[str, Any],
        *,
        batch_size: int = 32,
        ids: Sequence[str] | None = None,
        expected: Mapping[str, tuple[int | None, ...]] | None = None,
        where: str = "the input dict",
    ) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch size must be at least 1, not {batch_size}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        if expected is not None:
            self.arrays = _expected_arrays(self.arrays, expected, where)
        lengths = {k: len(v) if v.ndim else -1 for k, v in self.arrays.items()}
        if len(set(lengths.values())) != 1 or -1 in lengths.values():
            raise BadInputError(
                f"{where} holds arrays with different numbers of rows {lengths}; every "
                "input needs one row per example"
            )
        self.batch_size = batch_size
        self.rows = next(iter(lengths.values()))
        self.total = self.rows
        self.ids = list(ids) if ids is not None else [f"array[{i}]" for i in range(self.rows)]
        self.preprocessing = {"preset": "none"}
        h = hashlib.sha256()
        for key in sorted(self.arrays):
            v = self.arrays[key]
            h.update(f"{key}{v.shape}{v.dtype}".encode())
            h.update(np.ascontiguousarray(v).data)
        for row_id in self.ids:
            h.update(row_id.encode() + b"\0")
        self.fingerprint = h.hexdigest()

    @classmethod
    def from_files(
        cls,
        paths: Sequence[Path],
        expected: Mapping[str, tuple[int | None, ...]],
        *,
        batch_size: int = 32,
    ) -> ArraysSource:
        """Rows of ``.npz`` / Parquet files, in order, arrays named after the model's inputs.

        Example:
            >>> import tempfile
            >>> f = Path(tempfile.mkdtemp()) / "x.npz"
            >>> np.savez(f, a=np.zeros((2, 3)), b=np.ones((2, 1)), label=np.arange(2))
            >>> src = ArraysSource.from_files([f], {"a": (3,), "b": (1,)})
            >>> src.total, src.ids[1].endswith("x.npz[1]"), sorted(src.arrays)
            (2, True, ['a', 'b'])
        """
        if not expected:
            raise BadInputError(
                "a model without a graph (its own call()) does not name its inputs, so "
                ".npz / Parquet inputs cannot be matched to them; pass arrays in Python"
            )
        parts: dict[str, list[np.ndarray]] = {name: [] for name in expected}
        ids: list[str] = []
        for path in paths:
            found = _file_arrays(path, list(expected))
            found = _expected_arrays(found, expected, f"input file {str(path)!r}")
            n = len(next(iter(found.values())))
            ids.extend(f"{path}[{i}]" for i in range(n))
            for name in expected:
                parts[name].append(found[name])
        arrays = {name: np.concatenate(parts[name]) for name in expected}
        return cls(arrays, batch_size=batch_size, ids=ids, where="the input files")

    def sample(self) -> dict[str, np.ndarray]:
        return {k: v[:1] for k, v in self.arrays.items()}

    def items(self) -> list[dict[str, Any]]:
        return [
            {"path": row_id, **{k: v[i] for k, v in self.arrays.items()}}
            for i, row_id in enumerate(self.ids)
        ]

    def batches(self, start: int = 0) -> Iterator[Batch]:
        for i in range(start, self.rows, self.batch_size):
            j = min(i + self.batch_size, self.rows)
            x = {k: v[i:j] for k, v in self.arrays.items()}
            yield Batch(self.ids[i:j], x, [], j)


#: Files that hold several named arrays: one per model input.
ARRAY_SUFFIXES = (".npz", ".parquet", ".pq")


def _file_arrays(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The arrays named ``names`` that a ``.npz`` or Parquet file holds (others left out)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {n: z[n] for n in names if n in z.files}
        from layertap._errors import require

        pq = require("pyarrow.parquet", "parquet", "reading model inputs from Parquet")
        columns = [n for n in names if n in pq.read_schema(path).names]
        table = pq.read_table(path, columns=columns)
        return {n: np.array(table[n].to_pylist()) for n in columns}
    except (OSError, ValueError) as exc:
        raise BadInputError(f"input file {str(path)!r} cannot be read: {exc}") from exc


def _expected_arrays(
    arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int | None, ...]], where: str
) -> dict[str, np.ndarray]:
    """The arrays the model takes, checked: each present, each row of the model's shape."""
    missing = [name for name in expected if name not in arrays]
    if missing:
        raise BadInputError(
            f"{where} has no {', '.join(repr(m) for m in missing)}: the model takes "
            f"{list(expected)!r} (found {sorted(arrays)!r})"
        )
    for name, want in expected.items():
        row = tuple(arrays[name].shape[1:])
        fits = len(row) == len(want) and all(
            w is None or w == r for w, r in zip(want, row, strict=True)
        )
        if not fits:
            raise BadInputError(
                f"{where}: input {name!r} has rows of shape {row}, but the model takes "
                f"{tuple(want)} (None: any size)"
            )
    return {name: arrays[name] for name in expected}


def _features_of(element: Any) -> Any:
    if isinstance(element, tuple):
        return element[0]  # (x, y) or (x, y, sample_weight)
    return element


class IterableSource(Source):
    """Batches from an iterable, a ``tf.data.Dataset`` or a ``keras.utils.PyDataset``.

    Each element is a batch ``x`` or a tuple ``(x, y, ...)``; ids are ``batch[b][i]``.
    Such inputs cannot be fingerprinted, so a run over them cannot resume.

    Example:
        >>> src = IterableSource([np.zeros((2, 3)), (np.ones((1, 3)), np.zeros(1))])
        >>> [(b.ids, b.x.shape) for b in src.batches()]
        [(['batch[0][0]', 'batch[0][1]'], (2, 3)), (['batch[1][0]'], (1, 3))]
    """

    kind = "iterable"

    def __init__(self, batches: Iterable[Any], *, preprocess: str | Preprocess = "none") -> None:
        self._iterable = batches
        name, self._fn = resolve_preprocess(preprocess)
        self.preprocessing = {"preset": name}

    def _elements(self) -> Iterator[Any]:
        obj: Any = self._iterable
        if type(obj).__module__.startswith("tensorflow") and hasattr(obj, "as_numpy_iterator"):
            yield from obj.as_numpy_iterator()
            return
        if _is_pydataset(obj):
            for i in range(obj.num_batches if obj.num_batches is not None else len(obj)):
                yield obj[i]
            return
        yield from obj

    def batches(self, start: int = 0) -> Iterator[Batch]:
        if start:
            raise BadInputError("a run over an iterable or dataset cannot resume; start over")
        end = 0
        for b, element in enumerate(self._elements()):
            x = _features_of(element)
            if isinstance(x, dict | list):
                raise BadInputError(
                    "batches with several inputs (a dict or list) are not supported by "
                    "extract(); call Extractor.predict instead"
                )
            x = np.asarray(self._fn(np.asarray(x, dtype=np.float32)))
            end += len(x)
            yield Batch([f"batch[{b}][{i}]" for i in range(len(x))], x, [], end)


# --- text ------------------------------------------------------------------------------

#: Text file suffixes: one example per line (.txt) or per row, in a text column.
TEXT_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet", ".pq")

#: A text encoder: a list of strings -> the model's inputs (``{name: array}``, rows first).
Encode = Callable[[list[str]], dict[str, np.ndarray]]


def _text_rows(path: Path, column: str | None) -> Iterator[tuple[str, str | None, str]]:
    """``(row id, text or None, reason)`` for every row of one text file."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield from _txt_rows(path)
    elif suffix == ".jsonl":
        yield from _jsonl_rows(path, column or "text")
    elif suffix == ".csv":
        yield from _csv_rows(path, column or "text")
    elif suffix in (".parquet", ".pq"):
        yield from _parquet_rows(path, column or "text")
    else:
        raise BadInputError(
            f"input {str(path)!r} is not a text file: layertap reads text from "
            f"{', '.join(TEXT_SUFFIXES)}"
        )


def _checked(row_id: str, text: Any) -> tuple[str, str | None, str]:
    if text is None:
        return row_id, None, "no text (null)"
    if not isinstance(text, str):
        return row_id, None, f"not text: a {type(text).__name__}"
    if not text.strip():
        return row_id, None, "empty text"
    return row_id, text, ""


def _txt_rows(path: Path) -> Iterator[tuple[str, str | None, str]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            row_id = f"{path}:{number}"
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield row_id, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                continue
            yield _checked(row_id, text)


def _jsonl_rows(path: Path, column: str) -> Iterator[tuple[str, str | None, str]]:
    import json

    for row_id, line, reason in _txt_rows(path):
        if line is None:
            if reason != "empty text":  # blank lines separate nothing in JSON Lines
                yield row_id, None, reason
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            yield row_id, None, f"not JSON ({exc})"
            continue
        if not isinstance(record, dict) or column not in record:
            yield row_id, None, f"no {column!r} field"
            continue
        yield _checked(row_id, record[column])


def _csv_rows(path: Path, column: str) -> Iterator[tuple[str, str | None, str]]:
    with open(path, newline="", encoding="utf-8", errors="strict") as f:
        try:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or column not in reader.fieldnames:
                raise BadInputError(
                    f"input {str(path)!r} has the columns {reader.fieldnames or []!r}, not "
                    f"{column!r}; choose one with text_column= (--text-column)"
                )
            for row in reader:
                yield _checked(f"{path}:{reader.line_num}", row.get(column))
        except UnicodeDecodeError as exc:
            raise BadInputError(f"input {str(path)!r} is not UTF-8 text: {exc}") from exc


def _parquet_rows(path: Path, column: str) -> Iterator[tuple[str, str | None, str]]:
    from layertap._errors import require

    pq = require("pyarrow.parquet", "parquet", "reading text from Parquet")
    names = pq.read_schema(path).names
    if column not in names:
        raise BadInputError(
            f"input {str(path)!r} has the columns {names!r}, not {column!r}; "
            "choose one with text_column= (--text-column)"
        )
    values = pq.read_table(path, columns=[column])[column].to_pylist()
    for i, text in enumerate(values):
        yield _checked(f"{path}#{i}", text)


def expand_text_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Text files, folders (their text files, recursively, sorted) and globs -> text files.

    Unlike :func:`expand_inputs`, a ``.txt`` or ``.csv`` file here holds the texts
    themselves, not a list of paths.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ["b.txt", "a.jsonl", "notes.md"]:
        ...     (d / name).touch()
        >>> [p.name for p in expand_text_inputs([d])]
        ['a.jsonl', 'b.txt']
    """
    files: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            files.extend(
                sorted(
                    p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                )
            )
        elif path.exists():
            files.append(path)
        elif _GLOB_CHARS & set(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise BadInputError(f"input pattern {text!r} matches no file")
            files.extend(found)
        else:
            raise BadInputError(
                f"input {text!r} does not exist (expected a text file: "
                f"{', '.join(TEXT_SUFFIXES)}, a folder of them or a glob)"
            )
    return files


class TextSource(Source):
    """Lines or rows of text, encoded batch by batch into the model's inputs.

    ``inputs`` are text files (``Path`` objects; :data:`TEXT_SUFFIXES`) and texts
    (``str``). A row id is ``file:line`` (``.txt``, ``.jsonl``, ``.csv``), ``file#row``
    (Parquet) or ``text[i]`` (the i-th ``str``). An empty line, bytes that are not
    UTF-8, a JSON line without the text field, or a null is skipped and reported, like
    an image that cannot be decoded.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "lines.txt"
        >>> _ = f.write_text("a cat\\n\\nthe dog sat\\n")
        >>> def encode(texts):
        ...     return {"length": np.array([[len(t)] for t in texts])}
        >>> [(b.ids, b.x["length"].ravel().tolist(), b.failed)
        ...  for b in TextSource([f], encode).batches()]  # doctest: +ELLIPSIS
        [(['...lines.txt:1', '...lines.txt:3'], [5, 11], [('...lines.txt:2', 'empty text')])]
    """

    kind = "text"

    def __init__(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        encode: Encode,
        *,
        batch_size: int = 32,
        text_column: str | None = None,
        description: Mapping[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch size must be at least 1, not {batch_size}")
        self.encode = encode
        self.batch_size = batch_size
        self.rows: list[tuple[str, str | None, str]] = []
        h = hashlib.sha256()
        texts = 0
        for item in inputs:
            if isinstance(item, str):
                self.rows.append(_checked(f"text[{texts}]", item))
                texts += 1
                h.update(item.encode() + b"\0")
                continue
            path = Path(item)
            self.rows.extend(_text_rows(path, text_column))
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        if not self.rows:
            raise BadInputError("no text found in the inputs (the files are empty)")
        for row_id, _, _ in self.rows:
            h.update(row_id.encode() + b"\0")
        self.total = len(self.rows)
        self.fingerprint = h.hexdigest()
        self.preprocessing = {"text_column": text_column, **(description or {})}

    def sample(self) -> Any:
        text = next((t for _, t, _ in self.rows if t is not None), None)
        return None if text is None else self.encode([text])

    def items(self) -> list[dict[str, Any]]:
        return [{"path": i, "text": t or "", "reason": why} for i, t, why in self.rows]

    def _groups(self, start: int) -> Iterator[tuple[list[str], list[str], list[Any], int]]:
        """``(ids, texts, failed, end)`` of each batch, before tokenizing."""
        ids: list[str] = []
        texts: list[str] = []
        failed: list[tuple[str, str]] = []
        for i in range(start, len(self.rows)):
            row_id, text, reason = self.rows[i]
            if text is None:
                failed.append((row_id, reason))
            else:
                ids.append(row_id)
                texts.append(text)
            if len(ids) == self.batch_size or (i == len(self.rows) - 1 and (ids or failed)):
                yield ids, texts, failed, i + 1
                ids, texts, failed = [], [], []

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Batches tokenized one ahead in a worker thread, overlapping the forward pass."""
        pending: collections.deque[tuple[Any, Future[Any]]] = collections.deque()
        with ThreadPoolExecutor(1, thread_name_prefix="layertap-tokenize") as pool:
            for group in self._groups(start):
                pending.append((group, pool.submit(self._encode, group[1])))
                if len(pending) > 1:
                    yield self._batch(*pending.popleft())
            while pending:
                yield self._batch(*pending.popleft())

    def _encode(self, texts: list[str]) -> Any:
        return self.encode(texts) if texts else {}

    @staticmethod
    def _batch(group: tuple[list[str], list[str], list[Any], int], x: Future[Any]) -> Batch:
        ids, _, failed, end = group
        return Batch(ids, x.result(), failed, end)


def _is_pydataset(obj: Any) -> bool:
    for cls in type(obj).__mro__:
        if cls.__name__ == "PyDataset" and cls.__module__.startswith("keras"):
            return True
    return False


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """How inputs become model inputs: the input part of a run (images and arrays today).

    Attributes:
        preprocess: a name from :data:`PRESETS`, ``"module:function"`` or a callable;
            ``None`` is ``"rescale"`` for image files and ``"none"`` for arrays.
        size: ``(height, width)`` for a model that takes images of any size.
        resize: a name from :data:`RESAMPLE`.
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
    (:data:`TEXT_SUFFIXES`), and each ``str`` in a list is one text.

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
    if isinstance(inputs, Iterable) or _is_pydataset(inputs):
        return IterableSource(inputs, preprocess=options.preprocess_for("iterable"))
    raise BadInputError(
        f"inputs of type {type(inputs).__name__} are not supported: pass paths, a numpy "
        "array, an iterable of batches, a tf.data.Dataset or a keras.utils.PyDataset"
    )
