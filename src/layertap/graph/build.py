"""Stage 4, build: resolved places -> one multi-output ``keras.Model`` that runs one pass.

The user's graph is replayed node by node on fresh ``keras.Input``s, re-calling the
same layer objects (weights are shared, never copied). Only the nodes the taps need
are replayed, so nothing after the deepest tap runs.

A nested sub-model that holds taps is rebuilt the same way into a pruned
Functional that returns its taps (and its own outputs, when later layers need
them), and that Functional is called in the sub-model's place. Each rebuilt level
keeps the user's layer names, which are unique within their own level, so two
nested copies of one architecture never clash; a sub-model called twice is
rebuilt once per call, each pruned for its own taps.

The user's model is not touched: the replay adds inbound nodes to the layers it
re-calls, but node 0 (what ``layer.output`` reports) and the model's config stay
as they were.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import keras
from keras import tree

from layertap.graph import keras_internals as ki
from layertap.graph.capture import ROOT_OUTPUT, Capture, Event, Probe
from layertap.graph.keras_internals import Functional
from layertap.graph.walk import (
    LayerInfo,
    graph_input_specs,
    graph_nodes,
    inner_graph,
    input_names,
    root_input_candidates,
)

__all__ = ["SCORE_KEY", "build_model", "needed_inputs"]

_OUTPUT_KEY = "__layertap_output_{}"

#: The output key of the model's score (its first output, before a final softmax) in a
#: model built with ``score=True``.
SCORE_KEY = "__layertap_score"


@dataclasses.dataclass(frozen=True)
class _Request:
    """A tensor wanted from one graph level: ``nodes[0]`` lives in that level."""

    key: str
    nodes: tuple[Any, ...]
    output_index: int
    event: Event | None = None
    spec: tuple[tuple[int | None, ...], str] | None = None  # a captured tap's shape, dtype


def _fresh_inputs(graph: Functional, specs: list[Any] | None = None) -> list[Any]:
    """New ``keras.Input``s like ``graph.inputs`` (or ``specs``, sized by ``input_shape``)."""
    return [
        keras.Input(
            batch_shape=(None, *(x if spec is None else spec).shape[1:]),
            dtype=x.dtype,
            sparse=bool(getattr(x, "sparse", False)),
            name=ki.history_operation(x).name,
        )
        for x, spec in zip(graph.inputs, specs or [None] * len(graph.inputs), strict=True)
    ]


def needed_inputs(graph: Functional, places: Mapping[str, LayerInfo]) -> list[int]:
    """Positions in ``graph.inputs`` of the inputs that the taps in ``places`` depend on.

    Example:
        >>> from layertap.graph.walk import walk
        >>> a, b = keras.Input((2,), name="a"), keras.Input((2,), name="b")
        >>> m = keras.Model([a, b], [keras.layers.Dense(1, name="da")(a), b])
        >>> needed_inputs(m, {p.path: p for p in walk(m) if p.path == "da"})
        [0]
    """
    start: list[Any] = []
    for place in places.values():
        node = place.nodes[0]
        start.extend(node.parent_nodes if len(place.nodes) > 1 or place.event else [node])
    needed = _ancestors(start)
    return [i for i, x in enumerate(graph.inputs) if id(ki.producing_node(x)) in needed]


def _ancestors(start: list[Any]) -> set[int]:
    """Ids of the nodes in ``start`` and of every node they depend on."""
    seen: set[int] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(node.parent_nodes)
    return seen


def _unique_name(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _replay(
    graph: Functional, inputs: list[Any], requests: list[_Request], probes: bool = False
) -> dict[str, Any]:
    """Replay the part of ``graph`` that ``requests`` need on ``inputs``; return key -> tensor.

    With ``probes``, each tapped tensor passes through a :class:`Probe` (or a probing
    :class:`Capture`) before later layers use it, so a gradient pass differentiates there.
    """
    direct: dict[int, list[_Request]] = {}
    nested: dict[int, list[_Request]] = {}
    captured: dict[int, list[_Request]] = {}
    for r in requests:
        node = r.nodes[0]
        if len(r.nodes) > 1:
            nested.setdefault(id(node), []).append(dataclasses.replace(r, nodes=r.nodes[1:]))
        elif r.event is not None:
            captured.setdefault(id(node), []).append(r)
        else:
            direct.setdefault(id(node), []).append(r)
    nodes = graph_nodes(graph)
    by_id = {id(n): n for n in nodes}
    output_needed = _ancestors(
        [by_id[i] for i in direct]
        + [p for i in (*nested, *captured) for p in by_id[i].parent_nodes]
    )
    run = [
        n
        for n in nodes
        if not n.is_input and (id(n) in output_needed or id(n) in nested or id(n) in captured)
    ]
    rebuilt = {id(n) for n in run if id(n) in nested and inner_graph(n.operation) is not None}
    # A rebuilt sub-model or a capturing wrapper replaces its original, so it may take
    # its name, unless another call of that layer is replayed as it is.
    as_is = {id(n.operation) for n in run if id(n) not in rebuilt and id(n) not in captured}
    taken = {
        op.name
        for op in graph.operations
        if isinstance(op, keras.layers.InputLayer) or id(op) in as_is
    }
    tensors: dict[int, Any] = {id(x): y for x, y in zip(graph.inputs, inputs, strict=True)}
    results: dict[str, Any] = {}
    for r in [r for i in direct for r in direct[i] if by_id[i].is_input] if probes else []:
        x = r.nodes[0].outputs[r.output_index]  # a tapped input: probed before any use
        probe = Probe(r.key, name=_unique_name(_probe_name(r.key), taken))
        tensors[id(x)] = probe(tensors[id(x)])
    for node in run:
        args, kwargs = node.arguments.fill_in(tensors)
        sub = inner_graph(node.operation)
        if id(node) in captured:
            wanted = captured[id(node)]
            wrapper = Capture(
                node.operation,
                [(r.key, r.event) for r in wanted if r.event is not None],
                specs={r.key: r.spec for r in wanted if r.spec is not None},
                probes=probes,
                name=_unique_name(node.operation.name, taken),
            )
            produced = wrapper(*args, **kwargs)
            for r in wanted:
                results[r.key] = produced[r.key]
            for x, y in zip(node.outputs, tree.flatten(produced[ROOT_OUTPUT]), strict=True):
                tensors[id(x)] = y
        elif id(node) in rebuilt and sub is not None:
            wants_outputs = id(node) in output_needed
            submodel = _rebuild(
                sub,
                nested[id(node)],
                with_outputs=wants_outputs,
                name=_unique_name(node.operation.name, taken),
                probes=probes,
            )
            produced = submodel(*args, **kwargs)
            for r in nested[id(node)]:
                results[r.key] = produced[r.key]
            if wants_outputs:
                for j, x in enumerate(node.outputs):
                    tensors[id(x)] = produced[_OUTPUT_KEY.format(j)]
        else:
            outputs = node.operation(*args, **kwargs)
            for x, y in zip(node.outputs, tree.flatten(outputs), strict=True):
                tensors[id(x)] = y
        for r in direct.get(id(node), []) if probes else []:
            x = node.outputs[r.output_index]
            probe = Probe(r.key, name=_unique_name(_probe_name(r.key), taken))
            tensors[id(x)] = probe(tensors[id(x)])
    for r in requests:
        if len(r.nodes) == 1 and r.event is None:
            results[r.key] = tensors[id(r.nodes[0].outputs[r.output_index])]
    return results


def _rebuild(
    graph: Functional, requests: list[_Request], *, with_outputs: bool, name: str, probes: bool
) -> keras.Model:
    """A pruned Functional over ``graph`` returning the requested taps (and its outputs)."""
    requests = list(requests)
    if with_outputs:
        for j, x in enumerate(graph.outputs):
            index = ki.history_tensor_index(x)
            requests.append(_Request(_OUTPUT_KEY.format(j), (ki.producing_node(x),), index))
    inputs = _fresh_inputs(graph)
    outputs = _replay(graph, inputs, requests, probes)
    return keras.Model(tree.pack_sequence_as(ki.inputs_struct(graph), inputs), outputs, name=name)


def build_model(
    model: Any,
    taps: Mapping[str, LayerInfo],
    *,
    name: str,
    input_shape: Any = None,
    probes: bool = False,
    score: bool = False,
) -> keras.Model:
    """One Functional taking the inputs the taps need and returning ``{key: tap}`` in one pass.

    Inputs that no tap depends on are left out (a dict-input model keeps its keys). A
    model without a graph (its own ``call()``) runs whole, through :class:`Capture`.
    For gradients (``graph/gradients.py``): ``probes`` passes every tap through
    :func:`~layertap.graph.capture.probe`, and ``score`` adds the model's score
    (:func:`score_place`) under :data:`SCORE_KEY`, with every input it needs.

    Example:
        >>> from layertap.graph.walk import walk
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> built = build_model(m, {"d": walk(m)[0]}, name="taps")
        >>> built.output["d"].shape
        (None, 2)
    """
    name = _scope_safe(name)
    graph = inner_graph(model)
    if graph is not None:
        requests = [
            _Request(
                key,
                place.nodes,
                place.output_index or 0,
                place.event,
                (place.output_shape, place.dtype) if place.event is not None else None,
            )
            for key, place in taps.items()
        ]
        head = None
        if score:
            request, head = _score_request(graph)
            requests.append(request)
        specs = None if input_shape is None else graph_input_specs(graph, input_shape)
        inputs = _fresh_inputs(graph, specs)
        outputs = _replay(graph, inputs, requests, probes)
        keep = needed_inputs(graph, taps) if not score else list(range(len(inputs)))
        if head is not None:
            outputs[SCORE_KEY] = head(outputs[SCORE_KEY])
        struct = ki.inputs_struct(graph)
        if isinstance(struct, dict):
            names = input_names(graph)
            model_inputs: Any = {names[i]: inputs[i] for i in keep}
        elif len(graph.inputs) == 1 and len(keep) == 1:
            model_inputs = inputs[0]
        else:
            model_inputs = [inputs[i] for i in keep]
        keys = [*taps, SCORE_KEY] if score else list(taps)
        return keras.Model(model_inputs, {key: outputs[key] for key in keys}, name=name)
    # The inputs the places were traced on: the build's recorded sizes left free where
    # the model's code allowed it (walk.root_input_candidates).
    specs = next((p.root_inputs for p in taps.values() if p.root_inputs is not None), None)
    if specs is None:
        specs = root_input_candidates(model, input_shape)[-1]
    inputs = tree.map_structure(lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype), specs)
    captures = [(key, place.event) for key, place in taps.items() if place.event is not None]
    shapes = {key: (place.output_shape, place.dtype) for key, place in taps.items()}
    produced = Capture(model, captures, specs=shapes, probes=probes, name=_scope_safe(model.name))(
        inputs
    )
    outputs = {key: produced[key] for key in taps}
    if score:
        outputs[SCORE_KEY] = tree.flatten(produced[ROOT_OUTPUT])[0]
    return keras.Model(inputs, outputs, name=name)


def _is_softmax(layer: Any) -> bool:
    if isinstance(layer, keras.layers.Softmax):
        return True
    return isinstance(layer, keras.layers.Activation) and layer.activation is _SOFTMAX


_SOFTMAX = keras.activations.softmax


def _score_request(graph: Functional) -> tuple[_Request, keras.layers.Layer | None]:
    """Where the model's score is: its first output, followed into nested sub-models, or
    the input of a final softmax; and a layer to apply to that tensor (for a ``Dense``
    with a softmax activation, the same ``Dense`` without it), or ``None``."""
    nodes: list[Any] = []
    x = tree.flatten(graph.outputs)[0]
    while True:
        node, index = ki.producing_node(x), ki.history_tensor_index(x)
        sub = None if node.is_input else inner_graph(node.operation)
        if sub is None:
            break
        nodes.append(node)
        x = tree.flatten(sub.outputs)[index]
    layer = node.operation
    dense = isinstance(layer, keras.layers.Dense) and layer.activation is _SOFTMAX
    if not node.is_input and (_is_softmax(layer) or dense):
        before = node.input_tensors[0]
        request = _Request(
            SCORE_KEY,
            (*nodes, ki.producing_node(before)),
            ki.history_tensor_index(before),
        )
        return request, _DenseLogits(layer) if dense else None
    return _Request(SCORE_KEY, (*nodes, node), index), None


class _DenseLogits(keras.layers.Layer):  # type: ignore[misc]
    """A ``Dense`` layer's output before its activation, with its own weights (shared)."""

    def __init__(self, dense: keras.layers.Dense, **kwargs: Any) -> None:
        super().__init__(name=f"{dense.name}_logits", **kwargs)
        self.dense = dense
        self.built = True

    def call(self, x: Any) -> Any:
        y = keras.ops.matmul(keras.ops.cast(x, self.dense.compute_dtype), self.dense.kernel)
        return y + self.dense.bias if self.dense.use_bias else y

    def compute_output_spec(self, x: Any) -> Any:
        return keras.KerasTensor((*x.shape[:-1], self.dense.units), dtype=self.dense.compute_dtype)


def _probe_name(key: str) -> str:
    """A layer name for the probe of tap ``key`` (Keras refuses ``/`` in layer names).

    Example:
        >>> _probe_name("bert_backbone/token_embedding")
        'probe_bert_backbone__token_embedding'
    """
    return "probe_" + _scope_safe(key).replace("/", "__")


def _scope_safe(name: str) -> str:
    """``name``, made valid as a TensorFlow root name scope (no leading ``_`` or ``-``).

    Example:
        >>> _scope_safe("__net_layertap")
        'net_layertap'
    """
    safe = re.sub(r"[^A-Za-z0-9_.\-/>]", "_", name).lstrip("_-/>")
    return safe or "model"
