"""The only place in layertap that touches Keras internals.

Every private attribute, private module (``keras.src``) and global Keras state that
layertap relies on is read or written here, behind a small named function, so a
Keras upgrade that moves one of them is fixed in this module alone. Everything
else in the package uses Keras's public API and these functions.

Each function says what Keras stores there; all were checked against Keras 3.15
(``keras.__version__ == "3.15.1"``), the same on the TensorFlow, JAX and PyTorch
backends.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import keras
from keras.src import backend as _backend
from keras.src.backend.common import global_state as _global_state
from keras.src.models.functional import Functional

__all__ = [
    "Functional",
    "attention_softmax",
    "attention_unfused",
    "build_shapes",
    "call_has_training_arg",
    "compute_output_spec",
    "direct_layers",
    "flatten_layers",
    "history_operation",
    "history_tensor_index",
    "inbound_nodes",
    "inputs_struct",
    "name_scope_stack",
    "nodes_by_depth",
    "patch_call",
    "producing_node",
    "sequential_graph",
    "set_call_has_training_arg",
    "set_name_scope_stack",
    "tracked_layers",
    "unpatch_call",
]

# ``Functional`` is the class of every graph model (``keras.Model(inputs, outputs)``,
# and the graph a built Sequential keeps); Keras 3.15 exports it only from
# ``keras.src.models.functional``.


def sequential_graph(model: Any) -> Functional | None:
    """``Sequential._functional``: the Functional a built Sequential runs, else ``None``.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> isinstance(sequential_graph(m), Functional)
        True
    """
    graph = getattr(model, "_functional", None)
    return graph if isinstance(graph, Functional) else None


def nodes_by_depth(graph: Functional) -> dict[int, list[Any]]:
    """``Function._nodes_by_depth``: ``{depth: [Node]}``, outputs at depth 0, inputs deepest."""
    result: dict[int, list[Any]] = graph._nodes_by_depth
    return result


def inbound_nodes(layer: Any) -> list[Any]:
    """``Operation._inbound_nodes``: one ``Node`` per call of ``layer``, in call order."""
    result: list[Any] = layer._inbound_nodes
    return result


def inputs_struct(model: Any) -> Any:
    """``Function._inputs_struct``: the inputs as the model was built (tensor, list or dict)."""
    return model._inputs_struct


def history_operation(tensor: Any) -> Any:
    """``KerasTensor._keras_history.operation``: the layer (or op) that made ``tensor``."""
    return tensor._keras_history.operation


def history_tensor_index(tensor: Any) -> int:
    """``KerasTensor._keras_history.tensor_index``: which output of its node ``tensor`` is."""
    return int(tensor._keras_history.tensor_index)


def producing_node(tensor: Any) -> Any:
    """``operation._inbound_nodes[node_index]`` of ``tensor._keras_history``: its ``Node``."""
    history = tensor._keras_history
    return inbound_nodes(history.operation)[history.node_index]


def flatten_layers(root: Any, *, include_self: bool) -> list[Any]:
    """``Layer._flatten_layers(recursive=True)``: ``root``'s tracked layers at any depth."""
    return list(root._flatten_layers(include_self=include_self, recursive=True))


def direct_layers(layer: Any) -> list[Any]:
    """``Layer._flatten_layers(recursive=False)``: the layers ``layer`` tracks, in the
    order its attributes were set."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def tracked_layers(layer: Any) -> list[Any]:
    """``Layer._layers``: the layers ``layer`` tracks directly (its attributes), or ``[]``."""
    return list(getattr(layer, "_layers", ()))


def build_shapes(model: Any) -> dict[str, Any]:
    """``Layer._build_shapes_dict``: ``{argument name: shape}`` it was built with, or ``{}``."""
    return dict(getattr(model, "_build_shapes_dict", None) or {})


def call_has_training_arg(layer: Any) -> bool:
    """``Layer._call_has_training_arg``: whether ``Layer.__call__`` passes ``training=``."""
    return bool(getattr(layer, "_call_has_training_arg", False))


def set_call_has_training_arg(layer: Any, value: bool) -> None:
    """Set ``Layer._call_has_training_arg`` (a wrapper passes ``training=`` as its root does)."""
    layer._call_has_training_arg = value


def patch_call(layer: Any, call: Callable[..., Any]) -> None:
    """Make ``layer.call`` be ``call`` on this instance only (``Layer.__call__`` looks it up)."""
    object.__setattr__(layer, "call", call)


def unpatch_call(layer: Any) -> None:
    """Undo :func:`patch_call`: ``layer.call`` is its class's again."""
    del layer.__dict__["call"]


def name_scope_stack() -> list[Any] | None:
    """A copy of the global ``"name_scope_stack"`` (the ``keras.name_scope``\\ s now open)."""
    stack = _global_state.get_global_attribute("name_scope_stack")
    return None if stack is None else list(stack)


def set_name_scope_stack(stack: list[Any] | None) -> None:
    """Put back a global ``"name_scope_stack"`` saved with :func:`name_scope_stack`."""
    _global_state.set_global_attribute("name_scope_stack", stack)


def compute_output_spec(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``keras.src.backend.compute_output_spec``: run ``fn`` symbolically on KerasTensors."""
    return _backend.compute_output_spec(fn, *args, **kwargs)


# Attention layers. Keras's ``MultiHeadAttention`` (and keras-hub's subclasses:
# ``CachedMultiHeadAttention``, Whisper's) computes attention in ``_compute_attention``,
# which calls the fused ``ops.dot_product_attention`` unless it is asked for the
# scores (``return_attention_scores=True``, an argument since Keras 3.11) or has
# dropout; only the unfused path runs the ``_softmax`` sublayer. keras-hub's own
# attention layers (Llama, Mistral, Qwen: ``_softmax``; Gemma: ``softmax``) decide with
# the module function ``fused_attention_op_available()`` (True on JAX and torch), read
# from their ``_compute_attention``'s module globals (Gemma through its
# ``_use_fused_attention_op()``).
_SOFTMAX_ATTRIBUTES = ("_softmax", "softmax")
_FUSED_CHECK = "fused_attention_op_available"


def attention_softmax(layer: Any) -> Any:
    """The ``Softmax`` sublayer that turns ``layer``'s attention logits into
    probabilities, for a layer that computes attention in ``_compute_attention``
    (Keras's ``MultiHeadAttention`` and subclasses, keras-hub's attention layers);
    else ``None``."""
    if not callable(getattr(type(layer), "_compute_attention", None)):
        return None
    for attribute in _SOFTMAX_ATTRIBUTES:
        candidate = getattr(layer, attribute, None)
        if isinstance(candidate, keras.layers.Softmax):
            return candidate
    return None


@contextlib.contextmanager
def _global_replaced(namespace: dict[str, Any], name: str, value: Any) -> Iterator[None]:
    if name not in namespace:
        yield
        return
    saved = namespace[name]
    namespace[name] = value
    try:
        yield
    finally:
        namespace[name] = saved


def _unfused_compute(layer: Any) -> Callable[..., Any]:
    """``layer._compute_attention`` made to take the path that runs its softmax."""
    original = layer._compute_attention  # bound to the instance, from its class
    function = getattr(original, "__func__", original)
    signature = inspect.signature(original)
    takes_flag = "return_attention_scores" in signature.parameters

    def compute(*args: Any, **kwargs: Any) -> Any:
        if takes_flag:
            bound = signature.bind(*args, **kwargs)
            bound.arguments["return_attention_scores"] = True
            args, kwargs = bound.args, bound.kwargs
        flash = getattr(layer, "_flash_attention", None)
        if flash:  # Keras refuses scores with flash attention; the plain path is exact
            layer._flash_attention = False
        try:
            with _global_replaced(function.__globals__, _FUSED_CHECK, lambda: False):
                return original(*args, **kwargs)
        finally:
            if flash:
                layer._flash_attention = flash

    return compute


@contextlib.contextmanager
def attention_unfused(layers: list[Any]) -> Iterator[None]:
    """Inside, each of these attention layers (see :func:`attention_softmax`) computes
    its probabilities with its softmax sublayer instead of a fused op, on this instance
    only: ``_compute_attention`` is replaced on the instance (Keras's: called with
    ``return_attention_scores=True``, which the callers ignore unless they asked;
    keras-hub's: with its module's ``fused_attention_op_available`` answering ``False``
    while it runs). The outputs are the same attention, computed the plain way."""
    patched = []
    try:
        for layer in layers:
            if "_compute_attention" not in layer.__dict__:
                object.__setattr__(layer, "_compute_attention", _unfused_compute(layer))
                patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.__dict__["_compute_attention"]
