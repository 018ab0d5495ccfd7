"""Stage 2, graph: walk a Keras graph model into the tree of places that can be tapped.

One walk serves both :func:`list_layers` (what a user sees) and spec resolution
(what :class:`~layertap.Extractor` accepts), so the two always agree.

A *place* is one output of one call of one layer, addressed by a path of layer
names through nested Functional and Sequential sub-models. A segment takes
``@k`` when its layer is called more than once in the graph that holds it, and
the last segment takes ``:j`` when the call returns more than one tensor::

    dense                      a top-level layer
    backbone/block_3_add       a layer inside the nested sub-model "backbone"
    encoder@1/conv             "conv" inside the second call of "encoder"
    split:1                    the second output of the layer "split"
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any

import keras
from keras import tree

from layertap._errors import BadInputError, UnsupportedModelError
from layertap.graph import keras_internals as ki
from layertap.graph.capture import (
    Event,
    TraceFailure,
    has_inner_places,
    layer_attributes,
    layer_paths,
    output_spec,
    scopes_restored,
    trace,
)
from layertap.graph.keras_internals import Functional
from layertap.graph.pathglob import glob_match

__all__ = [
    "LayerInfo",
    "Segment",
    "list_layers",
    "recorded_input_shapes",
    "root_input_candidates",
    "summary",
    "walk",
]


@dataclasses.dataclass(frozen=True)
class Segment:
    """One step of a path: a layer, which of its calls, and how many calls it has there."""

    name: str
    call: int
    calls: int

    def __str__(self) -> str:
        return f"{self.name}@{self.call}" if self.calls > 1 else self.name


@dataclasses.dataclass(frozen=True)
class _Place:
    """What build and resolve need of a place besides what :class:`LayerInfo` shows."""

    layer: Any
    segments: tuple[Segment, ...]
    output_index: int | None
    nodes: tuple[Any, ...]
    event: Event | None = None
    alias: tuple[Segment, ...] | None = None  # the path by attribute names, where it differs
    inputs: Any = None  # a top-level root's symbolic inputs, as its trace was made on


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One tappable place of a model, as :func:`list_layers` reports it.

    Attributes:
        path: the canonical path, the key a list of specs is returned under.
        index: position in the top-level ``model.layers``; ``None`` inside sub-models.
        class_name: the layer's class, e.g. ``"Conv2D"``.
        output_shape: the shape of this output, batch dimension first (``None``).
        dtype: the output's dtype name.
        params: the layer's weight count (a sub-model counts all of its layers).
        depth: nesting depth, 0 for top-level layers.
        is_model: whether this place is a nested sub-model whose layers follow it.
        trace_error: why the places inside this custom layer could not be listed
            (its ``call()`` failed to trace on this backend), else ``None``. The
            layer's own output is tappable either way.
        alias: the path by the attribute names the author's code uses (``block3/...``
            for ``self.block3 = Sequential(...)``, ``blocks/0`` for a list attribute),
            where it differs from ``path``, else ``None``. A spec may use either.

    Read-only, and neither shown nor compared: ``name`` (the layer's own name),
    ``layer`` (the Keras layer object itself), and what layertap itself uses to
    find and build the place (``segments``, ``output_index``, ``nodes``, ``event``).

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> walk(m)[0]  # doctest: +NORMALIZE_WHITESPACE
        LayerInfo(path='d', index=0, class_name='Dense', output_shape=(None, 2),
                  dtype='float32', params=8, depth=0, is_model=False, trace_error=None,
                  alias=None)
        >>> twin = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> walk(twin) == walk(m)  # other layer objects, the same place
        True
    """

    path: str
    index: int | None
    class_name: str
    output_shape: tuple[int | None, ...]
    dtype: str
    params: int
    depth: int
    is_model: bool
    _place: _Place = dataclasses.field(repr=False, compare=False)
    trace_error: str | None = None
    alias: str | None = None

    @property
    def name(self) -> str:
        """The layer's own name (the last path segment without ``@k``)."""
        return self._place.segments[-1].name

    @property
    def layer(self) -> Any:
        """The Keras layer object itself."""
        return self._place.layer

    @property
    def segments(self) -> tuple[Segment, ...]:
        """Internal: the path as segments (name, call, number of calls)."""
        return self._place.segments

    @property
    def output_index(self) -> int | None:
        """Internal: which output of the call (``None`` when it has one)."""
        return self._place.output_index

    @property
    def nodes(self) -> tuple[Any, ...]:
        """Internal: the Keras nodes from the top-level graph down to this call."""
        return self._place.nodes

    @property
    def event(self) -> Event | None:
        """Internal: the captured call or tap inside a custom layer, else ``None``."""
        return self._place.event

    @property
    def root_inputs(self) -> Any:
        """Internal: for a place inside a model without a graph, the symbolic inputs its
        trace was made on (the tap model is built on the same), else ``None``."""
        return self._place.inputs

    def by_alias(self) -> LayerInfo:
        """This place seen by its attribute path (itself when it has no alias).

        Example:
            >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
            >>> walk(m)[0].by_alias().path
            'd'
        """
        if self.alias is None or self._place.alias is None:
            return self
        place = dataclasses.replace(self._place, segments=self._place.alias)
        return dataclasses.replace(self, path=self.alias, _place=place)

    def by_leaf_alias(self) -> LayerInfo:
        """This place by its canonical path with only the last layer's attribute name:
        ``<attention path>/scores`` for an attention layer's softmax sublayer (itself
        when the last names agree).

        Example:
            >>> x = keras.Input((4, 8))
            >>> m = keras.Model(x, keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x))
            >>> [p.by_leaf_alias().path for p in walk(m) if p.class_name == "Softmax"]
            ['mha/scores']
        """
        if self.alias is None or self._place.alias is None:
            return self
        last, leaf = self._place.segments[-1], self._place.alias[-1]
        if leaf.name == last.name:
            return self
        segments = (*self._place.segments[:-1], Segment(leaf.name, last.call, last.calls))
        path = "/".join(str(seg) for seg in segments)
        if self._place.output_index is not None:
            path += f":{self._place.output_index}"
        place = dataclasses.replace(self._place, segments=segments)
        return dataclasses.replace(self, path=path, _place=place)


def inner_graph(layer: Any) -> Functional | None:
    """Return the graph inside ``layer`` when layertap can inline it, else ``None``.

    A plain Functional model or a built Sequential has one; a subclass that
    overrides ``call`` does not, since its graph is not what it runs.

    Example:
        >>> inner_graph(keras.layers.Dense(2)) is None
        True
    """
    if isinstance(layer, keras.Sequential):
        if type(layer).call is keras.Sequential.call:
            return ki.sequential_graph(layer)
        return None
    if isinstance(layer, Functional) and type(layer).call is Functional.call:
        return layer
    return None


def graph_of(model: Any) -> Functional:
    """Return the graph of a top-level model, or raise :class:`UnsupportedModelError`.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> graph_of(m) is ki.sequential_graph(m)
        True
    """
    graph = inner_graph(model)
    if graph is not None:
        return graph
    name = getattr(model, "name", type(model).__name__)
    if isinstance(model, keras.Sequential):
        raise UnsupportedModelError(
            f"Sequential model {name!r} is not built, so it has no graph to tap; "
            "give it an input shape (keras.Input(shape) as its first layer) or call "
            "model.build(input_shape) first"
        )
    if isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"model {name!r} ({type(model).__name__}) defines its own call(), so it "
            "has no Keras graph; layertap taps Functional and Sequential models"
        )
    raise UnsupportedModelError(
        f"expected a keras.Model, got {type(model).__name__}; load one with "
        "layertap.load_model(path)"
    )


def graph_nodes(graph: Functional) -> list[Any]:
    """The nodes of ``graph`` in execution order (inputs first).

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> [n.operation.name for n in graph_nodes(graph_of(m))][-1] == m.layers[-1].name
        True
    """
    by_depth = ki.nodes_by_depth(graph)
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def calls_in(graph: Functional, layer: Any, members: set[int] | None = None) -> list[Any]:
    """The nodes of ``layer`` that belong to ``graph``, in call order.

    ``members`` (ids of the graph's nodes) may be passed in to save recomputing it.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> len(calls_in(graph_of(m), m.layers[0]))
        1
    """
    if members is None:
        members = {id(node) for node in graph_nodes(graph)}
    return [node for node in ki.inbound_nodes(layer) if id(node) in members]


def _count_params(layer: Any) -> int:
    if not isinstance(layer, keras.layers.Layer):
        return 0  # a bare operation in the graph, such as ConvNeXt's `inputs + x`
    try:
        return int(layer.count_params())
    except ValueError:  # an unbuilt layer has no weights yet
        return 0


@dataclasses.dataclass
class _Walk:
    """What one walk accumulates: the places found, and one trace per kind of layer call.

    Transformer blocks repeat one layer class with one config dozens of times, and a
    symbolic trace of a block costs most of a second on some backends; so a trace is
    made once per (class, config, sublayer tree, input specs) and reused, its sublayer
    paths renamed, by every twin of the layer traced first.
    """

    top_index: dict[int, int]
    places: list[LayerInfo] = dataclasses.field(default_factory=list)
    traces: dict[tuple[Any, ...], tuple[Any, list[tuple[Event, Any]]]] = dataclasses.field(
        default_factory=dict
    )
    failures: dict[tuple[Any, ...], TraceFailure] = dataclasses.field(default_factory=dict)

    def trace(self, root: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """:func:`trace`, once per kind of layer and call signature (shapes, dtypes)."""
        key = (_kind(root), _signature((args, kwargs)))
        if key in self.failures:
            raise self.failures[key]
        if key not in self.traces:
            try:
                self.traces[key] = (root, trace(root, args, kwargs))
            except TraceFailure as failure:
                self.failures[key] = failure
                raise
        traced, events = self.traces[key]
        if traced is root:
            return events
        old, new = list(layer_paths(traced).values()), list(layer_paths(root).values())
        rename = dict(zip(old, new, strict=False))
        if len(old) != len(new) or any(e.path not in rename for e, _ in events):
            return trace(root, args, kwargs)  # the trees differ after all: not a twin
        return [(dataclasses.replace(e, path=rename[e.path]), spec) for e, spec in events]


def _kind(layer: Any) -> tuple[Any, ...]:
    """What decides a layer's trace besides its inputs: class, config, sublayer tree.

    Layers whose config cannot be read are their own kind.
    """
    try:
        config = dict(layer.get_config())
        config.pop("name", None)
        text = json.dumps(config, sort_keys=True, default=repr)
    except Exception:  # noqa: BLE001 - any get_config failure: no twin for this layer
        return ("layer", id(layer))
    tree_of = tuple((path.count("/"), type(x).__name__) for x, path in _layers_by_path(layer))
    return (type(layer), text, tree_of)


def _signature(structure: Any) -> tuple[Any, ...]:
    def one(x: Any) -> Any:
        if isinstance(x, keras.KerasTensor):
            return ("tensor", tuple(x.shape), str(x.dtype))
        if x is None or isinstance(x, bool | int | float | str):
            return x
        return ("object", id(x))

    return tuple(one(x) for x in tree.flatten(structure))


def walk(model: Any, *, input_shape: Any = None) -> list[LayerInfo]:
    """Every tappable place of ``model``, in graph order, nested sub-models expanded.

    A model with its own ``call()`` has no graph: its sublayers are found by tracing
    one symbolic call, on ``input_shape`` or on the shape it was built with (see
    :func:`root_input_candidates`: the sizes a build recorded are a hint, left free
    where the model's code allows). For a graph model, ``input_shape`` gives concrete
    input sizes for tracing custom layers whose code needs them.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> [p.path for p in walk(m)]
        ['d']
    """
    is_model = isinstance(model, keras.Model)
    top_index = {id(layer): i for i, layer in enumerate(model.layers)} if is_model else {}
    graph = inner_graph(model)
    if graph is not None:
        state = _Walk(top_index)
        specs = None
        if input_shape is not None:
            inputs = graph_input_specs(graph, input_shape)
            specs = dict(zip((id(x) for x in graph.inputs), inputs, strict=True))
        _walk_graph(graph, (), (), state, specs)
        return state.places
    candidates = root_input_candidates(model, input_shape)
    failures = []
    for inputs in candidates:
        state = _Walk(top_index)
        try:
            _walk_root(model, (inputs,), {}, (), (), state, inputs=inputs)
        except TraceFailure as failure:
            failures.append((inputs, failure))
            continue
        return state.places
    raise _untraceable_root(model, input_shape, failures)


def _untraceable_root(
    model: Any, input_shape: Any, failures: list[tuple[Any, TraceFailure]]
) -> UnsupportedModelError:
    """The error for a model without a graph that traced on none of its candidate inputs."""
    inputs, failure = failures[-1]  # the recorded shape, the most specific candidate
    name = f"{model.name!r} ({type(model).__name__})"
    if input_shape is not None:
        return UnsupportedModelError(
            f"model {name} defines its own call(), and calling it on input_shape="
            f"{input_shape!r} failed ({failure}); pass the shape of one input batch its "
            "call() accepts, with concrete sizes (e.g. (None, 224, 224, 3))"
        )
    shown = _shape_text(inputs)
    return UnsupportedModelError(
        f"model {name} defines its own call(), and calling it on an input of shape {shown} "
        f"(the shape it was built with) failed ({failure}); pass input_shape= with the shape "
        f"of one input batch its call() accepts, e.g. input_shape={shown}"
    )


def _shape_text(inputs: Any) -> str:
    shapes = tree.map_structure(lambda x: tuple(x.shape), inputs)
    return repr(shapes)


def graph_input_specs(graph: Functional, input_shape: Any) -> list[Any]:
    """KerasTensors for ``graph.inputs`` with the sizes in ``input_shape`` (batch left open).

    ``input_shape`` is one shape for a one-input model, a list in input order, or a
    dict keyed by input name.

    Example:
        >>> x = keras.Input((None, 4), name="x")
        >>> m = keras.Model(x, keras.layers.Dense(2)(x))
        >>> graph_input_specs(m, (None, 7, 4))[0].shape
        (None, 7, 4)
    """
    names = input_names(graph)
    if isinstance(input_shape, dict):
        unknown = sorted(set(input_shape) - set(names))
        missing = [n for n in names if n not in input_shape]
        if unknown or missing:
            raise BadInputError(
                f"input_shape keys {sorted(input_shape)!r} do not match the model's inputs "
                f"{names!r} (unknown: {unknown!r}, missing: {missing!r})"
            )
        shapes = [input_shape[n] for n in names]
    elif _is_shape(input_shape) and len(names) == 1:
        shapes = [input_shape]
    elif isinstance(input_shape, list | tuple) and all(_is_shape(s) for s in input_shape):
        shapes = list(input_shape)
    else:
        shapes = []
    if len(shapes) != len(names):
        raise BadInputError(
            f"input_shape {input_shape!r} does not fit the model's inputs {names!r}: give "
            "one shape per input (a tuple for one input, a list, or a dict by name)"
        )
    specs = []
    for name, shape, x in zip(names, shapes, graph.inputs, strict=True):
        want = tuple(x.shape)
        shape = (None, *tuple(shape)[1:])
        fits = len(shape) == len(want) and all(
            w is None or w == d for w, d in zip(want, shape, strict=True)
        )
        if not fits:
            raise BadInputError(
                f"input_shape for input {name!r} is {shape}, but the model takes {want} "
                "(None: any size)"
            )
        specs.append(keras.KerasTensor(shape, dtype=x.dtype))
    return specs


def input_names(graph: Functional) -> list[str]:
    """The names of ``graph``'s inputs, in ``graph.inputs`` order (dict keys for a dict).

    Example:
        >>> a, b = keras.Input((2,), name="a"), keras.Input((2,), name="b")
        >>> input_names(keras.Model({"b": b, "a": a}, keras.layers.Add()([a, b])))
        ['a', 'b']
    """
    struct = ki.inputs_struct(graph)
    if isinstance(struct, dict):
        by_id = {id(x): key for key, x in struct.items()}
        return [by_id.get(id(x), x.name) for x in graph.inputs]
    return [ki.history_operation(x).name for x in graph.inputs]


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple | list) and all(d is None or isinstance(d, int) for d in x)


def _is_layer(x: Any) -> bool:
    return isinstance(x, keras.layers.Layer)


def root_input_candidates(model: Any, input_shape: Any = None) -> list[Any]:
    """Symbolic inputs to trace a model without a graph with, the most general first.

    ``input_shape`` (one batch's shape, a list or a dict of them) is taken as given,
    its batch size left open. Otherwise the shape the model recorded when it was built
    (by a call, or by ``build(input_shape)``; for a model whose own ``build()`` built
    its sublayers by hand, the shape its first sublayer was built with) is a hint: the
    first candidate leaves every size open but the batch's and the channel (feature)
    axis's (the last; the second for ``channels_first`` images), the second is the
    recorded shape itself. The first candidate whose trace succeeds is the model's
    input: a trace that succeeds on ``None`` sizes (or on two different sizes, merged)
    means the code takes any size there. The channel axis stays as recorded, since a
    built layer's symbolic call does not check it (a ``Conv2D`` built on 3 channels
    traces on ``None``), while its weights fix it.

    Raises :class:`UnsupportedModelError` when nothing records a shape (never built,
    or built but never called and nothing gives its input).

    Example:
        >>> net = keras.Sequential([keras.layers.Conv2D(2, 3)])
        >>> net.build((1, 64, 64, 3))  # an eager build records the batch too
        >>> [x.shape for x in root_input_candidates(net)]
        [(None, None, None, 3), (None, 64, 64, 3)]
        >>> [x.shape for x in root_input_candidates(net, (None, 32, 32, 3))]
        [(None, 32, 32, 3)]
    """
    if not isinstance(model, keras.Model):
        graph_of(model)  # raises the error for a non-model
    if input_shape is not None:
        return [_symbolic(model, input_shape)]
    recorded = recorded_input_shapes(model)
    if not recorded:
        raise _unknown_input_error(model)
    candidates: list[Any] = []
    seen: set[str] = set()
    for shape in recorded:
        free = _free_sizes(shape)
        for option in (free, shape) if _runs_at_other_sizes(model, shape) else (shape,):
            key = repr(option)
            if key not in seen:
                seen.add(key)
                candidates.append(_symbolic(model, option))
    return candidates


def _runs_at_other_sizes(model: Any, shape: Any) -> bool:
    """Whether ``model`` runs on ``shape`` with every open size changed (64 -> 96, 5 -> 10).

    A symbolic trace on ``None`` sizes does not prove the code takes any size: a built
    ``Dense`` after a ``Flatten`` traces on ``None``, while its kernel fixes the size.
    Concrete sizes other than the recorded ones do (the backend checks every op's
    shapes): first symbolically, then, where the code does not trace symbolically, on
    a zero batch of one.
    """
    free = _free_sizes(shape)

    def other(recorded: Any, opened: Any) -> Any:
        return tuple(
            d if o is not None or d is None or i == 0 else (d + 32 if d >= 32 else 2 * d)
            for i, (d, o) in enumerate(zip(recorded, opened, strict=True))
        )

    probe = _map_shapes(other, shape, free)
    if repr(probe) == repr(shape):
        return False
    spec = _symbolic(model, probe)
    try:
        with scopes_restored():
            ki.compute_output_spec(lambda x: model(x), spec)
        return True
    except Exception:  # noqa: BLE001 - user code; tried on concrete zeros below
        pass
    try:
        with scopes_restored():
            zeros = tree.map_structure(
                lambda x: keras.ops.zeros((1, *x.shape[1:]), dtype=x.dtype), spec
            )
            model(zeros)
        return True
    except Exception:  # noqa: BLE001 - the code does not take these sizes
        return False


def recorded_input_shapes(model: Any) -> list[Any]:
    """The input shapes a built model recorded, most likely first; ``[]`` when none.

    The model's own build record comes first (one argument: a call, or
    ``build(input_shape)``). A model whose ``build()`` takes no shape, or built its
    sublayers by hand, records none; then the first sublayer (in attribute order) that
    recorded one gives it, looking into nested containers first.

    Example:
        >>> class Net(keras.Model):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv = keras.layers.Conv2D(2, 3)
        ...     def build(self):  # builds its sublayers by hand, never called
        ...         self.conv.build((None, 48, 48, 3))
        ...         self.built = True
        ...     def call(self, x):
        ...         return self.conv(x)
        >>> net = Net()
        >>> net.build()
        >>> recorded_input_shapes(net)
        [(None, 48, 48, 3)]
    """
    own = ki.build_shapes(model)
    if len(own) == 1:
        return [next(iter(own.values()))]
    if own:
        return []  # several arguments: which one is the input is not known
    return _sublayer_build_shapes(model)[:3]


def _sublayer_build_shapes(layer: Any) -> list[Any]:
    """The distinct shapes ``layer``'s direct sublayers were built with, in attribute order."""
    shapes: list[Any] = []
    for child in ki.direct_layers(layer):
        if isinstance(child, keras.layers.InputLayer):
            continue
        first = _first_build_shape(child)
        if first is not None and first not in shapes:
            shapes.append(first)
    return shapes


def _first_build_shape(layer: Any) -> Any:
    """The shape ``layer`` (or, failing that, its first sublayer that has one) was built with."""
    own = ki.build_shapes(layer)
    if len(own) == 1:
        return next(iter(own.values()))
    if own:
        return None
    children = [x for x in ki.direct_layers(layer) if not isinstance(x, keras.layers.InputLayer)]
    return _first_build_shape(children[0]) if children else None


def _map_shapes(fn: Any, shape: Any, *others: Any) -> Any:
    """``fn`` on each shape of ``shape`` (one shape, or a list or dict of them) and ``others``."""
    if _is_shape(shape):
        return fn(shape, *others)
    if isinstance(shape, dict):
        return {k: _map_shapes(fn, v, *(o[k] for o in others)) for k, v in shape.items()}
    return [_map_shapes(fn, v, *(o[i] for o in others)) for i, v in enumerate(shape)]


def _free_sizes(shape: Any) -> Any:
    """``shape`` with every size open (``None``) but the channel axis's.

    The channel axis is the last (or, with ``channels_first`` and 4 or more axes, the
    second). A 2-D shape (batch, features) has nothing else to open.
    """
    if not _is_shape(shape):
        return _map_shapes(_free_sizes, shape)
    rank = len(shape)
    keep = 1 if keras.config.image_data_format() == "channels_first" and rank >= 4 else rank - 1
    return tuple(d if i == keep else None for i, d in enumerate(shape))


def _symbolic(model: Any, input_shape: Any) -> Any:
    def make(shape: Any) -> Any:
        return keras.KerasTensor((None, *tuple(shape)[1:]), dtype=model.compute_dtype)

    if _is_shape(input_shape):
        return make(input_shape)
    return tree.map_shape_structure(make, input_shape)


def _unknown_input_error(model: Any) -> UnsupportedModelError:
    """Why a model without a graph has no input to trace, and what to pass."""
    if isinstance(model, keras.Sequential):
        graph_of(model)  # raises the error for an unbuilt Sequential
    name = f"{getattr(model, 'name', type(model).__name__)!r} ({type(model).__name__})"
    if model.built:
        shapes = _sublayer_build_shapes(model)
        hint = f"input_shape={shapes[0]!r}" if shapes else "input_shape=(None, ...)"
        more = f" (its sublayers were built with {shapes!r})" if len(shapes) > 1 else ""
        return UnsupportedModelError(
            f"model {name} defines its own call() and is built, but was never called, and "
            f"nothing it recorded gives the shape of its input{more}: pass {hint} (the "
            "shape of one input batch; a list or dict of shapes for several inputs)"
        )
    return UnsupportedModelError(
        f"model {name} defines its own call() and has not been built, so its layers are "
        "unknown: call it once on a batch, or pass input_shape=(None, ...) (the shape of "
        "one input batch)"
    )


def _walk_root(
    root: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    prefix: tuple[Segment, ...],
    chain: tuple[Any, ...],
    state: _Walk,
    inputs: Any = None,
) -> None:
    """Add the places captured inside one call of ``root`` (a custom layer or model).

    ``inputs``: for a top-level root, the symbolic inputs of this trace (kept with its
    places, so the tap model is built on the same).
    """
    events = state.trace(root, args, kwargs)
    top_index, places = state.top_index, state.places
    layers = {path: layer for layer, path in _layers_by_path(root)}
    attributes = layer_attributes(root)
    totals: dict[tuple[Any, ...], int] = {}  # calls of one layer or tap within its parent call
    for event, _ in events:
        counter = (event.kind, event.path, event.name, event.calls[:-1])
        totals[counter] = max(totals.get(counter, 0), event.calls[-1] + 1)
    parents = {e.path.rsplit("/", 1)[0] for e, _ in events if "/" in e.path}
    parents |= {e.path for e, _ in events if e.kind == "tap"}
    for event, spec in events:
        names = event.path.split("/") if event.path else []
        if event.kind == "tap":
            names.append(str(event.name))
        segments = []
        for i, name in enumerate(names):
            if event.kind == "tap" and i == len(names) - 1:
                counter = ("tap", event.path, event.name, event.calls[:i])
            else:
                counter = ("call", "/".join(names[: i + 1]), None, event.calls[:i])
            segments.append(Segment(name, event.calls[i], totals.get(counter, 1)))
        layer = layers[event.path]
        if event.kind == "tap":
            class_name, params = "tap", 0
        else:
            class_name, params = type(layer).__name__, _count_params(layer)
        full = (*prefix, *segments)
        path = "/".join(str(seg) for seg in full)
        if event.output is not None:
            path += f":{event.output}"
        by_attribute = _alias_segments(names, segments, event.kind == "tap", layers, attributes)
        alias = (*prefix, *by_attribute)
        alias_path = "/".join(str(seg) for seg in alias)
        if event.output is not None:
            alias_path += f":{event.output}"
        depth = len(full) - 1
        places.append(
            LayerInfo(
                path=path,
                index=top_index.get(id(layer)) if depth == 0 and event.kind == "call" else None,
                class_name=class_name,
                output_shape=tuple(spec.shape),
                dtype=str(spec.dtype),
                params=params,
                depth=depth,
                is_model=event.kind == "call" and event.path in parents,
                _place=_Place(
                    layer,
                    full,
                    event.output,
                    chain,
                    event,
                    alias=None if alias_path == path else alias,
                    inputs=inputs,
                ),
                alias=None if alias_path == path else alias_path,
            )
        )


def _alias_segments(
    names: list[str],
    segments: list[Segment],
    is_tap: bool,
    layers: dict[str, Any],
    attributes: dict[int, str],
) -> list[Segment]:
    """``segments`` (by layer names, below a root) with each layer's attribute name instead.

    A list or dict attribute (``blocks/0``) stands for one layer, so its parts are
    segments of their own, the last carrying the call index.
    """
    alias: list[Segment] = []
    for i, seg in enumerate(segments):
        if is_tap and i == len(segments) - 1:
            alias.append(seg)
            continue
        layer = layers["/".join(names[: i + 1])]
        parts = attributes.get(id(layer), seg.name).split("/")
        alias.extend(Segment(part, 0, 1) for part in parts[:-1])
        alias.append(Segment(parts[-1], seg.call, seg.calls))
    return alias


def _layers_by_path(root: Any) -> list[tuple[Any, str]]:
    by_id = {id(x): x for x in ki.flatten_layers(root, include_self=True)}
    return [(by_id[i], path) for i, path in layer_paths(root).items() if i in by_id]


def _graph_specs(
    graph: Functional, specs: dict[int, Any]
) -> dict[int, tuple[tuple[Any, ...], dict[str, Any]]]:
    """``{id(node): (args, kwargs)}`` with the shapes that follow from ``specs`` (inputs)."""
    tensors = dict(specs)
    calls = {}
    for node in graph_nodes(graph):
        if node.is_input:
            continue
        args, kwargs = node.arguments.fill_in(tensors)
        calls[id(node)] = (args, kwargs)
        outputs = output_spec(node.operation, args, kwargs)
        for x, y in zip(node.outputs, tree.flatten(outputs), strict=True):
            tensors[id(x)] = y
    return calls


def _walk_graph(
    graph: Functional,
    prefix: tuple[Segment, ...],
    chain: tuple[Any, ...],
    state: _Walk,
    specs: dict[int, Any] | None = None,
) -> None:
    """Add the places of ``graph``; ``specs`` maps its inputs to the sizes to trace with."""
    depth = len(prefix)
    members = {id(node) for node in graph_nodes(graph)}
    calls = None if specs is None else _graph_specs(graph, specs)
    for layer in graph.operations:
        if isinstance(layer, keras.layers.InputLayer) and (
            depth > 0 or id(layer) not in state.top_index
        ):
            continue  # an inner input is the outer tensor under another name
        nodes = calls_in(graph, layer, members)
        sub = inner_graph(layer)
        for k, node in enumerate(nodes):
            segments = (*prefix, Segment(layer.name, k, len(nodes)))
            first = len(state.places)
            _add_call(layer, node, segments, chain, state, sub is not None)
            if calls is None or node.is_input:
                args, kwargs = node.arguments.args, node.arguments.kwargs
            else:
                args, kwargs = calls[id(node)]
            if sub is not None:
                inner = None
                if calls is not None:
                    flat = tree.flatten(args)
                    inner = dict(zip((id(x) for x in sub.inputs), flat, strict=False))
                _walk_graph(sub, segments, (*chain, node), state, inner)
            elif has_inner_places(layer):
                try:
                    _walk_root(layer, args, kwargs, segments, (*chain, node), state)
                except TraceFailure as failure:
                    state.places[first:] = [
                        dataclasses.replace(p, trace_error=str(failure))
                        for p in state.places[first:]
                    ]


def _add_call(
    layer: Any,
    node: Any,
    segments: tuple[Segment, ...],
    chain: tuple[Any, ...],
    state: _Walk,
    is_model: bool,
) -> None:
    """Add one place per output of one call of ``layer`` in a graph."""
    depth = len(segments) - 1
    n_out = len(node.outputs)
    path = "/".join(str(s) for s in segments)
    for j, tensor in enumerate(node.outputs):
        state.places.append(
            LayerInfo(
                path=path if n_out == 1 else f"{path}:{j}",
                index=state.top_index.get(id(layer)) if depth == 0 else None,
                class_name=type(layer).__name__,
                output_shape=tuple(tensor.shape),
                dtype=str(tensor.dtype),
                params=_count_params(layer),
                depth=depth,
                is_model=is_model,
                _place=_Place(layer, segments, j if n_out > 1 else None, (*chain, node)),
            )
        )


def list_layers(
    model: Any,
    *,
    pattern: str | None = None,
    max_depth: int | None = None,
    input_shape: Any = None,
) -> list[LayerInfo]:
    """One record per tappable place of ``model``, in graph order, sub-models expanded.

    Every ``path`` listed is a spec that :class:`~layertap.Extractor` accepts.

    Args:
        model: a Functional or Sequential ``keras.Model``.
        pattern: keep only paths matching this glob (see the spec grammar).
        max_depth: keep only places at most this deep (0 = top-level layers).
        input_shape: for a model with its own ``call()`` that has not been built: the
            shape of one input batch (a tuple, or a list/dict of them), e.g. ``(None, 8)``.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> [(p.path, p.index, p.class_name, p.output_shape, p.params) for p in list_layers(m)]
        [('d', 0, 'Dense', (None, 2), 8)]
    """
    places = walk(model, input_shape=input_shape)
    if pattern is not None:
        places = glob_match(pattern, places)
    if max_depth is not None:
        places = [p for p in places if p.depth <= max_depth]
    return places


def _format_shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def summary_lines(places: Sequence[LayerInfo]) -> Iterator[str]:
    """The rows of :func:`summary`, one string per place.

    A custom layer whose insides could not be traced has ``(!)`` after its class,
    and a note under the table says why. Where a place has an attribute path that
    differs from its path (:attr:`LayerInfo.alias`), a last column shows it.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> list(summary_lines(walk(m)))[-1].split()
        ['0', 'd', 'Dense', '(None,', '2)', '8']
    """
    with_alias = any(p.alias is not None for p in places)
    rows = [
        (
            "" if p.index is None else str(p.index),
            "  " * p.depth + (p.path.rsplit("/", 1)[-1] if p.depth else p.path),
            p.class_name + (" (!)" if p.trace_error else ""),
            _format_shape(p.output_shape),
            f"{p.params:,}",
            *([p.alias or ""] if with_alias else []),
        )
        for p in places
    ]
    header: tuple[str, ...] = ("index", "path", "class", "output shape", "params")
    header += ("attribute path",) if with_alias else ()
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        yield "  ".join(
            cell.rjust(w) if i in (0, 4) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
    notes = {p.path.split(":")[0]: p.trace_error for p in places if p.trace_error}
    if notes:
        yield ""
        yield "(!) places inside these layers could not be listed (their call() did not trace):"
        for path, reason in notes.items():
            yield f"    {path}: {reason}"


def summary(model: Any, *, max_depth: int | None = None, input_shape: Any = None) -> str:
    """A readable tree of every tappable place: index, path, class, output shape, params.

    Nested places are indented under their sub-model; the full path of any row is
    its sub-model's path, ``/``, and the row's own segment.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> print(summary(m))
        index  path  class  output shape  params
            0  d     Dense  (None, 2)          8
    """
    places = list_layers(model, max_depth=max_depth, input_shape=input_shape)
    return "\n".join(summary_lines(places))
