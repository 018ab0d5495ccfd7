"""keras-hub presets as models: the backbone to tap, and the preprocessor that feeds it.

A *preset* is what keras-hub's ``from_preset`` reads:

* a local directory written by ``save_to_preset``. ``Backbone.save_to_preset(d)``
  writes ``config.json`` (the backbone's Keras config, with a ``registered_name`` such
  as ``"keras_hub>BertBackbone"``), ``metadata.json`` (``keras_version``,
  ``keras_hub_version``, ``parameter_count``, ``date_saved``, ``tasks``) and
  ``model.weights.h5`` (or sharded ``model.weights.json`` + shards). A tokenizer's
  ``save_to_preset(d)`` adds ``tokenizer.json`` and ``assets/tokenizer/`` (the
  vocabulary file or SentencePiece proto); a preprocessor's adds ``preprocessor.json``
  (its config, holding the tokenizer's) and its tokenizer's files; image and audio
  converters add ``image_converter.json`` / ``audio_converter.json``. A task's
  ``save_to_preset(d)`` (``BertTextClassifier``, ``ImageClassifier``, ...) writes all of
  its backbone's and preprocessor's files plus ``task.json`` (the task's config, holding
  the backbone's and the preprocessor's) and ``task.weights.h5`` (the weights outside
  the backbone: the head). A directory is a preset when it has ``config.json`` and
  ``metadata.json`` and either names keras-hub (``metadata.json``'s
  ``keras_hub_version`` or ``config.json``'s ``registered_name``); it is a *task preset*
  when it also has ``task.json``, and then the task is the model (the backbone nested
  in it, tapped as ``<backbone name>/<layer>``), fed by the task's own preprocessor;
* a handle: ``kaggle://org/model/keras/variant[/version]``, ``hf://org/model``,
  ``modelscope://...``, ``gs://...``, or a built-in preset name that
  ``keras_hub.models.Backbone.presets`` knows (``"bert_tiny_en_uncased"``). Loading a
  handle downloads it (keras-hub caches downloads), so it needs the network.

The preprocessor is found in this order: a task preset's task's own (when it is one of
the task preprocessors below), the preset's own ``preprocessor.json`` (when its class
is one of them), then the first of
:data:`TASK_PREPROCESSORS` that keras-hub registers for the backbone's class and that
the preset has the files for (a ``tokenizer.json``, ``image_converter.json`` or
``audio_converter.json``). In keras-hub 0.32: BERT, DistilBERT, RoBERTa, ALBERT,
DeBERTaV3, FNet, XLM-R, ESM: ``TextClassifierPreprocessor``; Gemma (1-4), Llama,
Llama3, Mistral, Mixtral, Qwen, Phi3, GPT-2, GPT-NeoX, OPT, Falcon, Bloom and the
image-text models CLIP, SigLIP, PaliGemma: ``CausalLMPreprocessor``; ViT, ResNet,
EfficientNet, DenseNet, MobileNet, DeiT, VGG, Xception, CSPNet, MiT, Swin:
``ImageClassifierPreprocessor``; BART, T5, T5Gemma, Moonshine (audio):
``Seq2SeqLMPreprocessor`` (keras-hub 0.32 has no ``AudioToTextPreprocessor`` base);
SAM, DeepLabV3, SegFormer, BASNet: ``ImageSegmenterPreprocessor``; RetinaNet, D-FINE:
``ObjectDetectorPreprocessor``; DepthAnything: ``DepthEstimatorPreprocessor``. Whisper
has none. ``MaskedLMPreprocessor`` is never used: it masks tokens at random.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import keras
import numpy as np

from layertap._errors import BadInputError, ModelLoadError, require

__all__ = [
    "Preset",
    "TASK_PREPROCESSORS",
    "is_preset",
    "is_task_preset",
    "load_backbone",
    "load_preset",
    "load_preset_model",
    "load_task",
    "text_inputs",
]

logger = logging.getLogger(__name__)

#: The URL schemes keras-hub downloads presets from.
HANDLE_PREFIXES = ("kaggle://", "hf://", "modelscope://", "gs://")

#: Task preprocessor bases tried, in order, for a backbone (names in ``keras_hub.models``;
#: those a keras-hub version lacks are skipped).
TASK_PREPROCESSORS = (
    "TextClassifierPreprocessor",
    "CausalLMPreprocessor",
    "ImageClassifierPreprocessor",
    "AudioToTextPreprocessor",
    "Seq2SeqLMPreprocessor",
    "ImageSegmenterPreprocessor",
    "ObjectDetectorPreprocessor",
    "DepthEstimatorPreprocessor",
)

_MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".pb", ".py", ".json")

#: The files keras-hub writes for a task besides its backbone's and preprocessor's.
TASK_CONFIG, TASK_WEIGHTS = "task.json", "task.weights.h5"


def _hub() -> ModuleType:
    return require("keras_hub", "hub", "loading a keras-hub preset")


@dataclass
class Preset:
    """A loaded keras-hub preset.

    Attributes:
        model: the model layertap taps: the backbone, or for a task preset the task
            (``BertTextClassifier``, ``ImageClassifier``, ...) with its backbone nested
            in it (see :attr:`backbone`).
        preprocessor: the keras-hub preprocessor that turns raw inputs into the
            backbone's inputs, or ``None`` when the preset has none.
        kind: ``"text"``, ``"image"`` or ``"audio"``: what the preprocessor takes;
            ``None`` without a preprocessor or for one taking both images and text
            (CLIP, SigLIP, PaliGemma).
        sequence_length: the preprocessor's padded token length (the encoder's, for a
            sequence-to-sequence model), or ``None``.
        source: the directory or handle the preset was loaded from.
        model_kind: ``"task"`` for a task preset (a directory with ``task.json``),
            ``"backbone"`` otherwise. (``kind`` says what the preprocessor takes.)
    """

    model: keras.Model
    preprocessor: Any
    kind: str | None
    sequence_length: int | None
    source: str
    model_kind: str = "backbone"

    @property
    def backbone(self) -> keras.Model:
        """The backbone: :attr:`model` itself, or the one nested in a task.

        Example:
            >>> p = load_preset("path/to/bert_classifier_preset")  # doctest: +SKIP
            >>> p.model_kind, p.model.name, p.backbone.name  # doctest: +SKIP
            ('task', 'bert_text_classifier', 'bert_backbone')
        """
        return _backbone_of(self.model)

    def image_preprocess(
        self, size: tuple[int, int] | None = None
    ) -> ImageConverterPreprocess | None:
        """The preset's image converter as per-image preprocessing, or ``None``.

        Args:
            size: ``(height, width)`` to resize to instead of the converter's own.

        Example:
            >>> p = load_preset("path/to/vit_preset")  # doctest: +SKIP
            >>> p.image_preprocess().image_size  # doctest: +SKIP
            (224, 224)
        """
        converter = getattr(self.preprocessor, "image_converter", None)
        if self.kind != "image" or converter is None:
            return None
        return ImageConverterPreprocess(converter, size)


class ImageConverterPreprocess:
    """A keras-hub image converter as layertap's per-image preprocessing.

    Called on one decoded image (float32 ``(H, W, C)`` pixels in [0, 255], at the
    file's own size), it runs the converter as keras-hub does: resize to ``image_size``
    (cropping to the aspect ratio first when the converter does, with its interpolation
    and antialiasing), then ``x * scale + offset``. :class:`~layertap.io.data.ImageSpec`
    sees ``resizes`` and leaves the resizing to it. It pickles as the converter's Keras
    config, so Ray actors rebuild the same converter.

    Example:
        >>> import keras_hub
        >>> conv = keras_hub.layers.ViTImageConverter(image_size=(8, 8), scale=1 / 255)
        >>> fn = ImageConverterPreprocess(conv)
        >>> x = fn(np.full((20, 10, 3), 255.0, "float32"))  # cropped to 10x10, resized
        >>> x.shape, float(x.max()), fn.resizes
        ((8, 8, 3), 1.0, True)
    """

    resizes = True

    def __init__(self, converter: Any, image_size: tuple[int, int] | None = None) -> None:
        if image_size is not None and tuple(image_size) != tuple(converter.image_size or ()):
            config = {**converter.get_config(), "image_size": tuple(image_size)}
            converter = type(converter).from_config(config)
        self.converter = converter
        self.image_size: tuple[int, int] | None = (
            tuple(converter.image_size) if converter.image_size is not None else None
        )
        self.__module__ = type(converter).__module__.split(".")[0]  # "keras_hub"
        self.__qualname__ = type(converter).__name__

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return _to_numpy(self.converter(image))

    def describe(self) -> dict[str, Any]:
        """The converter's settings, stored with the features.

        Example:
            >>> import keras_hub
            >>> conv = keras_hub.layers.ViTImageConverter(image_size=(8, 8), scale=1 / 255)
            >>> d = ImageConverterPreprocess(conv).describe()
            >>> d["class"], d["image_size"], d["crop_to_aspect_ratio"]
            ('ViTImageConverter', [8, 8], True)
        """
        config = self.converter.get_config()
        keys = ("scale", "offset", "crop_to_aspect_ratio", "pad_to_aspect_ratio",
                "interpolation", "antialias")  # fmt: skip
        out = {"class": self.__qualname__, "image_size": list(self.image_size or ())}
        out.update({k: json.loads(json.dumps(config.get(k))) for k in keys})
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (_converter_from_config, (keras.saving.serialize_keras_object(self.converter),))


def _converter_from_config(config: dict[str, Any]) -> ImageConverterPreprocess:
    _hub()  # registers keras-hub's classes
    return ImageConverterPreprocess(keras.saving.deserialize_keras_object(config))


# --- recognising a preset ------------------------------------------------------------------


def _json_has(path: Path, key: str) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and key in data


def _is_preset_dir(path: Path) -> bool:
    config, metadata = path / "config.json", path / "metadata.json"
    if not (config.is_file() and metadata.is_file()):
        return False
    return _json_has(metadata, "keras_hub_version") or _json_has(config, "registered_name")


def _is_builtin(name: str) -> bool:
    """Whether keras-hub knows ``name`` as a built-in preset (False without keras-hub)."""
    if not re.fullmatch(r"[\w.-]+", name) or name.lower().endswith(_MODEL_SUFFIXES):
        return False
    try:
        hub = _hub()
    except ImportError:
        return False
    return name in hub.models.Backbone.presets


def _has_task(path: Path) -> bool:
    return _is_preset_dir(path) and (path / TASK_CONFIG).is_file()


def is_task_preset(source: object) -> bool:
    """Whether ``source`` is a preset directory that holds a task (it has ``task.json``).

    A handle is never one here: telling would need a download. Loading a handle gives
    its backbone.

    Example:
        >>> is_task_preset("path/to/bert_classifier_preset")  # doctest: +SKIP
        True
        >>> is_task_preset("kaggle://keras/bert/keras/bert_tiny_en_uncased")
        False
    """
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    return isinstance(text, str) and bool(text) and _has_task(Path(text))


def is_preset(source: object) -> bool:
    """Whether ``source`` is a keras-hub preset: a ``save_to_preset`` directory or a handle.

    Handles are ``kaggle://``, ``hf://``, ``modelscope://`` and ``gs://`` URLs and the
    built-in preset names of ``keras_hub.models.Backbone.presets``. Nothing is
    downloaded: a handle is recognised by its form, a directory by its files.

    Example:
        >>> is_preset("kaggle://keras/bert/keras/bert_tiny_en_uncased")
        True
        >>> is_preset("model.keras")
        False
        >>> is_preset("bert_tiny_en_uncased")  # doctest: +SKIP
        True
    """
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    if not isinstance(text, str) or not text:
        return False
    if text.lower().startswith(HANDLE_PREFIXES):
        return True
    path = Path(text)
    if path.is_dir():
        return _is_preset_dir(path)
    if path.exists():
        return False
    return _is_builtin(text)


# --- loading -------------------------------------------------------------------------------


def _load_error(source: str, what: str, exc: BaseException) -> ModelLoadError:
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(reason) > 400:
        reason = reason[:400] + "..."
    if Path(source).is_dir():
        return ModelLoadError(
            f"cannot load the {what} of the keras-hub preset directory {source!r}: {reason}"
        )
    return ModelLoadError(
        f"cannot load the {what} of the keras-hub preset {source!r}: {reason}. A preset "
        "handle is downloaded (from Kaggle, Hugging Face, ...) unless keras-hub has it "
        "cached, so it needs the network (and, for Kaggle, the kagglehub package); on an "
        "offline machine, save the preset to a directory elsewhere and pass the directory"
    )


def load_backbone(
    source: str | os.PathLike[str], *, custom_objects: Mapping[str, Any] | None = None
) -> keras.Model:
    """Load only the backbone of a preset, with ``keras_hub.models.Backbone.from_preset``.

    keras-hub rebuilds ``config.json`` with ``keras.saving.deserialize_keras_object`` in
    Keras's safe mode (its default), then loads ``model.weights.h5``.
    ``custom_objects`` are in scope while it does.

    Raises:
        ModelLoadError: the preset cannot be loaded; the message names it, gives the
            reason and, for a handle, says that loading it needs the network.

    Example:
        >>> load_backbone("path/to/bert_preset").name  # doctest: +SKIP
        'bert_backbone'
    """
    hub = _hub()
    shown = os.fspath(source)
    _check_weights(shown)
    try:
        with keras.saving.custom_object_scope(dict(custom_objects or {})):
            model = hub.models.Backbone.from_preset(shown)
    except Exception as exc:  # keras-hub, Keras, h5py and downloaders raise many types
        raise _load_error(shown, "backbone", exc) from exc
    if not isinstance(model, keras.Model):
        raise ModelLoadError(
            f"keras-hub preset {shown!r} gave a {type(model).__name__}, not a keras.Model"
        )
    return model


def _weights_file(source: str) -> Path | None:
    """The backbone's weights in a preset directory (``None`` if it has none)."""
    for name in ("model.weights.h5", "model.weights.json"):
        if (Path(source) / name).is_file():
            return Path(source) / name
    return None


def _check_weights(source: str) -> None:
    if Path(source).is_dir() and _weights_file(source) is None:
        raise ModelLoadError(
            f"the keras-hub preset directory {source!r} has no model.weights.h5 (nor sharded "
            "model.weights.json): it holds no backbone weights"
        )


def _is_task(model: object) -> bool:
    """Whether ``model`` is a keras-hub ``Task`` (without importing keras-hub)."""
    return any(
        c.__name__ == "Task" and c.__module__.startswith("keras_hub") for c in type(model).__mro__
    )


def _backbone_of(model: keras.Model) -> keras.Model:
    """A task's backbone; any other model itself (some backbones nest one: D-FINE)."""
    backbone = getattr(model, "backbone", None) if _is_task(model) else None
    return backbone if isinstance(backbone, keras.Model) else model


def _registered_class(source: str, file: str) -> type:
    """The keras-hub class a preset directory's ``file`` (``task.json``, ...) names."""
    path = Path(source) / file
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("registered_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise _load_error(source, f"model ({file})", exc) from exc
    cls = keras.saving.get_registered_object(name) if isinstance(name, str) else None
    if not isinstance(cls, type):
        raise ModelLoadError(
            f"the keras-hub preset directory {source!r} has a {file} whose class {name!r} "
            "keras-hub does not know (written by another keras-hub version?)"
        )
    return cls


def _rebuild_task(source: str) -> keras.Model:
    """A task saved as a base class (``ImageClassifier(backbone=...)``), rebuilt by hand.

    keras-hub's ``from_preset`` swaps a base class for the subclass registered for the
    backbone and then, its ``task.json`` being of another class, builds a new task with
    default arguments (``num_classes`` missing). The config holds the whole task, so it
    is rebuilt from it (Keras's safe mode), then given its preprocessor's assets and
    the weights of its head and backbone.
    """
    config = json.loads((Path(source) / TASK_CONFIG).read_text(encoding="utf-8"))
    task = keras.saving.deserialize_keras_object(config)
    if getattr(task, "preprocessor", None) is not None and hasattr(
        task.preprocessor, "load_preset_assets"
    ):
        task.preprocessor.load_preset_assets(source)
    if (Path(source) / TASK_WEIGHTS).is_file():
        task.load_task_weights(str(Path(source) / TASK_WEIGHTS))
    task.backbone.load_weights(str(_weights_file(source)))
    return task


def load_task(
    source: str | os.PathLike[str], *, custom_objects: Mapping[str, Any] | None = None
) -> keras.Model:
    """Load the task of a task preset directory (one with ``task.json``): head and backbone.

    The class ``task.json`` names loads it with its ``from_preset`` (keras-hub rebuilds
    the config in Keras's safe mode, then loads ``task.weights.h5`` into the head and
    ``model.weights.h5`` into the backbone); the task keeps its preprocessor
    (``task.preprocessor``). ``custom_objects`` are in scope while it loads.

    Raises:
        ModelLoadError: the directory has no ``task.json``, names a class that is not a
            keras-hub task, lacks the weights of the backbone or of the head, or the task
            does not load (the message names the directory and the reason).

    Example:
        >>> task = load_task("path/to/bert_classifier_preset")  # doctest: +SKIP
        >>> task.name, task.backbone.name  # doctest: +SKIP
        ('bert_text_classifier', 'bert_backbone')
    """
    hub = _hub()
    shown = os.fspath(source)
    if not _has_task(Path(shown)):
        raise ModelLoadError(
            f"{shown!r} is not a keras-hub task preset directory (it has no {TASK_CONFIG} "
            "next to config.json and metadata.json)"
        )
    _check_weights(shown)
    with keras.saving.custom_object_scope(dict(custom_objects or {})):
        cls: Any = _registered_class(shown, TASK_CONFIG)
        if not issubclass(cls, hub.models.Task):
            raise ModelLoadError(
                f"the {TASK_CONFIG} of the keras-hub preset directory {shown!r} holds a "
                f"{cls.__name__}, not a keras-hub Task"
            )
        backbone_cls = _registered_class(shown, "config.json")
        try:
            if getattr(cls, "backbone_cls", None) is backbone_cls:
                task = cls.from_preset(shown)
            else:
                task = _rebuild_task(shown)
        except Exception as exc:  # keras-hub, Keras and h5py raise many types
            raise _load_error(shown, f"task ({cls.__name__})", exc) from exc
    if not isinstance(task, keras.Model):
        raise ModelLoadError(
            f"keras-hub preset {shown!r} gave a {type(task).__name__}, not a keras.Model"
        )
    if not (Path(shown) / TASK_WEIGHTS).is_file() and task.has_task_weights():
        raise ModelLoadError(
            f"the keras-hub task preset directory {shown!r} has no {TASK_WEIGHTS}: its "
            f"{cls.__name__} has weights outside the backbone (the head), which would be "
            "random"
        )
    return task


def load_preset_model(
    source: str | os.PathLike[str], *, custom_objects: Mapping[str, Any] | None = None
) -> keras.Model:
    """The model of a preset: the task of a task preset (:func:`load_task`), else the backbone.

    Example:
        >>> load_preset_model("path/to/bert_classifier_preset").name  # doctest: +SKIP
        'bert_text_classifier'
        >>> load_preset_model("path/to/bert_preset").name  # doctest: +SKIP
        'bert_backbone'
    """
    if is_task_preset(source):
        return load_task(source, custom_objects=custom_objects)
    return load_backbone(source, custom_objects=custom_objects)


def _task_bases(hub: ModuleType) -> list[type]:
    found = (getattr(hub.models, name, None) for name in TASK_PREPROCESSORS)
    return [cls for cls in found if isinstance(cls, type)]


def _registered_for(base: type, backbone_cls: type) -> bool:
    """Whether keras-hub registers a subclass of ``base`` for ``backbone_cls``."""
    return any(
        isinstance(obj, type)
        and issubclass(obj, base)
        and getattr(obj, "backbone_cls", None) is backbone_cls
        for obj in keras.saving.get_custom_objects().values()
    )


def _saved_class(source: str, bases: Sequence[type]) -> type | None:
    """The class of a local preset's ``preprocessor.json``, if it is a task preprocessor."""
    path = Path(source) / "preprocessor.json"
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("registered_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise _load_error(source, "preprocessor (preprocessor.json)", exc) from exc
    cls = keras.saving.get_registered_object(name) if isinstance(name, str) else None
    if not isinstance(cls, type):
        raise ModelLoadError(
            f"the keras-hub preset directory {source!r} has a preprocessor.json whose class "
            f"{name!r} keras-hub does not know (written by another keras-hub version?)"
        )
    if not issubclass(cls, tuple(bases)):
        logger.info("%s: preprocessor.json holds a %s; not used", source, cls.__name__)
        return None
    return cls


def _candidates(hub: ModuleType, source: str, backbone_cls: type) -> Iterator[tuple[Any, bool]]:
    """(class, saved?) pairs to try: the preset's own preprocessor first."""
    bases = _task_bases(hub)
    saved = _saved_class(source, bases) if Path(source).is_dir() else None
    if saved is not None:
        yield saved, True
    for base in bases:
        if _registered_for(base, backbone_cls):
            yield base, False


def _find_preprocessor(hub: ModuleType, source: str, backbone_cls: type) -> Any:
    """The preprocessor for a preset, or None when it has the files for none."""
    for cls, saved in _candidates(hub, source, backbone_cls):
        try:
            return cls.from_preset(source)
        except FileNotFoundError as exc:  # no tokenizer.json / converter: try the next
            if saved:
                raise _load_error(source, f"preprocessor ({cls.__name__})", exc) from exc
            logger.debug("%s: no %s: %s", source, cls.__name__, exc)
        except Exception as exc:  # the files are there but do not load
            raise _load_error(source, f"preprocessor ({cls.__name__})", exc) from exc
    return None


def _kind(preprocessor: Any) -> str | None:
    if preprocessor is None:
        return None
    if getattr(preprocessor, "audio_converter", None) is not None:
        return "audio"
    image = any(
        getattr(preprocessor, key, None) is not None
        for key in ("image_converter", "video_converter")
    )
    text = getattr(preprocessor, "tokenizer", None) is not None
    if image:
        return None if text else "image"
    return "text" if text else None


def _length_key(preprocessor: Any) -> str | None:
    """The attribute that holds the padded token length of the (encoder's) text."""
    for key in ("encoder_sequence_length", "sequence_length"):
        if hasattr(preprocessor, key):
            return key
    return None


def _task_preprocessor(hub: ModuleType, model: keras.Model) -> Any:
    """A task's own preprocessor, when it is one of the task preprocessors layertap uses."""
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None:
        return None
    if isinstance(preprocessor, tuple(_task_bases(hub))):
        return preprocessor
    logger.info("%s: the task's %s is not used", model.name, type(preprocessor).__name__)
    return None


def load_preset(source: str | os.PathLike[str], *, sequence_length: int | None = None) -> Preset:
    """Load a keras-hub preset: its model and the preprocessor that feeds it.

    The model is the backbone, or for a task preset (a directory with ``task.json``,
    written by a task's ``save_to_preset``) the task, head and all, with the task's own
    preprocessor; :attr:`Preset.model_kind` says which.

    Args:
        source: a preset directory or handle (see :func:`is_preset`).
        sequence_length: replaces the preprocessor's padded token length.

    Raises:
        ModelLoadError: the backbone or a preprocessor whose files are in the preset
            cannot be loaded (the message names the preset and the reason).
        BadInputError: ``sequence_length`` for a preset without a text preprocessor.

    Example:
        >>> p = load_preset("path/to/bert_preset", sequence_length=24)  # doctest: +SKIP
        >>> p.kind, p.sequence_length, sorted(p.model.input)  # doctest: +SKIP
        ('text', 24, ['padding_mask', 'segment_ids', 'token_ids'])
        >>> load_preset("path/to/bert_classifier_preset").model_kind  # doctest: +SKIP
        'task'
    """
    hub = _hub()
    shown = os.fspath(source)
    task = is_task_preset(shown)
    with warnings.catch_warnings():
        # keras-hub 0.32's SentencePieceTokenizer reads its proto file with
        # open(path).read() and never closes it (CPython closes it at once): not the
        # user's to act on, so its ResourceWarning stays here.
        warnings.filterwarnings("ignore", "unclosed file", ResourceWarning)
        model = load_preset_model(shown)
        preprocessor = _task_preprocessor(hub, model) if task else None
        if preprocessor is None:
            preprocessor = _find_preprocessor(hub, shown, type(_backbone_of(model)))
    key = _length_key(preprocessor) if preprocessor is not None else None
    if sequence_length is not None:
        if key is None:
            raise BadInputError(
                f"sequence_length={sequence_length} was given, but the keras-hub preset "
                f"{shown!r} has no text preprocessor to pad to it"
            )
        setattr(preprocessor, key, int(sequence_length))
    length = getattr(preprocessor, key) if key is not None else None
    return Preset(
        model=model,
        preprocessor=preprocessor,
        kind=_kind(preprocessor),
        sequence_length=int(length) if isinstance(length, int) else None,
        source=shown,
        model_kind="task" if task else "backbone",
    )


# --- text inputs ---------------------------------------------------------------------------


def _pack(preprocessor: Any, texts: list[str], sequence_length: int | None) -> Any:
    """Run the preprocessor's inference path on a batch of strings."""
    generate = getattr(preprocessor, "generate_preprocess", None)
    if callable(generate):  # causal and seq2seq LMs: no end token, no (x, y) labels
        if sequence_length is None:
            return generate(texts)
        params = inspect.signature(generate).parameters
        arg = "encoder_sequence_length" if "encoder_sequence_length" in params else None
        return generate(texts, **{arg or "sequence_length": sequence_length})
    key = _length_key(preprocessor)
    if sequence_length is None or key is None:
        return preprocessor(texts)
    saved = getattr(preprocessor, key)
    setattr(preprocessor, key, sequence_length)  # the public setter resizes its packer
    try:
        return preprocessor(texts)
    finally:
        setattr(preprocessor, key, saved)


def _to_numpy(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))


#: Seconds of Python-path tokenizing (per preprocessor and padded length) after which
#: the TensorFlow path is traced. Tracing costs ~0.6 s, what the Python path spends on
#: ~2,000 short lines on the TensorFlow backend (``bench_text.py``): a notebook's few
#: sentences never pay it; a long job pays it once, after ~600 lines.
TRACE_AFTER_SECONDS = 0.2


class _GraphPacker:
    """keras-hub's TensorFlow path for one preprocessor, used where it equals the Python path.

    keras-hub 0.32 preprocessing layers run in plain Python outside ``tf.function``. On
    the TensorFlow backend, Keras's ``Layer.__call__`` then checks every token id of the
    packer's nested-list input with ``tf.is_tensor`` (a ``typing.Protocol`` check, ~10 us
    each on Python 3.11), which makes tokenizing slower than the forward pass of a small
    backbone. Inside a ``tf.function`` keras-hub takes its TensorFlow path instead
    (tensorflow-text's compiled tokenizers): about 20x faster on ``bench_text.py``'s
    lines. Tracing it costs ~0.6 s, so it is traced only once the Python path has spent
    :data:`TRACE_AFTER_SECONDS` on one padded length (in
    :class:`~layertap.io.data.TextSource`, in its tokenize-ahead thread, next to the
    forward pass). The batch that crosses the line runs both ways, and the graph is used
    only when its arrays are equal, so the tokens never depend on which path ran.
    Without TensorFlow or tensorflow-text, or when the paths differ, the Python path is
    used.
    """

    def __init__(self, preprocessor: Any) -> None:
        self._ref = weakref.ref(preprocessor)  # the cache below must not keep it alive
        self._graphs: dict[tuple[int | None, int | None], Any] = {}  # None: unusable
        self._spent: dict[tuple[int | None, int | None], float] = {}

    def __call__(self, texts: list[str], sequence_length: int | None) -> Any:
        preprocessor = self._ref()
        key = _length_key(preprocessor)
        current = getattr(preprocessor, key) if key is not None else None
        length = (sequence_length, current)  # a traced graph has its length built in
        graph = self._graphs.get(length)
        if graph is not None:
            return graph(texts)
        start = time.perf_counter()
        reference = _pack(preprocessor, texts, sequence_length)
        spent = self._spent[length] = self._spent.get(length, 0.0) + time.perf_counter() - start
        if length not in self._graphs and spent >= TRACE_AFTER_SECONDS:
            self._graphs[length] = self._trace(preprocessor, texts, sequence_length, reference)
        return reference

    def _trace(
        self, preprocessor: Any, texts: list[str], sequence_length: int | None, reference: Any
    ) -> Any:
        """The traced path, or ``None`` when it cannot run or differs from ``reference``."""
        try:
            import tensorflow as tf

            pack = tf.function(
                lambda x: _pack(self._ref(), x, sequence_length),
                input_signature=[tf.TensorSpec([None], tf.string)],
                autograph=False,
            )

            def graph(batch: list[str]) -> Any:
                return _cast_like(pack(tf.constant(batch, tf.string)), reference)

            if _same_arrays(graph(texts), reference):
                return graph
            logger.debug("%s: the TF path's tokens differ; using Python", preprocessor.name)
        except Exception as exc:  # no TF or tensorflow-text, or a path keras-hub lacks
            logger.debug("%s: no TF path (%s); using Python", preprocessor.name, exc)
        return None


def _structure(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def _cast_like(out: Any, reference: Any) -> Any:
    """``out`` as numpy arrays with ``reference``'s dtypes (TF gives bool masks as bool)."""
    out, reference = _structure(out), _structure(reference)
    if not isinstance(out, Mapping) or not isinstance(reference, Mapping):
        return out
    return {k: _to_numpy(v).astype(_to_numpy(reference[k]).dtype) for k, v in out.items()}


def _same_arrays(out: Any, reference: Any) -> bool:
    out, reference = _structure(out), _structure(reference)
    if not isinstance(out, Mapping) or not isinstance(reference, Mapping):
        return False
    if set(out) != set(reference):
        return False
    return all(np.array_equal(_to_numpy(out[k]), _to_numpy(reference[k])) for k in out)


_packers: weakref.WeakKeyDictionary[Any, _GraphPacker] = weakref.WeakKeyDictionary()


def _packer(preprocessor: Any) -> _GraphPacker:
    packer = _packers.get(preprocessor)
    if packer is None:
        packer = _packers[preprocessor] = _GraphPacker(preprocessor)
    return packer


def _fit_to_model(model: keras.Model, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep the model's inputs, in its order and dtypes; raise when one is missing."""
    spec = getattr(model, "input", None)
    if not isinstance(spec, dict):
        return arrays
    missing = sorted(set(spec) - set(arrays))
    if missing:
        raise BadInputError(
            f"the preprocessor gives {sorted(arrays)}, but the model also takes "
            f"{missing}; build those inputs yourself"
        )
    return {name: arrays[name].astype(str(spec[name].dtype)) for name in spec}


def text_inputs(
    preset_or_preprocessor: Preset | Any,
    texts: Sequence[str],
    sequence_length: int | None = None,
) -> dict[str, np.ndarray]:
    """Tokenize and pack strings into the dict of numpy arrays the backbone takes.

    Each row is padded on its own, so a line gives the same tokens alone or in a batch.
    A causal LM's preprocessor (Gemma, Llama, ...) is run through its inference path,
    ``generate_preprocess``: a start token, no end token, ``token_ids`` and
    ``padding_mask`` of ``sequence_length`` (its training call packs one token more and
    returns shifted ``(x, y, sample_weight)``, which is not what the backbone sees at
    inference). A sequence-to-sequence one packs the text as the encoder's input. Given a
    :class:`Preset`, the dict holds exactly the backbone's inputs, in its dtypes
    (keras-hub gives ``padding_mask`` as bool; the backbone declares int32).

    Args:
        preset_or_preprocessor: a :class:`Preset` or a keras-hub text preprocessor.
        texts: the lines, one example each.
        sequence_length: pads (and truncates) to this length instead of the
            preprocessor's; the preprocessor is left as it was.

    Raises:
        BadInputError: no text preprocessor, ``texts`` not a list of strings, or the
            preprocessor misses an input the backbone takes.

    Example:
        >>> p = load_preset("path/to/bert_preset")  # doctest: +SKIP
        >>> x = text_inputs(p, ["the cat sat", "a dog"], sequence_length=24)  # doctest: +SKIP
        >>> {k: v.shape for k, v in x.items()}  # doctest: +SKIP
        {'padding_mask': (2, 24), 'segment_ids': (2, 24), 'token_ids': (2, 24)}
    """
    if isinstance(preset_or_preprocessor, Preset):
        preprocessor, model = preset_or_preprocessor.preprocessor, preset_or_preprocessor.model
    else:
        preprocessor, model = preset_or_preprocessor, None
    if preprocessor is None or getattr(preprocessor, "tokenizer", None) is None:
        raise BadInputError(
            f"text_inputs needs a keras-hub text preprocessor (one with a tokenizer), got "
            f"{type(preprocessor).__name__}"
        )
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise BadInputError("text_inputs takes a list of strings, one example per string")
    if sequence_length is not None and (
        not isinstance(sequence_length, int) or sequence_length < 1
    ):
        raise BadInputError(f"sequence_length must be a positive int, got {sequence_length!r}")
    out = _packer(preprocessor)(list(texts), sequence_length)
    if isinstance(out, tuple):  # (x, y, sample_weight) from a training call
        out = out[0]
    if not isinstance(out, Mapping):
        raise BadInputError(
            f"the preprocessor {type(preprocessor).__name__} gives a "
            f"{type(out).__name__}, not a dict of inputs"
        )
    arrays = {str(k): _to_numpy(v) for k, v in out.items()}
    if model is None:
        return arrays
    _check_length(model, arrays)
    return _fit_to_model(model, arrays)


def _check_length(model: keras.Model, arrays: Mapping[str, np.ndarray]) -> None:
    """A packed length the backbone's position embedding cannot take is named here."""
    limit = getattr(_backbone_of(model), "max_sequence_length", None)
    ids = arrays.get("token_ids")
    if isinstance(limit, int) and ids is not None and ids.ndim == 2 and ids.shape[1] > limit:
        raise BadInputError(
            f"sequence length {ids.shape[1]} is longer than the backbone's "
            f"max_sequence_length {limit}; ask for at most {limit} tokens "
            "(sequence_length=, --sequence-length)"
        )
