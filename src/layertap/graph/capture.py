"""Stage 4b, capture: taps inside code that has no Keras graph.

A custom layer's sublayers, the sublayers of a subclassed model, and tensors a
layer author exposes with :func:`tap` get no graph nodes, so they cannot be
replayed. They are captured instead: for the duration of one call of their
*root* (the custom layer, or the subclassed model), each wanted sublayer's
``call`` is wrapped on the instance (``keras_internals.patch_call``, undone afterwards)
and records its outputs; :func:`tap` records into the same session. The root is
called through :class:`Capture`, a layer that returns the root's outputs and the
captured tensors together, so they never escape the traced function: this works
eagerly, in ``predict`` and with ``jit_compile=True``.

Places inside a root are addressed by the path of layer names down the tracked
layer tree (``gated_block/proj``); the k-th call of a sublayer during one call of
its root takes ``@k``, the j-th of several outputs ``:j``, and an explicit tap
``<layer path>/<tap name>``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

import keras
from keras import tree

from layertap.graph import keras_internals as ki

__all__ = [
    "Capture",
    "Event",
    "Probe",
    "Probing",
    "SCORES",
    "TraceFailure",
    "layer_attributes",
    "layer_paths",
    "output_spec",
    "probe",
    "probing",
    "scopes_restored",
    "tap",
    "trace",
]

_ROOT_OUTPUT = "__layertap_root_output"

#: The attribute-path name of an attention layer's probabilities: ``<attention>/scores``
#: is the place ``<attention>/<its softmax sublayer>`` (``softmax_3``, auto-numbered).
SCORES = "scores"


@dataclasses.dataclass(frozen=True)
class Event:
    """One captured place: a sublayer call or an explicit tap, relative to its root.

    Attributes:
        path: the sublayer's path of names below the root (``""`` is the root).
        kind: ``"call"`` for a sublayer's output, ``"tap"`` for :func:`tap`.
        name: the tap's name (``kind == "tap"``), else ``None``.
        calls: one call index per path segment (and, for a tap, one more for the
            tap itself): segment i's layer was in its k-th call (0-based) within
            the call of segment i - 1 (or of the root).
        output: which output of that call (``None`` when the call has one output).
    """

    path: str
    kind: str
    name: str | None
    calls: tuple[int, ...]
    output: int | None

    @property
    def key(self) -> str:
        """A string key unique within one root call."""
        calls = ",".join(str(k) for k in self.calls)
        return f"{self.kind}|{self.path}|{self.name}|{calls}|{self.output}"


class _Session:
    """What one root call records: wanted sublayer calls and taps, in call order."""

    def __init__(
        self,
        paths: dict[int, str],
        wanted: set[str] | None,
        probes: Mapping[str, str] | None = None,
    ) -> None:
        self.paths = paths
        self.wanted = wanted  # None: record everything (tracing for list_layers)
        self.probes = probes or {}  # event key -> tap key, for a gradient pass (probe())
        self.counts: dict[tuple[Any, ...], int] = {}
        self.stack: list[tuple[str, tuple[int, ...]]] = []  # (path, calls) being run
        self.order: list[list[Event]] = []
        self.values: dict[str, Any] = {}

    def reset(self) -> None:
        self.counts.clear()
        self.stack.clear()
        self.order.clear()
        self.values.clear()

    def _calls_of(self, path: str) -> tuple[int, ...]:
        """Call indices of ``path``'s ancestors, from the calls now running (0 if none)."""
        parts = path.split("/") if path else []
        running = dict(self.stack)
        calls: list[int] = []
        for i in range(len(parts) - 1):
            prefix = "/".join(parts[: i + 1])
            outer = running.get(prefix)
            calls = list(outer) if outer is not None else [*calls, 0]
        return tuple(calls)

    def _next(self, counter: tuple[Any, ...]) -> int:
        k = self.counts.get(counter, 0)
        self.counts[counter] = k + 1
        return k

    def start_call(self, path: str) -> tuple[tuple[int, ...], int]:
        """Enter a sublayer call: its call indices and its slot in the call order."""
        outer = self._calls_of(path)
        calls = (*outer, self._next(("call", path, outer)))
        self.stack.append((path, calls))
        self.order.append([])
        return calls, len(self.order) - 1

    def end_call(self, path: str, calls: tuple[int, ...], slot: int, value: Any) -> Any:
        """Record a sublayer's outputs; return them (probed, in a gradient pass)."""
        self.stack.pop()
        return self._record(self.order[slot], Event(path, "call", None, calls, None), value)

    def record_tap(self, path: str, name: str, value: Any) -> Any:
        outer = dict(self.stack).get(path) if path else ()
        if outer is None:  # tapped from a layer whose call is not being tracked
            outer = (*self._calls_of(path), 0)
        calls = (*outer, self._next(("tap", path, name, outer)))
        self.order.append([])
        return self._record(self.order[-1], Event(path, "tap", name, calls, None), value)

    def _record(self, slot: list[Event], event: Event, value: Any) -> Any:
        flat = tree.flatten(value)
        changed = False
        for j, x in enumerate(flat):
            one = dataclasses.replace(event, output=j if len(flat) > 1 else None)
            if self.wanted is None or one.key in self.wanted:
                if one.key in self.probes:
                    flat[j] = probe(self.probes[one.key], x)
                    changed = True
                slot.append(one)
                self.values[one.key] = flat[j]
        return tree.pack_sequence_as(value, flat) if changed else value

    def events(self) -> list[Event]:
        return [event for slot in self.order for event in slot]


_SESSIONS: contextvars.ContextVar[tuple[_Session, ...]] = contextvars.ContextVar(
    "layertap_sessions", default=()
)


@dataclasses.dataclass
class Probing:
    """One gradient pass: what :func:`probe` does at each tap, and what it saw there.

    Attributes:
        deltas: ``{tap key: tensor}`` added to the tap's value (zeros whose gradient
            is the tap's gradient: how JAX differentiates at an inner tensor), or
            ``None``.
        seen: ``{tap key: tensor}``, the value each tap passed on downstream (what
            TensorFlow's tape and torch's autograd differentiate at).
        scales: ``{tap key: factor}`` the tap's value is multiplied by before it is
            passed on (the rest of the model runs from the scaled value: layer
            integrated gradients), or ``None``.
        masks: ``{tap key: tensor}``, the Keras mask that came with a tap's value
            (``Embedding(mask_zero=True)`` and the layers after it), where one did.
    """

    deltas: Mapping[str, Any] | None = None
    seen: dict[str, Any] = dataclasses.field(default_factory=dict)
    scales: Mapping[str, Any] | None = None
    masks: dict[str, Any] = dataclasses.field(default_factory=dict)


_PROBING: contextvars.ContextVar[Probing | None] = contextvars.ContextVar(
    "layertap_probing", default=None
)


@contextlib.contextmanager
def probing(
    deltas: Mapping[str, Any] | None = None, scales: Mapping[str, Any] | None = None
) -> Iterator[Probing]:
    """Run a gradient model's forward pass with its probes live (see :func:`probe`).

    ``scales`` multiplies taps' values for this pass (``{key: factor}``), ``deltas``
    is added after the scaling.

    Example:
        >>> with probing() as p:
        ...     y = probe("h", 3.0)
        >>> y, p.seen
        (3.0, {'h': 3.0})
        >>> with probing(scales={"h": 0.5}) as p:
        ...     y = probe("h", keras.ops.convert_to_tensor(3.0))
        >>> float(keras.ops.convert_to_numpy(y))
        1.5
    """
    state = Probing(deltas, scales=scales)
    token = _PROBING.set(state)
    try:
        yield state
    finally:
        _PROBING.reset(token)


def probe(key: str, value: Any, mask: Any = None) -> Any:
    """``value`` at tap ``key``: passed on as it is, except in a gradient pass, where
    it is scaled (by the pass's factor for ``key``, if any), its perturbation is added,
    and the value passed on is recorded, with its Keras ``mask`` when it has one.

    Example:
        >>> probe("h", 2.0)  # no gradient pass: unchanged, nothing recorded
        2.0
        >>> with probing(deltas={"h": 0.5}) as p:
        ...     y = probe("h", keras.ops.convert_to_tensor(2.0))
        >>> float(keras.ops.convert_to_numpy(y)), sorted(p.seen)
        (2.5, ['h'])
    """
    state = _PROBING.get()
    if state is None:
        return value
    if state.scales is not None and key in state.scales:
        value = keras.ops.multiply(value, keras.ops.cast(state.scales[key], value.dtype))
    if state.deltas is not None and key in state.deltas:
        value = keras.ops.add(value, keras.ops.cast(state.deltas[key], value.dtype))
    state.seen[key] = value
    if mask is not None:
        state.masks[key] = mask
    return value


@keras.saving.register_keras_serializable(package="layertap")
class Probe(keras.layers.Layer):  # type: ignore[misc]
    """An identity layer at a graph tap: :func:`probe` for the tap ``key``.

    A Keras mask on its input passes through (and is recorded in a gradient pass).

    Example:
        >>> import numpy as np
        >>> with probing() as p:
        ...     y = Probe("h")(np.ones((1, 2), "float32"))
        >>> sorted(p.seen), keras.ops.convert_to_numpy(y).tolist()
        (['h'], [[1.0, 1.0]])
    """

    def __init__(self, key: str, **kwargs: Any) -> None:
        super().__init__(autocast=False, **kwargs)
        self.key = key
        self.built = True
        self.supports_masking = True

    def call(self, x: Any, mask: Any = None) -> Any:
        return probe(self.key, x, mask)

    def compute_output_spec(self, x: Any, mask: Any = None) -> Any:
        return keras.KerasTensor(x.shape, dtype=x.dtype, sparse=bool(getattr(x, "sparse", False)))

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config["key"] = self.key
        return config


def tap(layer: Any, name: str, value: Any) -> Any:
    """Expose an internal tensor of ``layer`` as the place ``"<layer path>/<name>"``.

    Call it inside a layer's ``call()``; it returns ``value`` unchanged and costs
    nothing when no extraction is running.

    Example:
        >>> import keras, numpy as np, layertap
        >>> class Gate(keras.layers.Layer):
        ...     def call(self, x):
        ...         g = layertap.tap(self, "gate", keras.ops.sigmoid(x))
        ...         return x * g
        >>> x = keras.Input((3,), name="x"); m = keras.Model(x, Gate(name="g")(x))
        >>> [p.path for p in layertap.list_layers(m)]
        ['x', 'g', 'g/gate']
    """
    sessions = _SESSIONS.get()
    for session in sessions:
        path = session.paths.get(id(layer))
        if path is not None:
            value = session.record_tap(path, name, value)
    return value


def layer_paths(root: Any) -> dict[int, str]:
    """``{id(layer): path}`` for ``root`` (``""``) and every layer it tracks, by name.

    Example:
        >>> class Block(keras.layers.Layer):
        ...     def __init__(self, **kw):
        ...         super().__init__(**kw)
        ...         self.proj = keras.layers.Dense(2, name="proj")
        ...     def call(self, x):
        ...         return self.proj(x)
        >>> b = Block()
        >>> sorted(layer_paths(b).values())
        ['', 'proj']
    """
    return {layer_id: path for layer_id, path, _ in _layer_tree(root)}


def layer_attributes(root: Any) -> dict[int, str]:
    """``{id(layer): how its parent holds it}`` for every layer :func:`layer_paths` lists.

    That is the attribute name the parent assigned it to (``fc6_1``), ``name/i`` for the
    i-th layer of a list attribute and ``name/key`` for a dict attribute, or, for a
    layer its parent holds in no public attribute (a Sequential's layers, Keras's own
    private sublayers), the layer's name. Joined down the tree, these are the paths by
    which the author's code reaches each layer (``self.blocks[0].proj``: ``blocks/0/proj``).

    Example:
        >>> class Net(keras.layers.Layer):
        ...     def __init__(self, **kw):
        ...         super().__init__(**kw)
        ...         self.fc6_1 = keras.layers.Dense(2, name="fc6-1")
        ...         self.blocks = [keras.layers.Dense(2, name="d0")]
        ...     def call(self, x):
        ...         return self.fc6_1(self.blocks[0](x))
        >>> net = Net()
        >>> sorted(layer_attributes(net).values())
        ['', 'blocks/0', 'fc6_1']
    """
    return {layer_id: attribute for layer_id, _, attribute in _layer_tree(root)}


_ATTRIBUTE_PART = re.compile(r"^[^@:/*?\[\]]+$")


def _attribute_names(layer: Any) -> dict[int, str]:
    """``{id(sublayer): attribute path}`` for the layers ``layer`` holds in public attributes."""
    names: dict[int, str] = {}
    items = list(vars(layer).items())
    if callable(getattr(layer, "named_children", None)):  # torch: sublayers are in _modules
        items += list(layer.named_children())
    softmax = ki.attention_softmax(layer)
    if softmax is not None:  # its probabilities, a stable name for an auto-numbered layer
        names[id(softmax)] = SCORES
    for key, value in items:
        if key.startswith("_"):
            continue
        if isinstance(value, keras.layers.Layer):
            names.setdefault(id(value), key)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, keras.layers.Layer):
                    names.setdefault(id(item), f"{key}/{i}")
        elif isinstance(value, Mapping):
            for k, item in value.items():
                if isinstance(item, keras.layers.Layer) and _ATTRIBUTE_PART.match(str(k)):
                    names.setdefault(id(item), f"{key}/{k}")
    return names


def _layer_tree(root: Any) -> list[tuple[int, str, str]]:
    """``(id, path by names, attribute)`` for ``root`` and its tracked layers, breadth first."""
    found = [(id(root), "", "")]
    seen = {id(root)}
    queue = [(root, "")]
    while queue:
        layer, prefix = queue.pop(0)
        attributes = _attribute_names(layer)
        for child in ki.tracked_layers(layer):
            if id(child) in seen or isinstance(child, keras.layers.InputLayer):
                continue
            path = f"{prefix}/{child.name}" if prefix else child.name
            seen.add(id(child))
            found.append((id(child), path, attributes.get(id(child), child.name)))
            queue.append((child, path))
    return found


@contextlib.contextmanager
def _intercept(root: Any, session: _Session, targets: set[str] | None) -> Iterator[None]:
    """Wrap ``call`` of the sublayers of ``root`` at ``targets`` and their ancestors.

    All sublayers are wrapped when ``targets`` is None.
    """
    if targets is not None:
        targets = {
            "/".join(t.split("/")[: i + 1]) for t in targets for i in range(t.count("/") + 1)
        }
    layers = {id(x): x for x in ki.flatten_layers(root, include_self=False)}
    wrapped = []
    for layer_id, path in session.paths.items():
        layer = layers.get(layer_id)
        if layer is None or (targets is not None and path not in targets):
            continue
        original = layer.call

        def call(*args: Any, __original: Any = original, __path: str = path, **kwargs: Any) -> Any:
            calls, slot = session.start_call(__path)
            outputs = __original(*args, **kwargs)
            return session.end_call(__path, calls, slot, outputs)

        ki.patch_call(layer, functools.wraps(original)(call))
        wrapped.append(layer)
    unfused = [
        layer for layer in [root, *layers.values()] if _scores_wanted(layer, session.paths, targets)
    ]
    token = _SESSIONS.set((*_SESSIONS.get(), session))
    try:
        with ki.attention_unfused(unfused):
            yield
    finally:
        _SESSIONS.reset(token)
        for layer in wrapped:
            ki.unpatch_call(layer)


def _scores_wanted(layer: Any, paths: Mapping[int, str], targets: set[str] | None) -> bool:
    """Whether ``layer`` is an attention layer whose probabilities this call records
    (every one when tracing, ``targets is None``): it must then run unfused."""
    softmax = ki.attention_softmax(layer)
    if softmax is None or id(softmax) not in paths:
        return False
    return targets is None or paths[id(softmax)] in targets


def has_inner_places(layer: Any) -> bool:
    """Whether ``layer`` may hold places: it tracks sublayers, or it is user code.

    Example:
        >>> has_inner_places(keras.layers.Dense(2))
        False
    """
    if any(not isinstance(x, keras.layers.InputLayer) for x in ki.tracked_layers(layer)):
        return True
    return not type(layer).__module__.startswith("keras.")


class TraceFailure(Exception):
    """A root's ``call`` could not be traced, symbolically or on small concrete inputs."""


# Sizes tried for the unknown (``None``) dimensions when a symbolic trace fails:
# each pair runs the call twice, and output dimensions that differ between the
# two runs are unknown (``None``) again. Small first: they are cheap, and they fit
# tables sliced by sequence length (position embeddings) as well as images.
_FILLS = ((4, 5), (16, 17), (64, 65))


def _dense(x: Any) -> Any:
    """A dense KerasTensor with ``x``'s shape and dtype; anything else unchanged."""
    if isinstance(x, keras.KerasTensor) and (x.sparse or x.ragged):
        return keras.KerasTensor(x.shape, dtype=x.dtype)
    return x


def _brief(error: BaseException) -> str:
    """The first line of ``error`` that says something (Keras wraps and colours them)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = next((line for line in lines if not line.startswith("Exception encountered")), "")
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


@contextlib.contextmanager
def scopes_restored() -> Iterator[None]:
    """Put Keras's name-scope stack back as it was, even when a trace fails inside one.

    A call that fails while TensorFlow refuses a scope name (``'_x' is not a valid root
    scope name``) leaves Keras's scopes pushed, and every variable created afterwards
    would get their prefix in its path.
    """
    saved = ki.name_scope_stack()
    try:
        yield
    finally:
        ki.set_name_scope_stack(saved)


def _record_all(root: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Session:
    session = _Session(layer_paths(root), wanted=None)
    with _intercept(root, session, targets=None):
        root(*args, **kwargs)
    return session


def _trace_symbolic(
    root: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[tuple[Event, Any]]:
    if not all(x.built for x in ki.flatten_layers(root, include_self=True)):
        # Build first, outside the trace: a build may call sublayers again.
        ki.compute_output_spec(lambda *a, **k: root(*a, **k), *args, **kwargs)
    sessions: list[_Session] = []

    def run(*a: Any, **k: Any) -> dict[str, Any]:
        sessions.append(_record_all(root, a, k))
        return dict(sessions[-1].values)

    specs = ki.compute_output_spec(run, *args, **kwargs)
    return [(event, specs[event.key]) for event in sessions[-1].events()]


def _run_filled(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], fills: tuple[int, int]
) -> list[Any]:
    """Run ``fn`` twice on zeros: unknown sizes are (1, ``fills[0]``), then (2, ``fills[1]``)."""
    results = []
    for batch, size in zip((1, 2), fills, strict=True):

        def concrete(x: Any, batch: int = batch, size: int = size) -> Any:
            if not isinstance(x, keras.KerasTensor):
                return x
            shape = [(batch if i == 0 else size) if d is None else d for i, d in enumerate(x.shape)]
            return keras.ops.zeros(shape, dtype=x.dtype)

        a, k = tree.map_structure(concrete, (args, kwargs))
        results.append(fn(*a, **k))
    return results


def _merged_spec(x: Any, y: Any) -> Any:
    """A KerasTensor for two runs' values: sizes that differ between them are ``None``."""
    if len(x.shape) != len(y.shape):
        return None
    shape = tuple(
        int(p) if int(p) == int(q) else None for p, q in zip(x.shape, y.shape, strict=True)
    )
    return keras.KerasTensor(shape, dtype=keras.backend.standardize_dtype(x.dtype))


def _trace_concrete(
    root: Any, args: tuple[Any, ...], kwargs: dict[str, Any], fills: tuple[int, int]
) -> list[tuple[Event, Any]]:
    """Record every place of ``root`` on two concrete runs; merge the shapes."""
    first, second = _run_filled(lambda *a, **k: _record_all(root, a, k), args, kwargs, fills)
    traced = []
    for event in first.events():
        other = second.values.get(event.key)
        spec = None if other is None else _merged_spec(first.values[event.key], other)
        if spec is not None:  # else the call took another path at the other size
            traced.append((event, spec))
    return traced


def output_spec(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``layer.compute_output_spec``, or, where that fails, the merged shapes of concrete runs.

    Example:
        >>> output_spec(keras.layers.Dense(2), (keras.KerasTensor((None, 3)),), {}).shape
        (None, 2)
    """
    try:
        with scopes_restored():
            return layer.compute_output_spec(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - user code; retried on concrete inputs below
        failure = error
    args, kwargs = tree.map_structure(_dense, (tuple(args), dict(kwargs)))
    for fills in _FILLS:
        try:
            with scopes_restored():
                first, second = _run_filled(layer, args, kwargs, fills)
            return tree.map_structure(_merged_spec, first, second)
        except Exception:  # noqa: BLE001, S112 - the next, larger sizes may work
            continue
    raise failure


def trace(root: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[Event, Any]]:
    """Call ``root`` on the specs of one call; return every captured place and its spec.

    The specs are the graph's own (``args``/``kwargs`` of that call, made dense). A
    symbolic trace comes first; when the backend cannot trace the code symbolically
    (JAX's symbolic sizes and torch's placeholder size 83 break code that slices a
    table by sequence length), the call runs on small zero inputs instead, with the
    unknown sizes filled in. When both fail, :class:`TraceFailure` says why.

    Example:
        >>> class Block(keras.layers.Layer):
        ...     def __init__(self, **kw):
        ...         super().__init__(**kw)
        ...         self.proj = keras.layers.Dense(2, name="proj")
        ...     def call(self, x):
        ...         return self.proj(self.proj(x))
        >>> block = Block()
        >>> _ = block(keras.ops.ones((1, 2)))  # built, as in a loaded model
        >>> [(e.path, e.calls, s.shape) for e, s in trace(block, (keras.Input((2,)),), {})]
        [('proj', (0,), (None, 2)), ('proj', (1,), (None, 2))]
    """
    args, kwargs = tree.map_structure(_dense, (tuple(args), dict(kwargs)))
    failures = []
    try:
        with scopes_restored():
            return _trace_symbolic(root, args, kwargs)
    except Exception as error:  # noqa: BLE001 - any failure of user code; reported below
        failures.append(f"symbolic trace: {_brief(error)}")
    specs = [x for x in tree.flatten((args, kwargs)) if isinstance(x, keras.KerasTensor)]
    if any(d is None for x in specs for d in x.shape):
        for fills in _FILLS:
            try:
                with scopes_restored():
                    return _trace_concrete(root, args, kwargs, fills)
            except Exception as error:  # noqa: BLE001
                failures.append(f"run with unknown sizes = {fills[0]}: {_brief(error)}")
    raise TraceFailure("; ".join(failures))


@keras.saving.register_keras_serializable(package="layertap")
class Capture(keras.layers.Layer):  # type: ignore[misc]
    """Call ``layer`` and return ``{key: captured tensor}`` plus its own outputs.

    Args:
        layer: the root: a custom layer or a subclassed model.
        captures: ``(key, event)`` pairs, events as :func:`trace` reports them.
        specs: ``{key: (shape, dtype)}`` of the captures, as the discovery trace found
            them. With them, a symbolic call never re-traces the root (which may not
            trace symbolically on this backend); without, it does.
        probes: pass each capture through :func:`probe` under its key, so a gradient
            pass differentiates at it (the root's code then sees the probed value).

    Example:
        >>> class Block(keras.layers.Layer):
        ...     def __init__(self, **kw):
        ...         super().__init__(**kw)
        ...         self.proj = keras.layers.Dense(2, name="proj")
        ...     def call(self, x):
        ...         return self.proj(x) * 2.0
        >>> import numpy as np
        >>> block = Block()
        >>> _ = block(np.ones((1, 2), "float32"))  # built, as in a loaded model
        >>> ((event, _),) = trace(block, (keras.Input((2,)),), {})
        >>> out = Capture(block, [("p", event)])(np.ones((1, 2), "float32"))
        >>> sorted(out)
        ['__layertap_root_output', 'p']
    """

    def __init__(
        self,
        layer: Any,
        captures: list[tuple[str, Event]],
        specs: Mapping[str, tuple[tuple[int | None, ...], str]] | None = None,
        probes: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.layer = layer
        self._captures = tuple(captures)
        self._probes = probes
        self._specs = None if specs is None else {k: (tuple(s), d) for k, (s, d) in specs.items()}
        # Keras passes ``training=`` to this wrapper exactly when it would to the root.
        self._passes_training = ki.call_has_training_arg(layer)
        ki.set_call_has_training_arg(self, self._passes_training)
        # Worked out once: on torch, call() runs for every batch, not only at a trace.
        self._paths = tuple(layer_paths(layer).items())
        self._wanted = frozenset(event.key for _, event in self._captures)
        self._targets = frozenset(event.path for _, event in self._captures if event.path)
        self.built = True

    def compute_output_spec(self, *args: Any, training: Any = None, **kwargs: Any) -> Any:
        if self._specs is None:
            return super().compute_output_spec(*args, training=training, **kwargs)
        if training is not None and self._passes_training:
            kwargs["training"] = training
        result = {
            key: keras.KerasTensor(self._specs[key][0], dtype=self._specs[key][1])
            for key, _ in self._captures
        }
        result[_ROOT_OUTPUT] = output_spec(self.layer, args, kwargs)
        return result

    def call(self, *args: Any, training: Any = None, **kwargs: Any) -> dict[str, Any]:
        if training is not None and self._passes_training:
            kwargs["training"] = training
        probes = {event.key: key for key, event in self._captures} if self._probes else None
        session = _Session(dict(self._paths), set(self._wanted), probes)
        with _intercept(self.layer, session, set(self._targets)):
            outputs = self.layer(*args, **kwargs)
        missing = [key for key, event in self._captures if event.key not in session.values]
        if missing:
            raise RuntimeError(
                f"layer {self.layer.name!r} did not reach the tapped places {missing!r} in "
                "this call (its call() takes another branch than when it was traced)"
            )
        result = {key: session.values[event.key] for key, event in self._captures}
        result[_ROOT_OUTPUT] = outputs
        return result

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config["layer"] = keras.saving.serialize_keras_object(self.layer)
        config["captures"] = [[key, dataclasses.asdict(event)] for key, event in self._captures]
        config["specs"] = (
            None
            if self._specs is None
            else {k: [list(shape), dtype] for k, (shape, dtype) in self._specs.items()}
        )
        config["probes"] = self._probes
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Capture:
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"))
        captures = [(key, Event(**event)) for key, event in config.pop("captures")]
        return cls(layer, captures, **config)


ROOT_OUTPUT = _ROOT_OUTPUT
