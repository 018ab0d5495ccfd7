"""The local engine: inputs -> model -> reducers -> a file or arrays, in one loop.

:func:`extract` is the whole job in one call; it builds a
:class:`~layertap.engines.run.Run` and hands it to :class:`LocalEngine`. The loop
runs on the calling thread; the data stage decodes images in worker threads a few
batches ahead, so decoding overlaps the forward pass, and each batch is reduced and
written (committed) before the next one, so memory is bounded by the batch size. The
Ray engine (:mod:`layertap.engines.ray`) takes the same run and writes the same files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from layertap.engines.run import (
    ModelSource,
    Output,
    Plan,
    Run,
    model_fingerprint,
    plan,
    run_fingerprint,
)
from layertap.io.images import Preprocess
from layertap.io.inputs import InputOptions
from layertap.io.reduce import reduce_taps
from layertap.io.source import Batch
from layertap.io.write import FeatureWriter, open_writer

__all__ = [
    "ExtractResult",
    "Features",
    "LocalEngine",
    "extract",
    "model_fingerprint",
    "run_fingerprint",
]

log = logging.getLogger("layertap")

OnFailed = Callable[[str, str], None] | None


class Features(dict[str, np.ndarray]):
    """``{tap key: array, "paths": array of row ids}``, with the failed inputs.

    Attributes:
        failed: ``(id, reason)`` for every input that was skipped.
    """

    failed: list[tuple[str, str]]


@dataclasses.dataclass
class ExtractResult:
    """What an engine wrote.

    Attributes:
        path: the output file (the Ray engine: its directory or URI).
        format: ``"hdf5"``, ``"npz"`` or ``"parquet"``.
        rows: rows in the output.
        failed: ``(id, reason)`` for every input that was skipped.
        resumed: rows found from an interrupted run and kept.
        shapes: ``{dataset name: shape}``.
        already_complete: the output was finished by an earlier run of the same job,
            and nothing was done.
    """

    path: Path
    format: str
    rows: int
    failed: list[tuple[str, str]]
    resumed: int
    shapes: dict[str, tuple[int, ...]]
    already_complete: bool = False


def _progress_bar(total: int | None, initial: int, show: bool | None) -> Any:
    from tqdm import tqdm

    if show is None:
        show = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        unit="input",
        disable=not show,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


def _report(batch: Batch, on_failed: OnFailed) -> None:
    for item in batch.failed:
        if on_failed is not None:
            on_failed(*item)
        log.warning("skipped %s: %s", *item)


def _forward(p: Plan, x: Any) -> dict[str, np.ndarray]:
    """One batch through the taps and reducers.

    A short batch of texts or input arrays (the last one) is padded to the batch size
    by repeating its last row, and the extra rows are dropped: the model then runs at one
    shape and is traced (or compiled, on JAX) once. Rows are independent at inference,
    so the kept rows are the same.
    """
    n = len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)
    short = isinstance(x, Mapping) and 0 < n < p.run.batch_size
    if short:
        extra = p.run.batch_size - n
        full = {k: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)]) for k, v in x.items()}
        outputs = {k: v[:n] for k, v in p.extractor(full).items()}
    else:
        outputs = p.extractor(x)
    return p.schema.cast(reduce_taps(p.reducers, outputs, x))


class LocalEngine:
    """Runs a :class:`~layertap.engines.run.Run` on this process (decoding in threads).

    Example:
        >>> import keras, numpy as np
        >>> from layertap.engines.run import ModelSource
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> run = Run(ModelSource(m), np.ones((4, 3), "float32"), ["d"])
        >>> LocalEngine().features(run)["d"].shape
        (4, 2)
    """

    name = "local"

    def features(self, run: Run, on_failed: OnFailed = None) -> Features:
        """Run to arrays in memory."""
        p = plan(run.replace(output=Output(meta=run.output.meta, dtype=run.output.dtype)))
        try:
            return _to_memory(p, on_failed)
        finally:
            p.close()

    def extract(self, run: Run, on_failed: OnFailed = None) -> ExtractResult:
        """Run to ``run.output``'s file; resume it, or leave it when it is complete."""
        p = plan(run)
        try:
            writer = open_writer(
                run.output.path or "",
                p.schema,
                p.attributes(),
                fingerprint=p.fingerprint,
                overwrite=run.output.overwrite,
                format=run.output.format,
            )
            already_complete = writer.complete
            if writer.resumed and not writer.complete:
                log.info("resuming %s after %d rows", writer.path, writer.resumed)
            _to_writer(p, writer, on_failed)
        finally:
            p.close()
        return ExtractResult(
            writer.path,
            writer.format,
            writer.rows,
            writer.failed,
            writer.resumed,
            writer.shapes,
            already_complete,
        )


def _to_writer(p: Plan, writer: FeatureWriter, on_failed: OnFailed) -> None:
    """Every batch from the writer's progress on, each committed; the file finished."""
    if p.source is None:  # pragma: no cover (the local engine always opens its inputs)
        raise RuntimeError("a local run needs its inputs opened")
    try:
        if not writer.complete:
            with _progress_bar(p.source.total, writer.inputs_done, p.run.progress) as bar:
                for batch in p.source.batches(start=writer.inputs_done):
                    _report(batch, on_failed)
                    feats = _forward(p, batch.x) if len(batch.ids) else {}
                    writer.write(batch.ids, feats, batch.failed, batch.end)
                    bar.update(batch.end - bar.n)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def _to_memory(p: Plan, on_failed: OnFailed) -> Features:
    if p.source is None:  # pragma: no cover (the local engine always opens its inputs)
        raise RuntimeError("a local run needs its inputs opened")
    parts: dict[str, list[np.ndarray]] = {c.key: [] for c in p.schema}
    ids: list[str] = []
    failed: list[tuple[str, str]] = []
    with _progress_bar(p.source.total, 0, p.run.progress) as bar:
        for batch in p.source.batches():
            _report(batch, on_failed)
            failed.extend(batch.failed)
            if batch.ids:
                for key, value in _forward(p, batch.x).items():
                    parts[key].append(value)
                ids.extend(batch.ids)
            bar.update(batch.end - bar.n)
    result = Features()
    for c in p.schema:
        if parts[c.key]:
            result[c.key] = np.concatenate(parts[c.key])
        else:
            result[c.key] = np.zeros((0, *c.dims), c.dtype)
    result["paths"] = np.array(ids, dtype=str)
    result.failed = failed
    return result


LayerSpecs = Any  # a spec, a list of specs, or a dict alias -> spec


@overload
def extract(
    model: Any,
    inputs: Any,
    layers: LayerSpecs,
    out: None = None,
    *,
    batch_size: int = ...,
    preprocess: str | Preprocess | None = ...,
    pool: str | Mapping[str, str] | None = ...,
    size: tuple[int, int] | None = ...,
    resize: str = ...,
    format: str | None = ...,
    overwrite: bool = ...,
    workers: int | None = ...,
    text_column: str | None = ...,
    sequence_length: int | None = ...,
    progress: bool | None = ...,
    custom_objects: Mapping[str, Any] | Sequence[str] | None = ...,
    safe_mode: bool = ...,
    meta: Mapping[str, Any] | None = ...,
    on_failed: OnFailed = ...,
    dtype: str = ...,
) -> Features: ...


@overload
def extract(
    model: Any,
    inputs: Any,
    layers: LayerSpecs,
    out: str | os.PathLike[str],
    *,
    batch_size: int = ...,
    preprocess: str | Preprocess | None = ...,
    pool: str | Mapping[str, str] | None = ...,
    size: tuple[int, int] | None = ...,
    resize: str = ...,
    format: str | None = ...,
    overwrite: bool = ...,
    workers: int | None = ...,
    text_column: str | None = ...,
    sequence_length: int | None = ...,
    progress: bool | None = ...,
    custom_objects: Mapping[str, Any] | Sequence[str] | None = ...,
    safe_mode: bool = ...,
    meta: Mapping[str, Any] | None = ...,
    on_failed: OnFailed = ...,
    dtype: str = ...,
) -> ExtractResult: ...


def extract(
    model: Any,
    inputs: Any,
    layers: LayerSpecs,
    out: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 32,
    preprocess: str | Preprocess | None = None,
    pool: str | Mapping[str, str] | None = None,
    size: tuple[int, int] | None = None,
    resize: str = "bilinear",
    format: str | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    text_column: str | None = None,
    sequence_length: int | None = None,
    progress: bool | None = None,
    custom_objects: Mapping[str, Any] | Sequence[str] | None = None,
    safe_mode: bool = True,
    meta: Mapping[str, Any] | None = None,
    on_failed: OnFailed = None,
    dtype: str = "float32",
) -> Features | ExtractResult:
    """Run ``inputs`` through ``model`` once; return the taps' features or write them.

    Wide because it is the public entry point: its keyword options become one
    :class:`~layertap.engines.run.Run`, which is what travels inside.

    Args:
        model: a ``keras.Model``, a model file (``.keras``, ``.h5``, a SavedModel), or a
            keras-hub preset (a directory, a handle, or a :class:`~layertap.Preset`).
        inputs: image files, folders, globs, ``.txt``/``.csv`` lists, ``.npy`` files
            (a path or a list of them); a numpy array; an iterable of batches, a
            ``tf.data.Dataset`` or a ``keras.utils.PyDataset``. For a text model: a list
            of strings (the texts), or text files (a path, or ``Path`` objects).
        layers: layer specs as :class:`~layertap.Extractor` takes them.
        out: an output file (``.h5``, ``.npz``, ``.parquet``); ``None`` returns arrays.
        batch_size: inputs per forward pass.
        preprocess: ``"none"``, ``"rescale"``, ``"tf"``, ``"caffe"``, ``"torch"``, a
            callable or ``"module:function"``; ``None`` is ``"rescale"`` for image
            files and ``"none"`` for arrays. A keras-hub preprocessor makes the model a
            text model (a keras-hub preset directory brings its own).
        pool: ``"keep"``, ``"flatten"``, ``"avg"``, ``"max"`` for every tap, or a dict
            ``{key: reducer}`` (``"*"``: the default for the rest).
        size: ``(height, width)`` for a model that takes images of any size.
        resize: Pillow's resize filter: nearest, bilinear, bicubic, lanczos, box, hamming.
        format: ``"hdf5"``, ``"npz"`` or ``"parquet"`` (default: by ``out``'s suffix).
        overwrite: replace an existing ``out`` written by a different run (a file from
            the same run is resumed, or left as it is when finished).
        workers: decoding threads (default: min(8, CPUs)).
        text_column: for a text model, the column (``.csv``, Parquet) or field
            (``.jsonl``) holding the text (default: ``"text"``).
        sequence_length: for a text model, tokens per text (default: the preprocessor's).
        progress: show a progress bar (default: when stderr is a terminal).
        custom_objects: passed to :func:`~layertap.load_model` (it may also list
            ``PATH.py`` / ``module:attr`` specs).
        safe_mode: passed to :func:`~layertap.load_model`.
        meta: extra attributes stored in the file.
        on_failed: called with ``(id, reason)`` for each input skipped.
        dtype: ``"float32"`` (values as the model gives them) or ``"float16"`` (floating
            taps stored and returned as ``np.float16(x)``: half the bytes); a file is
            resumed only by a run with the same dtype.

    Returns:
        :class:`Features` (a dict with ``paths``) when ``out`` is None, else an
        :class:`ExtractResult` (the overloads tell a type checker which).

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4, 4, 2)),
        ...                       keras.layers.Conv2D(3, 1, name="conv")])
        >>> f = extract(m, np.ones((5, 4, 4, 2), "float32"), {"c": "conv"}, pool="avg")
        >>> f["c"].shape, f["paths"][:2].tolist()
        ((5, 3), ['array[0]', 'array[1]'])
    """
    run = Run(
        ModelSource(model, custom_objects or (), safe_mode),
        inputs,
        layers,
        input=InputOptions(preprocess, size, resize, workers, text_column, sequence_length),
        pool=pool,
        batch_size=batch_size,
        output=Output(
            None if out is None else os.fspath(out), format, overwrite, dict(meta or {}), dtype
        ),
        progress=progress,
    )
    if out is None:
        return LocalEngine().features(run, on_failed)
    return LocalEngine().extract(run, on_failed)
