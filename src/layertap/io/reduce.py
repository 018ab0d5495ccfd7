"""Stage 6, reduce: per-tap pooling or flattening of a batch of features.

===========  ===========================================================  ==============
reducer      what one row becomes                                         shape
===========  ===========================================================  ==============
``keep``     the layer's output as it is                                  ``(h, w, c)``
``flatten``  every value in one vector, C order                           ``(h*w*c,)``
``avg``      the mean over every axis between the batch and the last      ``(c,)``
``max``      the maximum over the same axes                               ``(c,)``
===========  ===========================================================  ==============

``avg`` and ``max`` treat the last axis as channels (Keras's channels-last
default); a ``(batch, c)`` output is left as it is. Aliases: ``gap`` = ``avg``,
``gmp`` = ``max``, ``none`` = ``keep``.

A choice for every tap is a *pool spec*: one name for every tap, or a dict
``{tap key: name}`` (taps not named there are kept). The command line's
``--pool`` takes ``NAME`` (every tap) and ``KEY=NAME`` (one tap), repeatable, and
:func:`parse_pool_options` turns those into that dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from layertap._errors import BadSpecError

__all__ = [
    "REDUCERS",
    "parse_pool_options",
    "reduce",
    "reduced_shape",
    "resolve_pool",
]

#: Reducer names, with their aliases.
REDUCERS = {
    "keep": "keep",
    "none": "keep",
    "flatten": "flatten",
    "avg": "avg",
    "gap": "avg",
    "max": "max",
    "gmp": "max",
}


def _name(name: str, where: str) -> str:
    found = REDUCERS.get(name)
    if found is None:
        raise BadSpecError(
            f"unknown reducer {name!r} {where}; valid: {', '.join(repr(r) for r in REDUCERS)}"
        )
    return found


def resolve_pool(pool: str | Mapping[str, str] | None, keys: Sequence[str]) -> dict[str, str]:
    """A pool spec -> ``{tap key: reducer}`` for every key.

    In a dict, ``"*"`` is the default for keys it does not name (else ``keep``).

    Example:
        >>> resolve_pool("gap", ["a", "b"])
        {'a': 'avg', 'b': 'avg'}
        >>> resolve_pool({"b": "max"}, ["a", "b"])
        {'a': 'keep', 'b': 'max'}
        >>> resolve_pool({"*": "avg", "b": "keep"}, ["a", "b"])
        {'a': 'avg', 'b': 'keep'}
    """
    if pool is None or isinstance(pool, str):
        name = _name(pool or "keep", "for every tap")
        return {key: name for key in keys}
    unknown = [k for k in pool if k not in keys and k != "*"]
    if unknown:
        raise BadSpecError(
            f"pool names the taps {unknown!r}, which are not among the outputs {list(keys)!r}"
        )
    default = pool.get("*", "keep")
    return {key: _name(pool.get(key, default), f"for tap {key!r}") for key in keys}


def parse_pool_options(options: Sequence[str]) -> str | dict[str, str]:
    """``--pool`` values -> a pool spec: ``NAME`` for every tap, ``KEY=NAME`` for one.

    The last bare ``NAME`` is the default for taps without a ``KEY=NAME``.

    Example:
        >>> parse_pool_options(["avg"])
        'avg'
        >>> parse_pool_options(["avg", "early=max", "logits=keep"])
        {'*': 'avg', 'early': 'max', 'logits': 'keep'}
    """
    default: str | None = None
    per_tap: dict[str, str] = {}
    for text in options:
        key, sep, name = text.rpartition("=")
        if not sep:
            default = _name(text, "in --pool")
            continue
        if not key or not name:
            raise BadSpecError(f"--pool {text!r} is malformed: expected NAME or KEY=NAME")
        per_tap[key] = _name(name, f"in --pool {text!r}")
    if not per_tap:
        return default or "keep"
    return {"*": default or "keep", **per_tap}


def reduced_shape(name: str, shape: Sequence[int | None]) -> tuple[int | None, ...]:
    """The batch shape after reducer ``name`` (batch dimension first).

    Example:
        >>> reduced_shape("avg", (None, 4, 4, 8)), reduced_shape("flatten", (None, 4, 4, 8))
        ((None, 8), (None, 128))
    """
    shape = tuple(shape)
    if name == "keep" or len(shape) <= 2:
        return shape
    if name == "flatten":
        rest = shape[1:]
        if any(d is None for d in rest):
            return (shape[0], None)
        return (shape[0], int(np.prod([d for d in rest if d is not None])))
    return (shape[0], shape[-1])


def reduce(name: str, x: np.ndarray) -> np.ndarray:
    """Apply reducer ``name`` to a batch ``x`` (rows first).

    Example:
        >>> x = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)
        >>> reduce("avg", x).tolist(), reduce("max", x).tolist(), reduce("flatten", x).shape
        ([[3.0, 4.0]], [[6.0, 7.0]], (1, 8))
    """
    if name == "keep" or x.ndim <= 2:
        return x
    if name == "flatten":
        return x.reshape(len(x), -1)
    axes = tuple(range(1, x.ndim - 1))
    out: np.ndarray = x.mean(axis=axes) if name == "avg" else x.max(axis=axes)
    return out.astype(x.dtype, copy=False)
