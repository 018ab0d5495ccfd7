"""Stage 3, resolve: layer specs -> places, with errors that say what is valid.

The grammar (documented in the README):

- ``int``: ``model.layers[i]``; negative counts from the end.
- ``"name"``: a top-level layer, or a name found at one path only in the whole tree.
- ``"outer/inner/leaf"``: a path through nested sub-models; any segment may take
  ``@k`` (the k-th call, 0-based) and the last may take ``:j`` (the j-th output).
- a glob (``*``, ``?``, ``[...]``) matched segment by segment against canonical
  paths; ``**`` stands for any number of segments.

A list of specs is keyed by canonical path, a dict by its aliases (a dict value
that expands to several places is keyed ``alias/path``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from layertap._errors import (
    AmbiguousLayerError,
    BadSpecError,
    LayerNotFoundError,
    UntracedLayerError,
)
from layertap.graph.pathglob import glob_match
from layertap.graph.walk import LayerInfo

__all__ = ["Spec", "glob_match", "resolve", "resolve_one"]

Spec = int | str

_GLOB_CHARS = re.compile(r"[*?\[]")
_SEGMENT = re.compile(r"^(?P<name>[^@:/]+?)(?:@(?P<call>-?\d+))?(?::(?P<out>\d+))?$")
_HINT = "see layertap.list_layers(model) for every tappable path"


def _quote_all(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(s) for s in items[:limit])
    more = len(items) - limit
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _not_found(spec: str, places: Sequence[LayerInfo], lead: str) -> LayerNotFoundError:
    """An error that starts with ``lead`` and lists paths or names close to ``spec``."""
    depth = spec.count("/")  # compare like with like: names, or paths as deep as the spec
    paths = [p.path for p in places] + [p.alias for p in places if p.alias is not None]
    candidates = {path for path in paths if path.count("/") == depth}
    if depth == 0:
        candidates |= {p.name for p in places}
        candidates |= {p.alias.rsplit("/", 1)[-1] for p in places if p.alias is not None}
    close = difflib.get_close_matches(spec, sorted(candidates), n=5, cutoff=0.6)
    tail = f"; close matches: {_quote_all(close)}" if close else ""
    return LayerNotFoundError(f"{lead}{tail}; {_HINT}")


def _group_calls(matches: Sequence[LayerInfo]) -> dict[tuple[Any, ...], list[LayerInfo]]:
    """Group places by call (all outputs of one call together)."""
    groups: dict[tuple[Any, ...], list[LayerInfo]] = {}
    for p in matches:
        event = None if p.event is None else dataclasses.replace(p.event, output=None)
        groups.setdefault((*(id(n) for n in p.nodes), event), []).append(p)
    return groups


def _single_call(spec: str, matches: list[LayerInfo]) -> list[LayerInfo]:
    """Accept ``matches`` when they are the outputs of one call; else name the choices."""
    groups = _group_calls(matches)
    if len(groups) == 1:
        return matches
    firsts = [g[0] for g in groups.values()]
    choices = [p.path.split(":")[0] for p in firsts]
    names = {tuple(s.name for s in p.segments) for p in firsts}
    if len(names) == 1:  # one path, several calls: name the first segment that differs
        level = next(
            i
            for i in range(len(firsts[0].segments))
            if len({p.segments[i].call for p in firsts}) > 1
        )
        seg = firsts[0].segments[level]
        why = f"{seg.name!r} is called {seg.calls} times; pick one call with @k"
    else:
        why = f"it is found at {len(groups)} paths"
    raise AmbiguousLayerError(f"layer spec {spec!r} is ambiguous: {why}: {_quote_all(choices)}")


def _untraced_note(places: Sequence[LayerInfo]) -> str:
    paths = sorted({p.path.split(":")[0] for p in places if p.trace_error})
    if not paths:
        return ""
    return f" (the insides of {_quote_all(paths, 3)} could not be traced, so are not listed)"


def _resolve_index(spec: int, model: Any, places: Sequence[LayerInfo]) -> list[LayerInfo]:
    n = len(model.layers)
    if not -n <= spec < n:
        raise LayerNotFoundError(
            f"layer index {spec} is out of range: model {model.name!r} has {n} top-level "
            f"layers, so valid indices are {-n}..{n - 1}; {_HINT}"
        )
    layer = model.layers[spec]
    matches = [p for p in places if p.depth == 0 and p.layer is layer]
    if not matches:
        raise LayerNotFoundError(
            f"layer index {spec} ({layer.name!r}) is not part of the graph of model "
            f"{model.name!r}, so it has no output to tap; {_HINT}"
        )
    return _single_call(f"{spec} ({layer.name})", matches)


def _parse_path(spec: str) -> list[tuple[str, int | None, int | None]]:
    parsed = []
    segments = spec.split("/")
    for i, text in enumerate(segments):
        m = _SEGMENT.match(text)
        if m is None or (m["out"] is not None and i < len(segments) - 1):
            raise BadSpecError(
                f"bad path segment {text!r} in layer spec {spec!r}: expected 'name', "
                "'name@k' (k-th call) or, last, 'name:j' (j-th output), joined by '/'"
            )
        call = None if m["call"] is None else int(m["call"])
        out = None if m["out"] is None else int(m["out"])
        parsed.append((m["name"], call, out))
    return parsed


def _resolve_path(spec: str, places: Sequence[LayerInfo]) -> list[LayerInfo]:
    parsed = _parse_path(spec)
    matches = list(places)
    for level, (name, call, _) in enumerate(parsed):
        matches = [
            p
            for p in matches
            if len(p.segments) > level
            and p.segments[level].name == name
            and (call is None or p.segments[level].call == call)
        ]
        if not matches:
            _explain_missing_segment(spec, parsed, level, places)
    matches = [p for p in matches if len(p.segments) == len(parsed)]
    out = parsed[-1][2]
    if out is not None:
        matches = [p for p in matches if p.output_index == out]
    if not matches:
        raise _not_found(spec, places, f"no layer path {spec!r} in the model")
    return _single_call(spec, matches)


def _explain_missing_segment(
    spec: str,
    parsed: list[tuple[str, int | None, int | None]],
    level: int,
    places: Sequence[LayerInfo],
) -> NoReturn:
    name, call, _ = parsed[level]
    prefix = "/".join(f"{n}@{c}" if c is not None else n for n, c, _ in parsed[:level])
    same_name = [
        p
        for p in places
        if len(p.segments) > level
        and p.segments[level].name == name
        and all(
            p.segments[i].name == n and (c is None or p.segments[i].call == c)
            for i, (n, c, _) in enumerate(parsed[:level])
        )
    ]
    if same_name and call is not None:
        calls = same_name[0].segments[level].calls
        raise LayerNotFoundError(
            f"layer spec {spec!r} asks for call @{call} of {name!r}, which is called "
            f"{calls} time{'s' if calls > 1 else ''} there: valid calls are "
            f"@0..@{calls - 1}"
        )
    untraced = [
        p
        for p in places
        if p.trace_error
        and len(p.segments) == level
        and all(
            p.segments[i].name == n and (c is None or p.segments[i].call == c)
            for i, (n, c, _) in enumerate(parsed[:level])
        )
    ]
    if untraced:
        raise untraced_error(spec, untraced[0])
    where = f"inside {prefix!r}" if prefix else "at the top level"
    raise _not_found(spec, places, f"layer path {spec!r}: no layer {name!r} {where}")


def untraced_error(spec: str, place: LayerInfo) -> UntracedLayerError:
    """The error for a spec that reaches inside a layer whose ``call()`` did not trace.

    Example:
        >>> import keras
        >>> from layertap.graph.walk import walk
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> p = dataclasses.replace(walk(m)[0], trace_error="ValueError: boom")
        >>> str(untraced_error("d/inner", p)).split(";")[0]
        "layer spec 'd/inner' reaches inside 'd' (Dense), whose call() could not be traced"
    """
    path = place.path.split(":")[0]
    return UntracedLayerError(
        f"layer spec {spec!r} reaches inside {path!r} ({place.class_name}), whose call() "
        f"could not be traced; {place.trace_error}. Its own output {path!r} is tappable; "
        "for the places inside it, pass input_shape= with concrete sizes (the shape of "
        "one input batch, e.g. (None, 128), or a dict by input name)"
    )


def _resolve_name(spec: str, places: Sequence[LayerInfo]) -> list[LayerInfo]:
    top = [p for p in places if p.depth == 0 and p.name == spec]
    if top:
        return _single_call(spec, top)
    anywhere = [p for p in places if p.name == spec]
    if not anywhere:
        raise _not_found(
            spec, places, f"no layer named {spec!r} in the model{_untraced_note(places)}"
        )
    return _single_call(spec, anywhere)


def resolve_one(spec: object, model: Any, places: Sequence[LayerInfo]) -> list[LayerInfo]:
    """Resolve one spec to its places (several for a glob or a multi-output layer).

    A string spec is matched against the canonical paths first, then, when none fits,
    against the attribute paths (:attr:`LayerInfo.alias`: ``fc6_1`` for
    ``self.fc6_1 = Dense(4, name="fc6-1")``), then against the canonical paths with
    the last layer's attribute name (``<attention path>/scores``, an attention layer's
    probabilities: :meth:`LayerInfo.by_leaf_alias`). So where an alias spells another
    layer's canonical path, the canonical path wins.

    Example:
        >>> import keras
        >>> from layertap.graph.walk import walk
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> [p.path for p in resolve_one(-1, m, walk(m))]
        ['d']
    """
    if isinstance(spec, bool) or not isinstance(spec, int | str):
        raise BadSpecError(
            f"layer spec {spec!r} has type {type(spec).__name__}: expected an int "
            "(index into model.layers), a name, a path 'outer/inner' or a glob"
        )
    if isinstance(spec, int):
        return _resolve_index(spec, model, places)
    if not spec.strip() or spec != spec.strip():
        raise BadSpecError(f"layer spec {spec!r} is empty or has surrounding spaces")
    try:
        return _resolve_text(spec, places)
    except LayerNotFoundError as error:
        if all(p.alias is None for p in places):
            raise
        # Every place by its attribute path, then by its canonical path with the last
        # layer's attribute name (``<attention>/scores``).
        for views in ([p.by_alias() for p in places], [p.by_leaf_alias() for p in places]):
            try:
                matches = _resolve_text(spec, views)
            except LayerNotFoundError:
                continue
            original = {id(view): p for p, view in zip(places, views, strict=True)}
            return [original[id(view)] for view in matches]
        raise error from None


def _resolve_text(spec: str, places: Sequence[LayerInfo]) -> list[LayerInfo]:
    """A name, path or glob against the places' ``path`` and ``segments``."""
    if _GLOB_CHARS.search(spec):
        matches = glob_match(spec, places)
        if not matches:
            raise LayerNotFoundError(
                f"glob {spec!r} matches no layer path; {_HINT}{_untraced_note(places)}"
            )
        return matches
    if "/" in spec or "@" in spec or ":" in spec:
        return _resolve_path(spec, places)
    return _resolve_name(spec, places)


def resolve(
    layers: Spec | Sequence[Spec] | Mapping[str, Spec],
    model: Any,
    places: Sequence[LayerInfo],
) -> dict[str, LayerInfo]:
    """Resolve specs to ``{key: place}``: keys are aliases (dict) or canonical paths.

    Example:
        >>> import keras
        >>> from layertap.graph.walk import walk
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> list(resolve({"out": -1}, m, walk(m)))
        ['out']
    """
    if isinstance(layers, Mapping):
        items: list[tuple[str | None, object]] = []
        for alias, spec in layers.items():
            if not isinstance(alias, str) or not alias:
                raise BadSpecError(f"alias {alias!r} in the layers dict must be a non-empty string")
            items.append((alias, spec))
    elif isinstance(layers, list | tuple):
        items = [(None, spec) for spec in layers]
    else:
        items = [(None, layers)]
    if not items:
        raise BadSpecError("no layers given: pass a spec, a list of specs or a dict")
    taps: dict[str, LayerInfo] = {}
    for name, item in items:
        matches = resolve_one(item, model, places)
        if name is None:
            for p in matches:
                taps.setdefault(p.path, p)
        elif len(matches) == 1:
            taps[name] = matches[0]
        else:
            for p in matches:
                taps[f"{name}/{p.path}"] = p
    return taps
