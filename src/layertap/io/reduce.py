"""Stage 6, reduce: per-tap pooling or flattening of a batch of features.

===========  ===========================================================  ==============
reducer      what one row becomes                                         shape
===========  ===========================================================  ==============
``keep``     the layer's output as it is                                  ``(h, w, c)``
``flatten``  every value in one vector, C order                           ``(h*w*c,)``
``avg``      the mean over every axis between the batch and the last;     ``(c,)``
             for tokens, the mean over the real tokens
``max``      the maximum over the same axes; for tokens, the maximum      ``(c,)``
             over the real tokens
``first``    the first token, ``x[:, 0]`` (an encoder's ``CLS`` token);   ``(dim,)``
             the mask does not change it
``last``     the last real token (a decoder's summary); ``x[:, -1]``      ``(dim,)``
             without a mask
===========  ===========================================================  ==============

``avg`` and ``max`` treat the last axis as channels (Keras's channels-last
default); a ``(batch, c)`` output is left as it is. ``first`` and ``last`` take
only ``(batch, tokens, dim)`` taps (:func:`check_reducer` says so before a batch
runs). Aliases: ``gap`` = ``avg``, ``gmp`` = ``max``, ``none`` = ``keep``,
``cls`` = ``first``.

**The mask rule.** :func:`reduce` takes an optional padding mask of shape
``(batch, tokens)`` (bool, or 1 for a real token and 0 for padding, as keras-hub's
``padding_mask`` input). It applies only to a *token-aligned* tap, one with
``x.ndim == 3 and x.shape[:2] == mask.shape``; any other tap ignores it. With a
token-aligned mask, ``avg``, ``max`` and ``last`` see the real tokens only, so the
result does not depend on how far a row is padded, and a row with no real token
gives zeros. ``first``, ``keep`` and ``flatten`` do not use the mask.

A choice for every tap is a *pool spec*: one name for every tap, or a dict
``{tap key: name}`` (taps not named there are kept). The command line's
``--pool`` takes ``NAME`` (every tap) and ``KEY=NAME`` (one tap), repeatable, and
:func:`parse_pool_options` turns those into that dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from layertap._errors import BadSpecError

__all__ = [
    "MASK_INPUT",
    "MASK_SUFFIX",
    "REDUCERS",
    "check_reducer",
    "masked_keys",
    "parse_pool_options",
    "reduce",
    "reduce_taps",
    "reduced_shape",
    "resolve_pool",
]

#: The model input that marks real tokens (keras-hub's name); its batch is the mask.
MASK_INPUT = "padding_mask"
#: A kept token tap's mask is stored under its key plus this.
MASK_SUFFIX = ".mask"

#: Reducer names, with their aliases.
REDUCERS = {
    "keep": "keep",
    "none": "keep",
    "flatten": "flatten",
    "avg": "avg",
    "gap": "avg",
    "max": "max",
    "gmp": "max",
    "first": "first",
    "cls": "first",
    "last": "last",
}

#: The reducers that take only ``(batch, tokens, dim)`` taps.
_TOKEN_ONLY = frozenset({"first", "last"})


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
        >>> resolve_pool({"*": "cls", "dec": "last"}, ["enc", "dec"])
        {'enc': 'first', 'dec': 'last'}
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
        >>> parse_pool_options(["cls", "decoder=last"])
        {'*': 'first', 'decoder': 'last'}
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


def check_reducer(name: str, shape: Sequence[int | None], key: str | None = None) -> None:
    """Raise :class:`~layertap.BadSpecError` if reducer ``name`` cannot take a tap of ``shape``.

    ``shape`` is the tap's batch shape (batch dimension first, ``None`` for an unknown
    size) and ``key`` the tap's key, for the message. ``first`` and ``last`` (and their
    aliases) take only ``(batch, tokens, dim)`` taps; every other reducer takes any
    shape. An unknown reducer name is an error too.

    Example:
        >>> check_reducer("last", (None, None, 768), "backbone")
        >>> check_reducer("cls", (None, 768), "pooled")
        Traceback (most recent call last):
        ...
        layertap._errors.BadSpecError: reducer 'cls' cannot take tap 'pooled' of shape \
(None, 768): first/last take (batch, tokens, dim) taps; use 'avg', 'max', 'keep' or \
'flatten' for it
    """
    where = f"tap {key!r}" if key is not None else "a tap"
    found = _name(name, f"for {where}")
    shape = tuple(shape)
    if found in _TOKEN_ONLY and len(shape) != 3:
        raise BadSpecError(
            f"reducer {name!r} cannot take {where} of shape {shape}: first/last take "
            "(batch, tokens, dim) taps; use 'avg', 'max', 'keep' or 'flatten' for it"
        )


def reduced_shape(name: str, shape: Sequence[int | None]) -> tuple[int | None, ...]:
    """The batch shape after reducer ``name`` (batch dimension first).

    Raises :class:`~layertap.BadSpecError` as :func:`check_reducer` does.

    Example:
        >>> reduced_shape("avg", (None, 4, 4, 8)), reduced_shape("flatten", (None, 4, 4, 8))
        ((None, 8), (None, 128))
        >>> reduced_shape("first", (None, None, 768)), reduced_shape("last", (2, 7, 16))
        ((None, 768), (2, 16))
    """
    check_reducer(name, shape)
    name = REDUCERS[name]
    shape = tuple(shape)
    if name == "keep" or len(shape) <= 2:
        return shape
    if name == "flatten":
        rest = shape[1:]
        if any(d is None for d in rest):
            return (shape[0], None)
        return (shape[0], int(np.prod([d for d in rest if d is not None])))
    return (shape[0], shape[-1])


def _token_mask(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """``mask`` as bool if it is token-aligned with ``x``, else ``None`` (the mask rule)."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if x.ndim != 3 or x.shape[:2] != m.shape:
        return None
    return m.astype(bool, copy=False)


def _lowest(dtype: np.dtype) -> float | int | bool:
    """A value no element of ``dtype`` is below (the start of a masked maximum)."""
    if np.issubdtype(dtype, np.floating):
        return -np.inf
    if np.issubdtype(dtype, np.integer):
        return int(np.iinfo(dtype).min)
    return False


def _masked(name: str, x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``avg``, ``max`` or ``last`` of ``(batch, tokens, dim)`` over the real tokens of ``m``."""
    count = np.count_nonzero(m, axis=1)
    if name == "last":
        idx = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
        out = x[np.arange(len(x)), idx]
    elif name == "avg":
        acc = np.result_type(x.dtype, np.float32)
        total = np.where(m[..., None], x, 0).sum(axis=1, dtype=acc)
        out = total / np.maximum(count, 1)[:, None]
    else:
        out = np.where(m[..., None], x, _lowest(x.dtype)).max(axis=1)
    out = np.where(count[:, None] > 0, out, 0)
    return out.astype(x.dtype, copy=False)


def reduce(name: str, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Apply reducer ``name`` to a batch ``x`` (rows first); the result keeps ``x``'s dtype.

    ``mask`` is an optional ``(batch, tokens)`` padding mask (bool, or 1 for a real
    token and 0 for padding); it applies only to a token-aligned tap, as the module
    docstring says. With it, ``avg``, ``max`` and ``last`` use the real tokens only,
    and a row with no real token gives zeros. ``first`` and ``last`` raise
    :class:`~layertap.BadSpecError` for a tap that is not ``(batch, tokens, dim)``.

    Example:
        >>> x = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)
        >>> reduce("avg", x).tolist(), reduce("max", x).tolist(), reduce("flatten", x).shape
        ([[3.0, 4.0]], [[6.0, 7.0]], (1, 8))
        >>> t = np.arange(12, dtype="float32").reshape(2, 3, 2)  # (batch, tokens, dim)
        >>> m = np.array([[1, 1, 0], [1, 0, 0]])                  # right padding
        >>> reduce("avg", t, m).tolist(), reduce("max", t, m).tolist()
        ([[1.0, 2.0], [6.0, 7.0]], [[2.0, 3.0], [6.0, 7.0]])
        >>> reduce("first", t, m).tolist(), reduce("last", t, m).tolist()
        ([[0.0, 1.0], [6.0, 7.0]], [[2.0, 3.0], [6.0, 7.0]])
        >>> reduce("last", t).tolist()                            # no mask: x[:, -1]
        [[4.0, 5.0], [10.0, 11.0]]
    """
    name = _name(name, f"for a tap of shape {x.shape}")
    if name in _TOKEN_ONLY:
        check_reducer(name, x.shape)
    if name == "keep" or x.ndim <= 2:
        return x
    if name == "flatten":
        return x.reshape(len(x), -1)
    m = _token_mask(x, mask)
    if m is not None and name != "first":
        return _masked(name, x, m)
    if name in _TOKEN_ONLY:
        return np.array(x[:, 0 if name == "first" else -1])
    axes = tuple(range(1, x.ndim - 1))
    out: np.ndarray = x.mean(axis=axes) if name == "avg" else x.max(axis=axes)
    return out.astype(x.dtype, copy=False)


def reduce_taps(
    reducers: Mapping[str, str], outputs: Mapping[str, Any], inputs: Any = None
) -> dict[str, np.ndarray]:
    """Every tap's reducer, with the batch's padding mask when the inputs hold one.

    ``inputs`` is the batch as the model took it; a dict with :data:`MASK_INPUT` gives
    the mask that token-aware reducers use (both engines call this). A kept
    ``(batch, tokens, dim)`` tap gets the mask next to it, under ``KEY.mask``
    (:data:`MASK_SUFFIX`, uint8, 1 for a real token), so its padding can be told apart.

    Example:
        >>> x = np.arange(6, dtype="float32").reshape(1, 3, 2)
        >>> m = {"padding_mask": np.array([[1, 1, 0]])}
        >>> reduce_taps({"t": "avg"}, {"t": x}, m)
        {'t': array([[1., 2.]], dtype=float32)}
        >>> reduce_taps({"t": "keep"}, {"t": x}, m)["t.mask"]
        array([[1, 1, 0]], dtype=uint8)
    """
    mask = inputs.get(MASK_INPUT) if isinstance(inputs, Mapping) else None
    mask = None if mask is None else np.asarray(mask)
    out: dict[str, np.ndarray] = {}
    for key, value in outputs.items():
        value = np.asarray(value)
        out[key] = reduce(reducers[key], value, mask)
        if REDUCERS[reducers[key]] == "keep" and mask is not None and _aligned(value, mask):
            out[key + MASK_SUFFIX] = (mask != 0).astype(np.uint8)
    return out


def _aligned(x: np.ndarray, mask: np.ndarray) -> bool:
    return x.ndim == 3 and x.shape[:2] == mask.shape


def masked_keys(
    reducers: Mapping[str, str], shapes: Mapping[str, Sequence[int | None]], tokens: int
) -> list[str]:
    """The kept taps that get a ``KEY.mask`` next to them: ``(batch, tokens, dim)`` rows.

    Example:
        >>> masked_keys({"a": "keep", "b": "avg"}, {"a": (None, 8, 4), "b": (None, 8, 4)}, 8)
        ['a']
    """
    return [
        key
        for key, shape in shapes.items()
        if REDUCERS[reducers[key]] == "keep" and len(shape) == 3 and shape[1] in (tokens, None)
    ]
