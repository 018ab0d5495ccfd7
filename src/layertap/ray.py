"""layertap on Ray Data: the same extraction as :func:`layertap.extract`, on a cluster.

Example:
    >>> import layertap.ray  # doctest: +SKIP
    >>> r = layertap.ray.extract_parquet("model.keras", ["s3://bucket/photos/"],
    ...                                  {"emb": "gap"}, "s3://bucket/feats/",
    ...                                  concurrency=8)  # doctest: +SKIP

:func:`extract_parquet` writes a directory of Parquet parts (resumable);
:func:`extract_dataset` returns a lazy ``ray.data.Dataset``; :class:`FeatureMapper`
is the callable class for your own ``Dataset.map_batches``. Needs
``pip install 'layertap[ray]'``. The engine itself is :mod:`layertap.engines.ray`.
"""

from __future__ import annotations

from layertap.engines.ray import (
    FAILED_COLUMN,
    MAX_RETRIES,
    FeatureMapper,
    RayResult,
    extract_dataset,
    extract_parquet,
)

__all__ = [
    "FAILED_COLUMN",
    "MAX_RETRIES",
    "FeatureMapper",
    "RayResult",
    "extract_dataset",
    "extract_parquet",
]
