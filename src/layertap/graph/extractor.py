"""Specs in, one multi-output model built once, features out.

:func:`feature_model` is the building block: the ``keras.Model`` that runs every tap
in one pass. :class:`Extractor` is the convenience on top: the same model, plus
input checks, batching, numpy results, and raw inputs (texts for a model with a
keras-hub text preprocessor, image files and PIL images for a one-input image model).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import keras
import numpy as np
from keras import tree
from PIL import Image

from layertap._errors import BadInputError
from layertap.graph import keras_internals as ki
from layertap.graph.build import build_model, needed_inputs
from layertap.graph.gradients import (
    GradientRunner,
    Gradients,
    Target,
    check_rows,
    join_gradients,
    slice_target,
)
from layertap.graph.preset import Preset, text_inputs
from layertap.graph.resolve import Spec, resolve
from layertap.graph.walk import LayerInfo, graph_input_specs, inner_graph, input_names, walk
from layertap.io.images import Decoder, ImageSpec, Preprocess, decode_image
from layertap.io.inputs import InputOptions, is_text_preprocessor
from layertap.io.schema import TapInfo

__all__ = ["Extractor", "TapInfo", "feature_model"]


def _shape(x: Any) -> tuple[int | None, ...] | None:
    shape = getattr(x, "shape", None)
    return None if shape is None else tuple(shape)


Layers = Spec | Sequence[Spec] | Mapping[str, Spec]

#: What a bad image raises while it is decoded (as :func:`layertap.io.data.load_image`).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _is_item(x: Any) -> bool:
    """A raw input: a string (a text or a path), a ``PathLike`` or a PIL image."""
    return isinstance(x, str | os.PathLike | Image.Image)


def _raw_items(x: Any) -> list[Any] | None:
    """``x`` as a list of raw inputs when it is one, or a list or tuple of only them.

    A list that mixes arrays and strings is left to the array checks, which name the
    input that is not an array.
    """
    if _is_item(x):
        return [x]
    if isinstance(x, list | tuple) and x and all(_is_item(item) for item in x):
        return list(x)
    return None


def _takes_any_size(specs: list[tuple[int | None, ...]]) -> bool:
    """One 4-D input whose height and width (either layout) are open."""
    if len(specs) != 1 or len(specs[0]) != 4:
        return False
    _, a, b, c = specs[0]
    return (a is None and b is None) or (b is None and c is None)


def _upright_size(item: Any) -> tuple[int, int]:
    """``(height, width)`` of an image as decoded: turned upright by its EXIF orientation."""
    if isinstance(item, Image.Image):
        image = item
        width, height = image.size
        orientation = image.getexif().get(0x0112)
    else:
        with Image.open(os.fspath(item)) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: the axes swap
        width, height = height, width
    return int(height), int(width)


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _decode_images(items: list[Any], spec: ImageSpec) -> np.ndarray:
    """Paths (decoded by :class:`~layertap.io.data.Decoder`) and PIL images -> one batch.

    Raises :class:`BadInputError` naming every input that cannot be decoded, and why.
    """
    rows: list[np.ndarray | None] = [None] * len(items)
    bad: list[str] = []
    paths = [(i, os.fsdecode(x)) for i, x in enumerate(items) if not isinstance(x, Image.Image)]
    if paths:
        with Decoder(spec) as decoder:
            done = decoder.decode([(path, -1) for _, path in paths])
        for (i, path), (array, why) in zip(paths, done, strict=True):
            rows[i] = array
            if array is None:
                bad.append(f"{path!r}: {why}")
    for i, x in enumerate(items):
        if isinstance(x, Image.Image):
            try:
                rows[i] = decode_image(x, spec)
            except _DECODE_ERRORS as exc:
                bad.append(f"the PIL image at [{i}]: {_reason(exc)}")
    if bad:
        shown = "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
        raise BadInputError(
            f"{len(bad)} of {len(items)} images cannot be decoded: {shown} (an Extractor "
            "runs exactly the inputs it is given; layertap.extract skips bad files and "
            "names them)"
        )
    return np.stack([row for row in rows if row is not None])


def _places_and_model(
    model: keras.Model, layers: Layers, input_shape: Any
) -> tuple[dict[str, LayerInfo], keras.Model]:
    """Walk ``model`` once, resolve ``layers`` to ``{key: place}``, build the tap model."""
    places = resolve(layers, model, walk(model, input_shape=input_shape))
    built = build_model(model, places, name=f"{model.name}_layertap", input_shape=input_shape)
    return places, built


def feature_model(model: keras.Model, layers: Layers, *, input_shape: Any = None) -> keras.Model:
    """A Functional ``keras.Model`` whose outputs are a dict of the tapped layers' outputs.

    Like torchvision's ``create_feature_extractor``: the result re-calls the user's
    layers (weights shared, never copied), runs one forward pass pruned after the
    deepest tap, and takes only the inputs the taps need. Its outputs are keyed as
    :attr:`Extractor.outputs` are: by alias for a dict of specs, by canonical path
    for a list (see :func:`~layertap.list_layers` for every path). ``model`` is not
    compiled or changed; its layers gain inbound nodes, as any Keras re-call adds,
    while ``model.output`` and its config stay as they were.

    Args:
        model: a Functional or Sequential ``keras.Model``, or one with its own
            ``call()`` (its taps are captured inside one call of it).
        layers: a spec, a list of specs or a dict alias -> spec.
        input_shape: for a model with its own ``call()`` that has not been built: the
            shape of one input batch, e.g. ``(None, 32, 32, 3)``.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
        ...                       keras.layers.Dense(1, name="out")])
        >>> fm = feature_model(m, {"h": "hidden", "y": -1})
        >>> {key: x.shape for key, x in fm.output.items()}
        {'h': (None, 3), 'y': (None, 1)}
        >>> out = fm.predict_on_batch(np.ones((2, 4), "float32"))
        >>> sorted((key, x.shape) for key, x in out.items())
        [('h', (2, 3)), ('y', (2, 1))]
    """
    return _places_and_model(model, layers, input_shape)[1]


def _text_preset(model: keras.Model, preset: Preset | None, preprocess: Any) -> Preset | None:
    """The preset that tokenizes texts for ``model``, or ``None`` for a model without one.

    A keras-hub ``preprocess`` wins over the preset's own; a preset's preprocessor is
    used only when it is a text one (as :func:`layertap.extract` does).
    """
    if is_text_preprocessor(preprocess):
        if getattr(preprocess, "tokenizer", None) is None:
            raise BadInputError(
                f"preprocess= is a keras-hub {type(preprocess).__name__} without a "
                "tokenizer; an Extractor takes a keras-hub text preprocessor (texts), or "
                "a preset name, callable or 'module:function' (images)"
            )
        base = preset or Preset(model, None, None, None, model.name)
        return dataclasses.replace(base, preprocessor=preprocess, kind="text")
    if preprocess is None and preset is not None and preset.kind == "text":
        return preset
    return None


class Extractor:
    """Tap any layers of a Keras graph model in one forward pass.

    An extractor is called on what the model takes (arrays: one, a list in input order
    or a dict keyed by input name) and on raw inputs the extractor turns into arrays:

    * a **text extractor** (a :class:`~layertap.Preset` with a text preprocessor, or
      ``preprocess=`` a keras-hub text preprocessor) takes a list of strings, one text
      each, tokenized by :func:`~layertap.graph.preset.text_inputs`; a single ``str``
      is one text;
    * a **one-input image model** (a 4-D input with 1 or 3 channels first or last; see
      :meth:`~layertap.io.data.ImageSpec.from_model`) takes a list of file paths
      (``str`` or ``PathLike``) and PIL images, in any mix, decoded as
      :func:`layertap.extract` decodes image files: turned upright by EXIF, converted to
      RGB or grayscale, resized to the model's size (for a model that takes any size:
      ``size=``, or else each call's images at the one size they share) and
      preprocessed (``preprocess=``, default ``"rescale"``; for a preset with an image
      converter, the converter, which also does the resizing). A single path or PIL
      image is a batch of one.

    A call runs exactly the inputs it is given, so an image that cannot be decoded
    raises :class:`~layertap.BadInputError` naming it and the reason
    (:func:`layertap.extract` instead skips bad files and reports them). Strings given
    to a model that is neither a text nor an image model raise it too, saying what the
    model takes.

    Args:
        model: a Functional or Sequential ``keras.Model``, nested sub-models walked at
            any depth; or a :class:`~layertap.Preset` (from :func:`~layertap.load_preset`):
            its backbone is tapped and its text preprocessor or image converter used.
        layers: a spec, a list of specs (results keyed by canonical path) or a dict
            alias -> spec (results keyed by alias). See the README for the grammar.
        input_shape: for a model with its own ``call()`` that has not been built: the
            shape of one input batch, e.g. ``(None, 32, 32, 3)``.
        jit_compile: ``True`` to run through XLA (TensorFlow, JAX) or ``torch.compile``;
            ``"auto"`` keeps Keras's default.
        preprocess: a keras-hub text preprocessor (the extractor is then a text
            extractor; default: a preset's own); or, for image files and PIL images, a
            name from :data:`~layertap.io.data.PRESETS` (``"rescale"`` by default), a
            callable or ``"module:function"``. Arrays are never preprocessed.
        size: ``(height, width)`` images are resized to, for a model that takes any size.
        resize: Pillow's resize filter: nearest, bilinear, bicubic, lanczos, box, hamming.

    Attributes:
        model: the multi-output ``keras.Model`` (dict outputs) that runs the taps, as
            :func:`feature_model` builds it; it shares the user's layers and can be
            saved, reloaded or called.
        outputs: ``{key: TapInfo}`` in result order.
        places: ``{key: LayerInfo}``, the place each key taps.
        preprocessor: the keras-hub text preprocessor, or ``None``.
        image_spec: what an image file becomes (an :class:`~layertap.io.data.ImageSpec`),
            or ``None`` when the model takes no images (or is a text model).

    Raises:
        BadInputError: an unknown ``preprocess`` or ``resize``, a bad ``size``, or a
            keras-hub preprocessor without a tokenizer.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
        ...                       keras.layers.Dense(1, name="out")])
        >>> ex = Extractor(m, {"h": "hidden"})
        >>> ex.outputs["h"].shape
        (None, 3)
        >>> ex(np.ones((2, 4), "float32"))["h"].shape
        (2, 3)

        Image files and PIL images, for a one-input image model:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> f = Path(tempfile.mkdtemp()) / "red.png"
        >>> Image.new("RGB", (40, 30), (255, 0, 0)).save(f)
        >>> cnn = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="c")])
        >>> Extractor(cnn, ["c"])([f, Image.new("RGB", (9, 9))])["c"].shape
        (2, 6, 6, 2)

        Texts, for a keras-hub preset with a text preprocessor:

        >>> bert = Extractor(load_preset("path/to/bert"), ["transformer_layer_0"])  # doctest: +SKIP
        >>> bert(["the cat sat", "a dog"])["transformer_layer_0"].shape  # doctest: +SKIP
        (2, 16, 16)
    """

    def __init__(
        self,
        model: keras.Model | Preset,
        layers: Layers,
        *,
        input_shape: Any = None,
        jit_compile: bool | str = "auto",
        preprocess: str | Preprocess | Any | None = None,
        size: tuple[int, int] | None = None,
        resize: str = "bilinear",
    ) -> None:
        preset = model if isinstance(model, Preset) else None
        model = preset.model if preset is not None else model
        self.source: keras.Model = model
        self._text = _text_preset(model, preset, preprocess)
        self.preprocessor: Any = self._text.preprocessor if self._text is not None else None
        image_preprocess = None if self._text is not None else preprocess
        converter = preset.image_preprocess(size) if preset is not None else None
        options = InputOptions(
            preprocess=image_preprocess, size=size, resize=resize, preset_images=converter
        )
        self.places: dict[str, LayerInfo]
        self.model: keras.Model
        self.places, self.model = _places_and_model(model, layers, input_shape)
        self._input_shape = input_shape
        self._gradient_runner: GradientRunner | None = None
        graph = inner_graph(model)
        if graph is not None:
            self._input_names = input_names(graph)
            shapes = (
                [x.shape for x in graph.inputs]
                if input_shape is None
                else [x.shape for x in graph_input_specs(graph, input_shape)]
            )
            self._needed = needed_inputs(graph, self.places)
        else:
            self._input_names = [t.name for t in self.model.inputs]
            shapes = [x.shape for x in self.model.inputs]
            self._needed = list(range(len(shapes)))
        self._input_specs = [tuple(shape) for shape in shapes]
        self.image_spec: ImageSpec | None = None
        self._own_size = False
        self._no_images = "it is a text model"
        if self._text is None:
            self.image_spec, self._no_images = self._image_spec(options)
        if jit_compile != "auto":
            self.model.jit_compile = jit_compile
        outputs = self.model.output
        self.outputs: dict[str, TapInfo] = {
            key: TapInfo(
                name=key,
                path=place.path,
                shape=tuple(outputs[key].shape),
                dtype=str(outputs[key].dtype),
            )
            for key, place in self.places.items()
        }

    def _image_spec(self, options: InputOptions) -> tuple[ImageSpec | None, str]:
        """What an image becomes for the source model, or ``None`` and why it takes none.

        A model that takes images of any size, with no ``size=``, takes each batch at
        its images' own size: :attr:`_own_size` is then set, and the spec's size is
        replaced per batch.
        """
        inputs = [SimpleNamespace(shape=shape) for shape in self._input_specs]
        view = SimpleNamespace(name=self.source.name, inputs=inputs)
        try:
            return options.image_spec(view), ""
        except BadInputError as exc:
            if options.size is not None or not _takes_any_size(self._input_specs):
                return None, str(exc)
            try:
                template = options.image_spec(view, size=(1, 1))
            except BadInputError:
                return None, str(exc)
            self._own_size = True
            return template, ""

    def __repr__(self) -> str:
        taps = ", ".join(f"{k!r}: {v.path!r}" for k, v in self.outputs.items())
        return f"Extractor({self.source.name!r}, {{{taps}}})"

    def _model_inputs(self, x: Any, target: keras.Model | None = None) -> Any:
        """``x`` as the source model takes it -> what ``self.model`` (or ``target``, a
        model taking every input, such as the gradient model) takes.

        Accepts what ``model(x)`` accepts: one array for a one-input model, a list in
        input order, or a dict keyed by input name. Inputs that no tap needs may be
        given (and are dropped); a name the model does not have is an error, like a
        missing, misshapen or non-array input (:class:`BadInputError`).
        """
        names, specs = self._input_names, self._input_specs
        needed = self._needed if target is None else list(range(len(names)))
        if isinstance(x, Mapping):
            unknown = sorted(set(x) - set(names))
            missing = [n for i, n in enumerate(names) if n not in x and i in needed]
            if unknown or missing:
                raise BadInputError(
                    f"input dict keys {sorted(x)!r} do not match the model's inputs "
                    f"{names!r} (unknown: {unknown!r}, missing: {missing!r})"
                )
            arrays = {i: x[n] for i, n in enumerate(names) if i in needed}
        elif isinstance(x, list | tuple):
            if len(x) != len(names):
                raise BadInputError(
                    f"got {len(x)} input arrays, but the model has {len(names)} inputs: {names!r}"
                )
            arrays = {i: x[i] for i in needed}
        else:
            if len(names) != 1:
                raise BadInputError(
                    f"got one input array, but the model has {len(names)} inputs "
                    f"{names!r}: pass a list in that order or a dict keyed by name"
                )
            arrays = {0: x}
        for i, array in arrays.items():
            shape = _shape(array)
            if shape is None:
                raise BadInputError(f"input {names[i]!r} is a {type(array).__name__}, not an array")
            want = specs[i]
            fits = len(shape) == len(want) and all(
                w is None or w == s for w, s in zip(want[1:], shape[1:], strict=True)
            )
            if not fits:
                raise BadInputError(
                    f"input {names[i]!r} has shape {shape}, but the model expects "
                    f"{want} (None: any size)"
                )
        struct = ki.inputs_struct(self.model if target is None else target)
        if isinstance(struct, dict):
            return {names[i]: arrays[i] for i in needed}
        if isinstance(struct, list | tuple):
            return [arrays[i] for i in needed]
        return arrays[needed[0]]

    def _arrays(self, x: Any) -> Any:
        """Texts, image paths and PIL images -> the arrays they stand for; else ``x``."""
        items = _raw_items(x)
        if items is None:
            return x
        if self._text is not None:
            others = [
                f"[{i}] is a {type(t).__name__}"
                for i, t in enumerate(items)
                if not isinstance(t, str)
            ]
            if others:
                raise BadInputError(
                    f"a text extractor takes a list of strings, one text each, but item "
                    f"{', '.join(others)}; read text files with layertap.extract"
                )
            return text_inputs(self._text, items)
        if self.image_spec is not None and self._own_size:
            return _decode_images(items, self._at_own_size(items, self.image_spec))
        if self.image_spec is not None:
            return _decode_images(items, self.image_spec)
        raise self._takes_no_raw_inputs(items)

    def _at_own_size(self, items: list[Any], template: ImageSpec) -> ImageSpec:
        """``template`` at the one size (upright, as decoded) all of ``items`` have.

        Raises :class:`BadInputError` for images of several sizes: one batch runs at
        one size. Files that cannot be opened are left to the decoder, which names them.
        """
        sizes: dict[tuple[int, int], list[str]] = {}
        for i, item in enumerate(items):
            try:
                size = _upright_size(item)
            except _DECODE_ERRORS:
                continue
            name = f"[{i}]" if isinstance(item, Image.Image) else repr(os.fsdecode(item))
            sizes.setdefault(size, []).append(name)
        if len(sizes) > 1:
            shown = "; ".join(
                f"{h}x{w}: {', '.join(names[:3])}" for (h, w), names in list(sizes.items())[:4]
            )
            raise BadInputError(
                f"model {self.source.name!r} takes images of any size, and one batch runs "
                f"at one size, but these images have {len(sizes)} sizes ({shown}); pass "
                "size=(H, W) to resize them all, or one size per call"
            )
        if not sizes:
            return template
        (height, width), _ = sizes.popitem()
        return dataclasses.replace(template, height=height, width=width)

    def _takes_no_raw_inputs(self, items: list[Any]) -> BadInputError:
        """The error for texts, paths or images given to a model that takes none."""
        kinds = sorted({type(t).__name__ for t in items})
        what = "strings" if kinds == ["str"] else f"raw inputs ({', '.join(kinds)})"
        shapes = ", ".join(
            f"{n!r} {s}" for n, s in zip(self._input_names, self._input_specs, strict=True)
        )
        return BadInputError(
            f"got {what}, but model {self.source.name!r} takes neither texts nor image "
            f"files ({self._no_images}); its inputs are {shapes}. Pass arrays (one array, "
            "a list in input order or a dict keyed by input name), or for texts "
            "preprocess= a keras-hub text preprocessor (or a layertap.Preset)"
        )

    def __call__(self, x: Any) -> dict[str, np.ndarray]:
        """Run one batch; return ``{key: array}``.

        ``x`` is what the model takes (arrays), or texts, image paths or PIL images (see
        :class:`Extractor`); all of them are one batch.

        Raises:
            BadInputError: inputs that do not fit the model, an image that cannot be
                decoded (named, with the reason), or strings for a model that takes
                neither texts nor images.

        Example:
            >>> import keras, numpy as np
            >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
            >>> Extractor(m, ["d"])(np.zeros((5, 4), "float32"))["d"].shape
            (5, 3)
            >>> Extractor(m, ["d"])(["a", "b"])  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            layertap._errors.BadInputError: got strings, but model 'sequential...' takes neither \
texts nor image files (...); its inputs are ... Pass arrays (one array, a list in input \
order or a dict keyed by input name), or for texts preprocess= a keras-hub text \
preprocessor (or a layertap.Preset)
        """
        out = self.model.predict_on_batch(self._model_inputs(self._arrays(x)))
        return {key: np.asarray(out[key]) for key in self.outputs}

    def inputs(self, x: Any) -> Any:
        """``x`` as arrays the model takes: texts tokenized, images decoded, shapes checked.

        Every input of the model is kept (one array, a list or a dict, as the model
        takes them), also those no tap needs.

        Example:
            >>> import keras, numpy as np
            >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
            >>> Extractor(m, ["d"]).inputs(np.zeros((2, 4), "float32")).shape
            (2, 4)
        """
        return self._model_inputs(self._arrays(x), inner_graph(self.source) or self.model)

    def gradients(
        self,
        x: Any,
        target: Target = None,
        *,
        batch_size: int | None = 32,
        scale: Mapping[str, float] | None = None,
    ) -> Gradients:
        """Activations and gradients of one score per row at every tap and at the input.

        One forward and one backward pass per batch, with the backend's autodiff
        (``GradientTape``, ``jax.vjp``, ``torch.autograd``). The score is picked from
        the model's first output, taken before a final softmax (a ``Softmax`` or
        ``Activation("softmax")`` layer, or a ``Dense`` with a softmax activation: the
        logits, as Grad-CAM prescribes), or from a tap.

        Args:
            x: one or more batches of what :meth:`__call__` takes (arrays for every
                input the model has; texts, image paths or PIL images).
            target: ``None`` (each row's top class), a class index for every row, one
                index per row, ``(tap key, index or indices)`` into a tap's flattened
                row, or a callable on ``{key: tensor}`` (the taps, and the score under
                :data:`~layertap.graph.gradients.SCORE`) returning one score per row,
                written with ``keras.ops``.
            batch_size: rows per forward and backward pass.
            scale: ``{key: factor}``: for this pass, those taps' values are multiplied
                by ``factor`` and the model runs on from the scaled values (the
                activations and gradients there are the scaled values'; layer
                integrated gradients sweeps ``factor`` from 0 to 1).

        Example:
            >>> import keras, numpy as np
            >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="h"),
            ...                       keras.layers.Dense(2, activation="softmax")])
            >>> g = Extractor(m, ["h"]).gradients(np.ones((5, 4), "float32"), target=1)
            >>> g.gradients["h"].shape, g.input_gradients.shape, g.targets.tolist()
            ((5, 3), (5, 4), [1, 1, 1, 1, 1])
            >>> ex = Extractor(m, ["h"])
            >>> half = ex.gradients(np.ones((5, 4), "float32"), 1, scale={"h": 0.5})
            >>> bool(np.allclose(half.activations["h"], 0.5 * g.activations["h"]))
            True
        """
        if self._gradient_runner is None:
            built = build_model(
                self.source,
                self.places,
                name=f"{self.source.name}_gradients",
                input_shape=self._input_shape,
                probes=True,
                score=True,
            )
            self._gradient_runner = GradientRunner(built, list(self.outputs))
        runner = self._gradient_runner
        x = self._model_inputs(self._arrays(x), runner.model)
        n = check_rows(x)
        size = batch_size or n
        parts = [
            runner.run(
                tree.map_structure(lambda a, r=slice(i, i + size): a[r], x),
                slice_target(target, slice(i, i + size), n),
                scale,
            )
            for i in range(0, n, size)
        ]
        return join_gradients(parts)

    def predict(
        self, x: Any, *, batch_size: int | None = 32, verbose: int | str = 0
    ) -> dict[str, np.ndarray]:
        """Run ``x`` in batches through a compiled function; return ``{key: array}``.

        ``x`` is anything ``keras.Model.predict`` takes: arrays (checked against the
        model's inputs), a ``tf.data.Dataset`` or a ``keras.utils.PyDataset``; or texts,
        image paths or PIL images as :meth:`__call__` takes them (all decoded or
        tokenized first, then run in batches: for many files, :func:`layertap.extract`
        decodes batch by batch).

        Example:
            >>> import keras, numpy as np
            >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
            >>> Extractor(m, {"f": 0}).predict(np.zeros((70, 4), "float32"))["f"].shape
            (70, 3)
        """
        x = self._arrays(x)
        if not (isinstance(x, Mapping | list | tuple) or _shape(x) is not None):
            out = self.model.predict(x, batch_size=batch_size, verbose=verbose)
            return {key: np.asarray(out[key]) for key in self.outputs}
        return self._predict_arrays(self._model_inputs(x), batch_size or 32, verbose)

    def _predict_arrays(self, x: Any, batch_size: int, verbose: int | str) -> dict[str, np.ndarray]:
        """Batches through the compiled predict step, filling preallocated outputs.

        Unlike ``keras.Model.predict``, which keeps every batch's outputs and joins them
        at the end, each batch is copied once into its place: large feature maps cost
        one copy, and memory is the result plus one batch.
        """
        n = check_rows(x)
        results = {
            key: np.empty((n, *(int(d) for d in info.shape[1:] if d is not None)), info.dtype)
            for key, info in self.outputs.items()
            if None not in info.shape[1:]
        }
        pieces: dict[str, list[np.ndarray]] = {k: [] for k in self.outputs if k not in results}
        bar = keras.utils.Progbar(n) if verbose not in (0, "0", "silent") else None
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            rows = slice(start, stop)
            out = self.model.predict_on_batch(tree.map_structure(lambda a, r=rows: a[r], x))
            for key in self.outputs:
                if key in results:
                    results[key][start:stop] = out[key]
                else:  # a dynamic shape: join at the end
                    pieces[key].append(np.asarray(out[key]))
            if bar is not None:
                bar.update(stop)
        for key, parts in pieces.items():
            results[key] = np.concatenate(parts) if parts else np.empty((0,), "float32")
        return {key: results[key] for key in self.outputs}


def gradients(
    model: keras.Model | Preset,
    x: Any,
    layers: Layers,
    *,
    target: Target = None,
    batch_size: int | None = 32,
    input_shape: Any = None,
    preprocess: str | Preprocess | Any | None = None,
    size: tuple[int, int] | None = None,
) -> Gradients:
    """Activations and gradients of one score per row at any taps, and at the input.

    ``Extractor(model, layers, ...).gradients(x, target)``: one forward and one
    backward pass per batch, with the backend's own autodiff. The score is the model's
    first output, before a final softmax (the logits), at ``target``; see
    :meth:`Extractor.gradients` for the targets, and :class:`Extractor` for ``x``, the
    layer specs and the image options.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="h"),
        ...                       keras.layers.Dense(2, activation="softmax")])
        >>> g = gradients(m, np.ones((5, 4), "float32"), ["h"], target=[0, 1, 0, 1, 0])
        >>> sorted(g.gradients), g.activations["h"].shape, g.scores.shape
        (['h'], (5, 3), (5,))
    """
    ex = Extractor(model, layers, input_shape=input_shape, preprocess=preprocess, size=size)
    return ex.gradients(x, target, batch_size=batch_size)
