"""Stage 1, load: a model file -> ``keras.Model``, safe by default, never compiled.

Four kinds of input:

* ``.keras`` archives and ``.h5`` files written by Keras 3: loaded by Keras as they are.
* ``.h5`` files written by tf.keras 2 (the file's ``keras_version`` attribute starts with
  ``"2."``): their ``model_config`` JSON is checked against a small table of known
  differences (:data:`_CONFIG_FIXES`). When one applies, layertap writes the repaired
  config into a *copy* of the file in a temporary directory, loads the copy with
  Keras 3, and deletes it; the user's file is only read. When none applies, the file
  is loaded as it is. The decision is made from the file's own contents (its version
  and config), not by trying a load and matching Keras's error text: the failures come
  in stages, and a plain attempt on a large model costs a full build before it fails.
* SavedModel directories: loaded by the optional ``tf_keras`` package, saved by it to a
  temporary tf.keras-2 ``.h5`` file, and rebuilt from that as a Keras 3 model through the
  repair above (same weights, a graph layertap can walk).
* keras-hub presets (a ``save_to_preset`` directory, a ``kaggle://`` or ``hf://`` handle,
  or a built-in preset name): the backbone, or for a task preset directory (one with
  ``task.json``) the task with its backbone nested in it, loaded by keras-hub
  (:mod:`layertap.graph.preset`, which also finds the preset's preprocessor).

Safe mode: with ``safe_mode=True`` (the default) a model whose ``Lambda`` layer stores
Python code is refused before Keras sees it, for ``.h5`` files and SavedModels alike
(Keras 3.15 honours ``safe_mode`` for ``.h5`` too; layertap checks the config itself so
the guarantee does not depend on the Keras version or on tf_keras, which would run the
code while reviving a SavedModel). A keras-hub preset's ``config.json`` is rebuilt by
keras-hub itself with ``keras.saving.deserialize_keras_object`` in Keras's safe mode (its
default, which keras-hub does not change), so stored code is refused whatever
``safe_mode`` says; presets hold registered keras-hub classes, not code.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import keras

from layertap._errors import ModelLoadError, require
from layertap.graph.preset import is_preset, load_preset_model

__all__ = ["load_custom_objects", "load_model"]

logger = logging.getLogger(__name__)

_FORMATS = (
    ".keras (Keras 3) and .h5 / .hdf5 (Keras 3 or tf.keras 2) files, "
    "and SavedModel directories (with tf_keras installed)"
)
_CUSTOM_HINT = (
    "pass it as load_model(..., custom_objects={{{name!r}: cls}}) in Python, "
    "or --custom-objects FILE.py (or module:attr) on the command line"
)


# --- tf.keras 2 config repairs -----------------------------------------------------------


def _is_one_item_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 1


def _is_one_wrapped_node(value: Any) -> bool:
    """``[["name", 0, 0]]``: a one-item list of ``[layer name, node index, tensor index]``."""
    return (
        _is_one_item_list(value)
        and isinstance(value[0], list)
        and len(value[0]) == 3
        and isinstance(value[0][0], str)
    )


def _always(value: Any) -> bool:
    return True


def _first(value: Any) -> Any:
    return value[0]


def _set_key(
    key: str, applies: Callable[[Any], bool], repair: Callable[[Any], Any] | None
) -> Callable[[dict[str, Any]], bool]:
    """A fix that replaces ``config[key]`` by ``repair(value)`` (``None``: drops the key)."""

    def fix(config: dict[str, Any]) -> bool:
        if key not in config or not applies(config[key]):
            return False
        if repair is None:
            del config[key]
        else:
            config[key] = repair(config[key])
        return True

    return fix


_MODELS = frozenset({"Functional", "Model", "Sequential"})


def _shift_nested_model_nodes(config: dict[str, Any]) -> bool:
    """Renumber calls of nested models: tf.keras 2 counts their built-in node, Keras 3 not.

    A tf.keras 2 Functional config refers to the first call of a nested model as node 1
    (node 0 is the model's own input-to-output node); a Keras 3 model rebuilt from the
    config has no such node, so the reference must be node 0.
    """
    layers = config.get("layers")
    if not isinstance(layers, list):
        return False
    nested = {
        layer.get("config", {}).get("name", layer.get("name"))
        for layer in layers
        if isinstance(layer, dict) and layer.get("class_name") in _MODELS
    }
    # Keras 3 already subtracts one for a Functional named in input/output_layers.
    sequential = {
        layer.get("config", {}).get("name", layer.get("name"))
        for layer in layers
        if isinstance(layer, dict) and layer.get("class_name") == "Sequential"
    }
    refs: list[tuple[Any, set[Any]]] = [
        (ref, nested)
        for layer in layers
        if isinstance(layer, dict)
        for node in layer.get("inbound_nodes", [])
        if isinstance(node, list)
        for ref in node
    ]
    for key in ("input_layers", "output_layers"):
        ends = config.get(key)
        if isinstance(ends, list) and ends and isinstance(ends[0], str):
            ends = [ends]  # a single [name, node, tensor], as unwrapped above
        refs.extend((ref, sequential) for ref in ends or [] if isinstance(ends, list))
    changed = False
    for ref, names in refs:
        if (
            isinstance(ref, list)
            and len(ref) >= 3
            and ref[0] in names
            and isinstance(ref[1], int)
            and ref[1] > 0
        ):
            ref[1] -= 1
            changed = True
    return changed


def _is_input_layer(layer: Any) -> bool:
    return isinstance(layer, dict) and layer.get("class_name") == "InputLayer"


def _input_layer_for(layer: dict[str, Any]) -> dict[str, Any] | None:
    """The InputLayer config tf.keras 2 builds for a first layer given ``input_shape=``."""
    inner = layer.get("config")
    if not isinstance(inner, dict):
        return None
    shape = inner.get("batch_input_shape")
    if not isinstance(shape, list) or not shape:
        return None
    dtype = inner.get("dtype")
    config: dict[str, Any] = {
        "batch_input_shape": list(shape),
        "dtype": dtype if isinstance(dtype, str) else "float32",
        "name": f"{inner.get('name', 'layer')}_input",
    }
    if "module" in layer:  # the same serialization style as its neighbours
        return {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "config": config,
            "registered_name": None,
        }
    return {"class_name": "InputLayer", "config": config}


def _sequential_input_layer(config: dict[str, Any]) -> bool:
    """Give a Sequential whose first layer holds ``batch_input_shape`` its InputLayer.

    tf.keras 2.0-2.3 wrote a Sequential without its InputLayer and put the input shape
    on the first layer (``input_shape=`` / ``batch_input_shape=``). Keras 3 turns that
    into an ``input_shape`` argument taken as a shape without the batch axis (one axis
    too many), and refuses it in the newer configs tf.keras writes for nested models;
    an explicit InputLayer is what both understand.
    """
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers or _is_input_layer(layers[0]):
        return False
    if not isinstance(layers[0], dict):
        return False
    first = _input_layer_for(layers[0])
    if first is None:
        return False
    layers.insert(0, first)
    return True


@dataclass(frozen=True)
class _ConfigFix:
    """One known difference between a tf.keras 2 layer config and what Keras 3 accepts.

    ``apply`` edits the inner ``config`` dict of a layer whose class is in ``classes``
    (not in it, with ``every_class_but``) and returns whether it changed anything.
    """

    what: str
    classes: frozenset[str]
    apply: Callable[[dict[str, Any]], bool]
    #: ``classes`` is the set of classes the fix skips instead (every other class applies).
    every_class_but: bool = False

    def applies_to(self, class_name: str) -> bool:
        return (class_name in self.classes) != self.every_class_but


_FUNCTIONAL = frozenset({"Functional", "Model"})

#: The table of repairs applied to tf.keras 2 ``.h5`` configs, at every depth.
_CONFIG_FIXES: tuple[_ConfigFix, ...] = (
    # Before the next fix, which drops the shape this one reads.
    _ConfigFix(
        "Sequential without an InputLayer, its input shape on the first layer",
        frozenset({"Sequential"}),
        _sequential_input_layer,
    ),
    _ConfigFix(
        "batch_input_shape on a layer (input_shape=; not a Keras 3 argument)",
        frozenset({"InputLayer"}),
        _set_key("batch_input_shape", _always, None),
        every_class_but=True,
    ),
    _ConfigFix(
        "BatchNormalization axis saved as a one-item list",
        frozenset({"BatchNormalization"}),
        _set_key("axis", _is_one_item_list, _first),
    ),
    _ConfigFix(
        "DepthwiseConv2D 'groups' keyword (not a Keras 3 argument)",
        frozenset({"DepthwiseConv2D"}),
        _set_key("groups", _always, None),
    ),
    _ConfigFix(
        "rng_type of a random layer (RandomFlip, ...; not a Keras 3 argument)",
        frozenset(),
        _set_key("rng_type", _always, None),
        every_class_but=True,
    ),
    _ConfigFix(
        "one-item input_layers list (Keras 3 would pass a one-item tuple)",
        _FUNCTIONAL,
        _set_key("input_layers", _is_one_wrapped_node, _first),
    ),
    _ConfigFix(
        "one-item output_layers list (Keras 3 would return a one-item tuple)",
        _FUNCTIONAL,
        _set_key("output_layers", _is_one_wrapped_node, _first),
    ),
    _ConfigFix(
        "node indices of nested model calls counted from tf.keras 2's built-in node",
        _FUNCTIONAL,
        _shift_nested_model_nodes,
    ),
)


def _layer_configs(node: Any) -> Iterator[dict[str, Any]]:
    """Every ``{"class_name": ..., "config": {...}}`` in a config tree, outermost first."""
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict):
            yield node
        for value in node.values():
            yield from _layer_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _layer_configs(value)


def _repair_config(config: Any) -> list[str]:
    """Apply :data:`_CONFIG_FIXES` in place; return one line per repair made."""
    done: list[str] = []
    for layer in _layer_configs(config):
        inner = layer["config"]
        for fix in _CONFIG_FIXES:
            if fix.applies_to(layer["class_name"]) and fix.apply(inner):
                done.append(f"{inner.get('name', layer['class_name'])}: {fix.what}")
    return done


def _stores_code(value: Any) -> bool:
    """Whether a Lambda ``function``/``output_shape`` entry is Python code, not a name."""
    if isinstance(value, list):  # tf.keras 2: [base64 bytecode, defaults, closure]
        return True
    return isinstance(value, dict) and value.get("class_name") == "__lambda__"


def _lambda_with_code(config: Any) -> str | None:
    """The name of the first Lambda layer in a config that stores Python code, if any."""
    for layer in _layer_configs(config):
        if layer["class_name"] == "Lambda":
            inner = layer["config"]
            if inner.get("function_type") == "lambda" or any(
                _stores_code(inner.get(key)) for key in ("function", "output_shape")
            ):
                return str(inner.get("name", "?"))
    return None


def _refuse_code(where: str, layer: str) -> ModelLoadError:
    return ModelLoadError(
        f"{where} holds code (the Lambda layer {layer!r}) that would run when the model is "
        "loaded or called: anyone who can write the file can run any program on this "
        "machine, so safe mode refuses it. If you trust the file, load it with "
        "safe_mode=False"
    )


# --- loading -------------------------------------------------------------------------------


def _check_path(path: Path) -> str:
    """Return the format ('keras', 'h5' or 'savedmodel'), or raise naming the problem."""
    if not path.exists():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise ModelLoadError(
            f"model path {str(path)!r} is a directory but not a SavedModel (it has no "
            f"saved_model.pb); layertap reads {_FORMATS}"
        )
    if zipfile.is_zipfile(path):
        return "keras"
    if h5py.is_hdf5(path):
        return "h5"
    raise ModelLoadError(
        f"model file {str(path)!r} is neither a .keras archive nor an HDF5 file "
        f"(truncated or not a model?); layertap reads {_FORMATS}"
    )


def _missing_class(reason: str) -> str | None:
    """The custom class or function a Keras loading error says it could not find."""
    for pattern in (
        r"Could not locate (?:class|function|object) '([^']+)'",
        r"Unknown (?:layer|object|activation|loss|metric|initializer|regularizer|"
        r"constraint|function)\s*:?\s*'?([\w.>]+)'?",
    ):
        found = re.search(pattern, reason)
        if found:
            return found.group(1)
    return None


_CLASS_FAILED = re.compile(
    r"Error when deserializing class '(?P<a>[\w.>]+)'"
    r"|<class '(?:[\w.]+\.)?(?P<b>\w+)'> could not be deserialized"
)


_UNKNOWN_ARGUMENT = re.compile(r"Unrecognized keyword arguments passed to (\w+): \{'([^']+)'")


def _layer_failure(reason: str, config: Any = None) -> str | None:
    """``layer 'name' (Class) cannot be rebuilt ...: why``, from Keras's text, if it says.

    Keras puts the layer's whole config before the cause ("Exception encountered: ..."),
    so a message cut to a readable length would lose the why; nested models wrap the
    text once per level, so the innermost (last) class and cause are the ones that failed.
    When Keras names only the class and the argument it refused, the layer is the first
    in ``config`` (the model config, if known) of that class that has that argument.
    """
    found = list(_CLASS_FAILED.finditer(reason))
    if found and "Exception encountered:" in reason:
        last = found[-1]
        why = reason.rsplit("Exception encountered:", 1)[1].strip()
        cls = last.group("a") or last.group("b")
        name = re.search(r"'name': '([^']+)'", reason[last.end() :])
        layer = f"layer {name.group(1)!r} " if name else "a layer "
        return f"{layer}({cls}) cannot be rebuilt by Keras 3: {why}"
    refused = _UNKNOWN_ARGUMENT.search(reason)
    if refused is None or config is None:
        return None
    cls, argument = refused.groups()
    for node in _layer_configs(config):
        if node["class_name"] == cls and argument in node["config"]:
            found_name = node["config"].get("name", "?")
            return f"layer {found_name!r} ({cls}) cannot be rebuilt by Keras 3: {reason}"
    return None


def _keras_load(
    file: Path,
    shown: Path,
    custom_objects: Mapping[str, Any] | None,
    safe_mode: bool,
    config: Any = None,
) -> keras.Model:
    """Load ``file`` with Keras 3; errors name ``shown`` (the user's path).

    ``config``, the model config when the caller has read it, lets an error name the
    layer Keras refused when Keras names only its class.
    """
    try:
        model = keras.saving.load_model(
            file,
            custom_objects=dict(custom_objects or {}),
            compile=False,
            safe_mode=safe_mode,
        )
    except Exception as exc:  # Keras raises many types; name the file and reason
        reason = " ".join(str(exc).split())
        if "safe_mode" in reason or "Lambda" in reason:
            raise ModelLoadError(
                f"model file {str(shown)!r} holds code (a Lambda layer) that would run "
                "on loading; safe mode refuses it. If you trust the file, load it "
                "with safe_mode=False"
            ) from exc
        missing = _missing_class(reason)
        if missing is not None:
            raise ModelLoadError(
                f"model file {str(shown)!r} needs the custom class or function "
                f"{missing!r}, which is not registered; "
                + _CUSTOM_HINT.format(name=missing.split(">")[-1])
            ) from exc
        reason = _layer_failure(reason, config) or reason
        if len(reason) > 400:
            reason = reason[:400] + "..."
        raise ModelLoadError(f"cannot load model file {str(shown)!r}: {reason}") from exc
    if not isinstance(model, keras.Model):
        raise ModelLoadError(
            f"model file {str(shown)!r} holds a {type(model).__name__}, not a keras.Model"
        )
    return model


def _read_h5_config(path: Path) -> tuple[str, Any]:
    """The h5 file's ``keras_version`` ('' if absent) and parsed ``model_config``."""
    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("keras_version", "")
            raw = f.attrs.get("model_config")
    except OSError as exc:
        raise ModelLoadError(f"cannot read HDF5 file {str(path)!r}: {exc}") from exc
    if isinstance(version, bytes):
        version = version.decode("utf-8")
    if raw is None:
        raise ModelLoadError(
            f"HDF5 file {str(path)!r} holds no model config (a weights-only file?); "
            "build the model in code and call model.load_weights on it"
        )
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        return str(version), json.loads(raw)
    except ValueError as exc:
        raise ModelLoadError(f"HDF5 file {str(path)!r} has an unreadable model config") from exc


def _load_h5(
    path: Path, shown: Path, custom_objects: Mapping[str, Any] | None, safe_mode: bool
) -> keras.Model:
    version, config = _read_h5_config(path)
    if safe_mode:
        layer = _lambda_with_code(config)
        if layer is not None:
            raise _refuse_code(f"model file {str(shown)!r}", layer)
    repairs = _repair_config(config) if version.startswith("2.") else []
    if not repairs:
        return _keras_load(path, shown, custom_objects, safe_mode, config)
    logger.info(
        "%s: tf.keras %s file; loading a repaired copy (%d fixes: %s)",
        shown,
        version,
        len(repairs),
        "; ".join(sorted({r.split(": ", 1)[1] for r in repairs})),
    )
    with tempfile.TemporaryDirectory(prefix="layertap-h5-") as tmp:
        copy = Path(tmp) / "repaired.h5"
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:
            f.attrs["model_config"] = json.dumps(config)
        return _keras_load(copy, shown, custom_objects, safe_mode, config)


def _savedmodel_lambda(path: Path) -> str | None:
    """The first Lambda storing code in a SavedModel's Keras metadata, if any."""
    meta = path / "keras_metadata.pb"
    if not meta.is_file():
        return None
    try:
        saved_metadata_pb2 = importlib.import_module("tf_keras.protobuf.saved_metadata_pb2")
    except ImportError:  # another tf_keras layout: look for the class name in the bytes
        return "?" if re.search(rb'"class_name": ?"Lambda"', meta.read_bytes()) else None
    proto = saved_metadata_pb2.SavedMetadata()
    proto.ParseFromString(meta.read_bytes())
    for node in proto.nodes:
        try:
            data = json.loads(node.metadata)
        except ValueError:
            continue
        found = _lambda_with_code(data)
        if found is None and data.get("class_name") == "Lambda":
            found = str(data.get("name", "?"))
        if found is not None:
            return found
    return None


def _load_savedmodel(
    path: Path, custom_objects: Mapping[str, Any] | None, safe_mode: bool
) -> keras.Model:
    tf_keras = require(
        "tf_keras",
        "legacy",
        f"model path {str(path)!r} is a TensorFlow SavedModel directory, which Keras 3 "
        "cannot rebuild as a model with layers; loading it",
    )
    if not (path / "keras_metadata.pb").is_file():
        raise ModelLoadError(
            f"SavedModel {str(path)!r} has no keras_metadata.pb: it was not saved by "
            "tf.keras (tf.saved_model.save of a tf.Module?), so it holds no layers to tap"
        )
    if safe_mode:
        layer = _savedmodel_lambda(path)
        if layer is not None:
            raise _refuse_code(f"SavedModel {str(path)!r}", layer)
    try:
        legacy = tf_keras.models.load_model(
            str(path), custom_objects=dict(custom_objects or {}), compile=False
        )
    except Exception as exc:  # tf_keras raises many types
        reason = " ".join(str(exc).split())[:400]
        missing = _missing_class(reason)
        if missing is not None:
            raise ModelLoadError(
                f"SavedModel {str(path)!r} needs the custom class or function {missing!r}; "
                + _CUSTOM_HINT.format(name=missing)
            ) from exc
        raise ModelLoadError(f"tf_keras cannot load SavedModel {str(path)!r}: {reason}") from exc
    with tempfile.TemporaryDirectory(prefix="layertap-savedmodel-") as tmp:
        h5 = Path(tmp) / "from_savedmodel.h5"
        try:
            with warnings.catch_warnings():  # "HDF5 ... is considered legacy": on purpose
                warnings.filterwarnings(
                    "ignore", "You are saving your model as an HDF5 file", UserWarning
                )
                legacy.save(h5, save_format="h5")
        except (NotImplementedError, ValueError, TypeError) as exc:
            raise ModelLoadError(
                f"SavedModel {str(path)!r} holds a {type(legacy).__name__} that tf_keras "
                "cannot describe as a config (a subclassed model?), so layertap cannot "
                f"rebuild it as a Keras 3 model: {exc}"
            ) from exc
        return _load_h5(h5, path, custom_objects, safe_mode)


def load_model(
    path: str | os.PathLike[str],
    *,
    custom_objects: Mapping[str, Any] | None = None,
    safe_mode: bool = True,
) -> keras.Model:
    """Load a model file, SavedModel or keras-hub preset as a Keras 3 model, in safe mode.

    Reads ``.keras`` archives, ``.h5`` files written by Keras 3 or by tf.keras 2 (known
    config differences repaired on a temporary copy; the file itself is never written),
    SavedModel directories (through the optional ``tf_keras`` package:
    ``pip install "layertap[legacy]"``) and keras-hub presets, whose backbone is
    returned, or for a task preset directory (``task.json``, written by e.g.
    ``BertTextClassifier.save_to_preset``) the task, its backbone nested in it
    (``pip install "layertap[hub]"``; a handle is downloaded, so it needs the network;
    :func:`layertap.graph.preset.load_preset` gives its preprocessor too).
    The model is never compiled.

    Args:
        path: the model file, a SavedModel directory, or a keras-hub preset directory
            or handle (``kaggle://...``, ``hf://...``, a built-in preset name).
        custom_objects: ``{class name: class}`` for custom layers the file uses (see
            :func:`load_custom_objects` to collect them from a file or module).
        safe_mode: keep the refusal to run code stored in the file (``Lambda``
            layers). Turn it off only for files you trust. A preset's config is
            rebuilt by keras-hub, always in Keras's safe mode: this flag does not
            change it.

    Raises:
        ModelLoadError: the path is missing, not a model, truncated, needs a custom
            class that was not given (the message names it), holds a layer Keras 3
            cannot rebuild (the message names the layer and the cause), or holds code
            refused by safe mode.
        MissingDependencyError: a preset without keras-hub installed, or a SavedModel
            without tf_keras.

    Example:
        >>> import keras, tempfile, os
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> f = os.path.join(tempfile.mkdtemp(), "m.keras"); m.save(f)
        >>> load_model(f).output_shape
        (None, 2)
    """
    if is_preset(path):
        return load_preset_model(path, custom_objects=custom_objects)
    path = Path(path)
    kind = _check_path(path)
    if kind == "savedmodel":
        return _load_savedmodel(path, custom_objects, safe_mode)
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
    if kind == "h5":
        return _load_h5(path, path, custom_objects, safe_mode)
    return _keras_load(path, path, custom_objects, safe_mode)


# --- custom objects ------------------------------------------------------------------------

_KERAS_BASES: tuple[type, ...] = (
    keras.layers.Layer,
    keras.initializers.Initializer,
    keras.regularizers.Regularizer,
    keras.constraints.Constraint,
    keras.losses.Loss,
    keras.metrics.Metric,
    keras.optimizers.schedules.LearningRateSchedule,
)


def _import_spec(spec: str) -> tuple[Any, str | None]:
    """Import the module a spec names; return it and the attribute part, if any."""
    if spec.endswith(".py"):
        file = Path(spec)
        if not file.is_file():
            raise ModelLoadError(f"custom objects file {spec!r} does not exist")
        name = "layertap_custom_objects_" + re.sub(r"\W", "_", file.stem)
        module_spec = importlib.util.spec_from_file_location(name, file)
        if module_spec is None or module_spec.loader is None:
            raise ModelLoadError(f"custom objects file {spec!r} cannot be imported")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up here
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's code can raise anything
            del sys.modules[name]
            raise ModelLoadError(
                f"custom objects file {spec!r} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        return module, None
    module_name, _, attr = spec.partition(":")
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module_name) or (
        attr and not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", attr)
    ):
        raise ModelLoadError(f"custom objects spec {spec!r} is not PATH.py, module or module:attr")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own errors
        raise ModelLoadError(
            f"custom objects spec {spec!r}: cannot import module {module_name!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return module, attr or None


def _name_of(obj: Any) -> str | None:
    name = getattr(obj, "__name__", None)
    return name if isinstance(name, str) else None


def _with_registered_names(objects: dict[str, Any]) -> dict[str, Any]:
    """Add the ``"package>Name"`` key of every registered object (Keras looks up both)."""
    out = dict(objects)
    for obj in objects.values():
        registered = keras.saving.get_registered_name(obj)
        if registered not in out:
            out[registered] = obj
    return out


def load_custom_objects(spec: str) -> dict[str, Any]:
    """Import the custom classes and functions a model needs, for ``custom_objects=``.

    ``spec`` is one of:

    * ``PATH.py``: a Python file, imported as a module;
    * ``module``: an importable module;
    * ``module:attr``: an attribute of one, which may be a dict ``{name: object}``, a
      list or tuple of classes/functions, or a single class or function.

    From a whole module (the first two forms), the result holds the classes defined in
    it that derive from a Keras base (layers and models, initializers, regularizers,
    constraints, losses, metrics, schedules) and the functions defined in it that are
    registered with ``keras.saving.register_keras_serializable``. Registered objects are
    listed under their registered name (``"package>Name"``) as well as their own name.

    Raises:
        ModelLoadError: the spec's syntax is wrong, the file or module cannot be
            imported, the attribute is missing or of another kind, or the module
            defines no Keras objects. The message names the spec.

    Example:
        >>> objs = load_custom_objects("keras.layers:Dense")
        >>> objs["Dense"] is keras.layers.Dense
        True
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"custom objects spec {spec!r} is empty; give PATH.py or module")
    spec = spec.strip()
    module, attr = _import_spec(spec)
    if attr is None:
        found = {
            name: obj
            for name, obj in vars(module).items()
            if not name.startswith("_")
            and getattr(obj, "__module__", None) == module.__name__
            and (
                (inspect.isclass(obj) and issubclass(obj, _KERAS_BASES))
                or (
                    inspect.isfunction(obj)
                    and keras.saving.get_registered_object(keras.saving.get_registered_name(obj))
                    is obj
                )
            )
        }
        if not found:
            raise ModelLoadError(
                f"custom objects spec {spec!r} defines no Keras classes (layers, models, "
                "losses, ...) or registered functions; name a dict or list with "
                "module:attr"
            )
        return _with_registered_names(found)
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise ModelLoadError(
                f"custom objects spec {spec!r}: module {module.__name__!r} has no "
                f"attribute {attr!r}"
            )
        value = getattr(value, part)
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ModelLoadError(
                f"custom objects spec {spec!r}: the dict's keys must be names, got {bad[0]!r}"
            )
        return dict(value)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out: dict[str, Any] = {}
    for item in items:
        name = _name_of(item)
        if name is None or not callable(item):
            raise ModelLoadError(
                f"custom objects spec {spec!r}: {item!r} is not a class or function; "
                "give a dict {name: object}, a list of classes, or one class"
            )
        out[name] = item
    return _with_registered_names(out)
