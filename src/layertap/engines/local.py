"""Stage 9 (local), engine: inputs -> model -> reducers -> a file or arrays, in one loop.

:func:`extract` is the whole job in one call. The loop runs on the calling thread;
the data stage decodes images in worker threads a few batches ahead, so decoding
overlaps the forward pass, and each batch is reduced and written (committed) before
the next one, so memory is bounded by the batch size. A later engine (Ray Data)
reuses the same stages and writes the same files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layertap._errors import BadSpecError
from layertap.graph.extractor import Extractor, TapInfo
from layertap.graph.resolve import Spec
from layertap.io.data import Preprocess, Source, make_source
from layertap.io.reduce import reduce, reduced_shape, resolve_pool

__all__ = ["ExtractResult", "Features", "extract", "model_fingerprint", "run_fingerprint"]

log = logging.getLogger("layertap")


class Features(dict[str, np.ndarray]):
    """``{tap key: array, "paths": array of row ids}``, with the failed inputs.

    Attributes:
        failed: ``(id, reason)`` for every input that was skipped.
    """

    failed: list[tuple[str, str]]


@dataclasses.dataclass
class ExtractResult:
    """What :func:`extract` wrote to a file.

    Attributes:
        path: the output file.
        format: ``"hdf5"``, ``"npz"`` or ``"parquet"``.
        rows: rows in the file.
        failed: ``(id, reason)`` for every input that was skipped.
        resumed: rows found from an interrupted run and kept.
        shapes: ``{dataset name: shape}``.
        already_complete: the file was finished by an earlier run of the same job, and
            nothing was done.
    """

    path: Path
    format: str
    rows: int
    failed: list[tuple[str, str]]
    resumed: int
    shapes: dict[str, tuple[int, ...]]
    already_complete: bool = False


def model_fingerprint(model: Any, path: Path | None) -> str:
    """A hash of the model file's bytes, or of an in-memory model's weights.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> len(model_fingerprint(m, None))
        64
    """
    h = hashlib.sha256()
    if path is not None:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    h.update(model.name.encode())
    for w in model.weights:
        h.update(w.path.encode())
        h.update(np.ascontiguousarray(np.asarray(w.numpy())).data)
    return h.hexdigest()


def run_fingerprint(
    model: Any,
    model_path: Path | None,
    layers: Mapping[str, str],
    reducers: Mapping[str, str],
    preprocessing: Any,
    inputs: str | None,
) -> dict[str, Any] | None:
    """What makes two runs the same run: model, taps, reducers, preprocessing, inputs.

    ``None`` when the inputs cannot be fingerprinted (an iterable), so the run cannot
    resume. Every engine records this, so their outputs can be compared.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
        >>> sorted(run_fingerprint(m, None, {"d": "d"}, {"d": "keep"}, {}, "abc"))
        ['inputs', 'model', 'pool', 'preprocessing', 'taps']
    """
    if inputs is None:
        return None
    return {
        "model": model_fingerprint(model, model_path),
        "taps": dict(layers),
        "pool": dict(reducers),
        "preprocessing": preprocessing,
        "inputs": inputs,
    }


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


def extract(
    model: Any,
    inputs: Any,
    layers: Spec | Sequence[Spec] | Mapping[str, Spec],
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
    progress: bool | None = None,
    custom_objects: Mapping[str, Any] | None = None,
    safe_mode: bool = True,
    meta: Mapping[str, Any] | None = None,
    on_failed: Callable[[str, str], None] | None = None,
) -> Features | ExtractResult:
    """Run ``inputs`` through ``model`` once; return the taps' features or write them.

    Args:
        model: a ``keras.Model`` or a model file (``.keras``, ``.h5``).
        inputs: image files, folders, globs, ``.txt``/``.csv`` lists, ``.npy`` files
            (a path or a list of them); a numpy array; an iterable of batches, a
            ``tf.data.Dataset`` or a ``keras.utils.PyDataset``.
        layers: layer specs as :class:`~layertap.Extractor` takes them.
        out: an output file (``.h5``, ``.npz``, ``.parquet``); ``None`` returns arrays.
        batch_size: inputs per forward pass.
        preprocess: ``"none"``, ``"rescale"``, ``"tf"``, ``"caffe"``, ``"torch"``, a
            callable or ``"module:function"``; ``None`` is ``"rescale"`` for image
            files and ``"none"`` for arrays.
        pool: ``"keep"``, ``"flatten"``, ``"avg"``, ``"max"`` for every tap, or a dict
            ``{key: reducer}`` (``"*"``: the default for the rest).
        size: ``(height, width)`` for a model that takes images of any size.
        resize: Pillow's resize filter: nearest, bilinear, bicubic, lanczos, box, hamming.
        format: ``"hdf5"``, ``"npz"`` or ``"parquet"`` (default: by ``out``'s suffix).
        overwrite: replace an existing ``out`` written by a different run (a file from
            the same run is resumed, or left as it is when finished).
        workers: decoding threads (default: min(8, CPUs)).
        progress: show a progress bar (default: when stderr is a terminal).
        custom_objects, safe_mode: passed to :func:`~layertap.load_model`.
        meta: extra attributes stored in the file.
        on_failed: called with ``(id, reason)`` for each input skipped.

    Returns:
        :class:`Features` (a dict with ``paths``) when ``out`` is None, else an
        :class:`ExtractResult`.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4, 4, 2)),
        ...                       keras.layers.Conv2D(3, 1, name="conv")])
        >>> f = extract(m, np.ones((5, 4, 4, 2), "float32"), {"c": "conv"}, pool="avg")
        >>> f["c"].shape, f["paths"][:2].tolist()
        ((5, 3), ['array[0]', 'array[1]'])
    """
    from layertap import __version__
    from layertap.graph.load import load_model
    from layertap.io.write import open_writer

    model_path: Path | None = None
    if isinstance(model, str | os.PathLike):
        model_path = Path(model)
        model = load_model(model_path, custom_objects=custom_objects, safe_mode=safe_mode)
    ex = Extractor(model, layers)
    keys = list(ex.outputs)
    reducers = resolve_pool(pool, keys)
    if out is None and "paths" in keys:
        raise BadSpecError("an output named 'paths' clashes with the row ids; use another alias")
    source = make_source(
        inputs,
        model,
        batch_size=batch_size,
        preprocess=preprocess,
        size=size,
        resize=resize,
        workers=workers,
    )
    taps = {
        key: TapInfo(key, info.path, reduced_shape(reducers[key], info.shape), info.dtype)
        for key, info in ex.outputs.items()
    }
    try:
        if out is None:
            return _to_memory(ex, source, taps, reducers, progress, on_failed)
        fingerprint = run_fingerprint(
            model,
            model_path,
            {k: t.path for k, t in taps.items()},
            reducers,
            source.preprocessing,
            source.fingerprint,
        )
        attrs = {
            "model": str(model_path) if model_path is not None else model.name,
            "layers": {k: t.path for k, t in taps.items()},
            "pool": reducers,
            "preprocessing": source.preprocessing,
            "layertap_version": __version__,
            **(meta or {}),
        }
        writer = open_writer(
            out,
            taps,
            attrs,
            fingerprint=fingerprint,
            overwrite=overwrite,
            format=format,
            pool=reducers,
        )
        already_complete = writer.complete
        if writer.resumed and not writer.complete:
            log.info("resuming %s after %d rows", out, writer.resumed)
        try:
            if not writer.complete:
                bar = _progress_bar(source.total, writer.inputs_done, progress)
                with bar:
                    for batch in source.batches(start=writer.inputs_done):
                        for item in batch.failed:
                            if on_failed is not None:
                                on_failed(*item)
                            log.warning("skipped %s: %s", *item)
                        feats = _run(ex, batch.x, reducers) if len(batch.ids) else {}
                        writer.write(batch.ids, feats, batch.failed, batch.end)
                        bar.update(batch.end - bar.n)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        return ExtractResult(
            writer.path,
            writer.format,
            writer.rows,
            writer.failed,
            writer.resumed,
            writer.shapes,
            already_complete,
        )
    finally:
        source.close()


def _run(ex: Extractor, x: np.ndarray, reducers: Mapping[str, str]) -> dict[str, np.ndarray]:
    return {key: reduce(reducers[key], value) for key, value in ex(x).items()}


def _to_memory(
    ex: Extractor,
    source: Source,
    taps: Mapping[str, TapInfo],
    reducers: Mapping[str, str],
    progress: bool | None,
    on_failed: Callable[[str, str], None] | None,
) -> Features:
    parts: dict[str, list[np.ndarray]] = {key: [] for key in taps}
    ids: list[str] = []
    failed: list[tuple[str, str]] = []
    with _progress_bar(source.total, 0, progress) as bar:
        for batch in source.batches():
            for item in batch.failed:
                if on_failed is not None:
                    on_failed(*item)
                log.warning("skipped %s: %s", *item)
            failed.extend(batch.failed)
            if batch.ids:
                for key, value in _run(ex, batch.x, reducers).items():
                    parts[key].append(value)
                ids.extend(batch.ids)
            bar.update(batch.end - bar.n)
    result = Features()
    for key, info in taps.items():
        if parts[key]:
            result[key] = np.concatenate(parts[key])
        else:
            row = tuple(d or 0 for d in info.shape[1:])
            result[key] = np.zeros((0, *row), info.dtype)
    result["paths"] = np.array(ids, dtype=str)
    result.failed = failed
    return result
