"""What every kind of input gives: :class:`Batch` records from a :class:`Source`.

A source yields batches of row ids, the model's input for those rows, the inputs that
failed on the way and how many inputs were consumed in all; it can start at any input
index, which is what a resumed run needs. The kinds: image files and ``.npy`` rows
(:mod:`~layertap.io.images`), arrays and iterables (:mod:`~layertap.io.arrays`), text
(:mod:`~layertap.io.text`); :func:`~layertap.io.inputs.make_source` picks one.

This module does not import Keras.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["Batch", "Source"]


@dataclasses.dataclass
class Batch:
    """One batch from a :class:`Source`.

    Attributes:
        ids: one id per row of ``x`` (a file path, ``file.npy[i]``, ``array[i]``,
            ``file:line`` of a text).
        x: the model's input for these rows (an array, or ``{input name: array}``).
        failed: ``(id, reason)`` for inputs skipped since the previous batch.
        end: the number of inputs consumed so far, counted from the first input.
    """

    ids: list[str]
    x: Any
    failed: list[tuple[str, str]]
    end: int


class Source:
    """Inputs as batches. ``len()`` is the number of inputs (``None`` when unknown).

    Attributes:
        kind: ``"files"``, ``"array"`` or ``"iterable"``.
        fingerprint: a hash of the inputs' identity (``None``: cannot resume).
        preprocessing: a JSON-able description of what is done to each input.
        input_shape: the shape of one input row as the model gets it (``None``: unknown
            before the first batch, or several inputs).
    """

    kind = "abstract"
    fingerprint: str | None = None
    preprocessing: dict[str, Any] = {}  # noqa: RUF012
    total: int | None = None
    input_shape: tuple[int, ...] | None = None

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Batches of the inputs from index ``start`` on."""
        raise NotImplementedError

    def sample(self) -> Any:
        """One row as the model takes it, batch dimension first (for shapes; ``None``:
        not known before the first batch)."""
        if self.input_shape is None:
            return None
        return np.zeros((1, *self.input_shape), np.float32)

    def items(self) -> list[dict[str, Any]] | None:
        """One record per input for an engine that ships rows to workers (``path`` is the
        row id), or ``None`` when the inputs cannot be listed (an iterable)."""
        return None

    def close(self) -> None:
        """Release worker threads."""
