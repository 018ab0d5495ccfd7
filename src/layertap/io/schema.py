"""The tap schema: one record per tap, the single source of row shapes for every writer.

A run's taps become a :class:`TapSchema` once, after the model is loaded and the
reducers are resolved: per tap its key (alias or canonical path), the canonical layer
path, the column-safe name it is stored under, the shape of one row after its reducer,
the dtype and the reducer. HDF5, NPZ and Parquet files, and both engines, read row
shapes, names and dtypes from here; :func:`parquet_schema` and :func:`parquet_table`
are the only places a Parquet feature table is described or built.

Column names (:func:`safe_name`): each ``/`` becomes ``.``, every character other than
letters, digits, ``_``, ``-``, ``.`` and ``@`` becomes ``_``, and a name that clashes
with another tap or with one of the format's own entries (:data:`RESERVED`) gets
``_2``, ``_3``, ... appended.

This module does not import Keras; a Ray write task imports it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from layertap.io.reduce import reduced_shape

__all__ = [
    "RESERVED",
    "STORAGE_DTYPES",
    "TapColumn",
    "TapInfo",
    "TapSchema",
    "parquet_schema",
    "parquet_table",
    "safe_name",
    "safe_names",
]

#: Names a tap's column may not take, per format (the files' own entries).
RESERVED = {
    "hdf5": frozenset({"paths", "failed", "progress"}),
    "npz": frozenset({"paths", "failed_path", "failed_reason", "__layertap__", "progress"}),
    "parquet": frozenset({"path", "paths", "failed", "progress"}),
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")
#: How features can be stored: ``float32`` (the taps' own dtypes) or ``float16``.
STORAGE_DTYPES = ("float32", "float16")

Shape = tuple[int | None, ...]


def _is_float(dtype: str) -> bool:
    try:
        return bool(np.issubdtype(np.dtype(dtype), np.floating))
    except TypeError:  # a dtype name numpy does not know (bfloat16)
        return "float" in dtype


def safe_name(key: str) -> str:
    """The column a tap key is stored under (before clashes are resolved).

    Example:
        >>> safe_name("backbone/block_1_conv"), safe_name("enc@1/split:0"), safe_name("my key")
        ('backbone.block_1_conv', 'enc@1.split_0', 'my_key')
    """
    name = _UNSAFE.sub("_", key.replace("/", "."))
    return "_" + name if name.startswith(".") or not name else name


def safe_names(keys: Sequence[str], reserved: frozenset[str] = frozenset()) -> dict[str, str]:
    """``{key: unique safe name}``; a clash gets ``_2``, ``_3``, ... in key order.

    Example:
        >>> safe_names(["a/b", "a.b", "paths"], reserved=frozenset({"paths"}))
        {'a/b': 'a.b', 'a.b': 'a.b_2', 'paths': 'paths_2'}
    """
    taken = set(reserved)
    names: dict[str, str] = {}
    for key in keys:
        base = safe_name(key)
        name, i = base, 2
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        names[key] = name
    return names


@dataclasses.dataclass(frozen=True)
class TapInfo:
    """What one output of an :class:`~layertap.Extractor` holds, known before any batch runs.

    Attributes:
        name: the key of this output in the result dict (alias or canonical path).
        path: the canonical path of the tapped place.
        shape: the output shape, batch dimension first (``None``).
        dtype: the output dtype name.

    Example:
        >>> TapInfo("emb", "backbone/gap", (None, 64), "float32").shape
        (None, 64)
    """

    name: str
    path: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class TapColumn:
    """One tap as every writer stores it.

    Attributes:
        key: the tap's key in results (an alias or the canonical path).
        layer: the canonical path of the tapped place.
        name: the column-safe name of its dataset or column.
        shape: one row's shape after the reducer (``None``: known at the first batch).
        dtype: the dtype name of the values.
        reducer: the reducer's name (``keep``, ``flatten``, ``avg``, ``max``, ``first``,
            ``last``).
        storage: ``"float16"`` when the run asked for float16 storage
            (:meth:`TapSchema.stored_as`): Parquet then stores ``halffloat``; else
            ``"float32"`` (Parquet lists of float32, whatever the source dtype).

    Example:
        >>> TapColumn("emb", "backbone/gap", "emb", (2, 3), "float32", "keep").size
        6
    """

    key: str
    layer: str
    name: str
    shape: Shape
    dtype: str
    reducer: str
    storage: str = "float32"

    @property
    def known(self) -> bool:
        """Every dimension of a row is known."""
        return all(d is not None for d in self.shape)

    @property
    def dims(self) -> tuple[int, ...]:
        """The row shape with an unknown dimension as 0 (the shape of no values)."""
        return tuple(0 if d is None else int(d) for d in self.shape)

    @property
    def size(self) -> int:
        """Values in one row (the Parquet list size); needs a known shape."""
        return int(np.prod(self.dims, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class TapSchema:
    """The taps of a run, in result order, for one output format.

    Example:
        >>> taps = [TapInfo("a/b", "a/b", (None, 4, 4, 8), "float32")]
        >>> s = TapSchema.build(taps, {"a/b": "avg"}, "hdf5")
        >>> [(c.key, c.name, c.shape, c.reducer) for c in s]
        [('a/b', 'a.b', (8,), 'avg')]
    """

    columns: tuple[TapColumn, ...]

    @classmethod
    def build(
        cls,
        taps: Sequence[TapInfo],
        reducers: Mapping[str, str],
        fmt: str | None,
        reserved: frozenset[str] = frozenset(),
    ) -> TapSchema:
        """From the taps (shapes as the model gives them) and ``{key: reducer}``.

        ``fmt`` picks the reserved names (``None``: results in memory, keyed by key).
        """
        keys = [t.name for t in taps]
        taken = RESERVED.get(fmt or "", frozenset()) | reserved
        names = safe_names(keys, taken) if fmt is not None else {k: k for k in keys}
        columns = []
        for t in taps:
            row = reduced_shape(reducers[t.name], t.shape)[1:]
            columns.append(TapColumn(t.name, t.path, names[t.name], row, t.dtype, reducers[t.name]))
        return cls(tuple(columns))

    def __iter__(self) -> Iterator[TapColumn]:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def known(self) -> bool:
        """Every tap's row shape is known."""
        return all(c.known for c in self.columns)

    def keys(self) -> list[str]:
        """The taps' keys, in order."""
        return [c.key for c in self.columns]

    def by_key(self) -> dict[str, TapColumn]:
        """``{key: column}``."""
        return {c.key: c for c in self.columns}

    def layers(self) -> dict[str, str]:
        """``{key: canonical layer path}``."""
        return {c.key: c.layer for c in self.columns}

    def reducers(self) -> dict[str, str]:
        """``{key: reducer}``."""
        return {c.key: c.reducer for c in self.columns}

    def with_rows(self, rows: Mapping[str, tuple[tuple[int, ...], str]]) -> TapSchema:
        """The schema with the row shapes and dtypes ``{key: (shape, dtype)}`` filled in."""
        return TapSchema(
            tuple(
                dataclasses.replace(c, shape=rows[c.key][0], dtype=rows[c.key][1])
                if c.key in rows
                else c
                for c in self.columns
            )
        )

    def with_masks(self, keys: Sequence[str], tokens: int, fmt: str | None) -> TapSchema:
        """The schema with a ``KEY.mask`` column (uint8, ``(tokens,)``) after each of ``keys``.

        Example:
            >>> s = TapSchema.build([TapInfo("h", "enc", (None, 8, 4), "float32")],
            ...                     {"h": "keep"}, "hdf5")
            >>> [(c.key, c.shape, c.dtype) for c in s.with_masks(["h"], 8, "hdf5")]
            [('h', (8, 4), 'float32'), ('h.mask', (8,), 'uint8')]
        """
        columns: list[TapColumn] = []
        for c in self.columns:
            columns.append(c)
            if c.key in keys:
                columns.append(TapColumn(c.key + ".mask", c.layer, "", (tokens,), "uint8", "mask"))
        keys_in_order = [c.key for c in columns]
        taken = RESERVED.get(fmt or "", frozenset())
        names = (
            safe_names(keys_in_order, taken) if fmt is not None else {k: k for k in keys_in_order}
        )
        return TapSchema(tuple(dataclasses.replace(c, name=names[c.key]) for c in columns))

    def stored_as(self, dtype: str) -> TapSchema:
        """The schema with every floating-point tap stored as ``dtype`` (masks unchanged).

        ``"float32"`` leaves the schema as it is (the taps' own dtypes).

        Example:
            >>> s = TapSchema.build([TapInfo("h", "enc", (None, 8, 4), "float32")],
            ...                     {"h": "keep"}, "hdf5").with_masks(["h"], 8, "hdf5")
            >>> [(c.key, c.dtype) for c in s.stored_as("float16")]
            [('h', 'float16'), ('h.mask', 'uint8')]
        """
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"unknown storage dtype {dtype!r}; valid: {', '.join(STORAGE_DTYPES)}")
        if dtype == "float32":
            return self
        return TapSchema(
            tuple(
                dataclasses.replace(c, dtype=dtype, storage=dtype) if _is_float(c.dtype) else c
                for c in self.columns
            )
        )

    def cast(self, features: Mapping[str, Any]) -> dict[str, Any]:
        """``features`` with each tap's values in its column's dtype, where they differ
        and that dtype is float16 (the values a float16 run stores).

        Example:
            >>> s = TapSchema.build([TapInfo("e", "e", (None, 2), "float32")], {"e": "keep"},
            ...                     None).stored_as("float16")
            >>> s.cast({"e": np.ones((1, 2), "float32")})["e"].dtype
            dtype('float16')
        """
        out = dict(features)
        for c in self.columns:
            value = out.get(c.key)
            if c.dtype == "float16" and value is not None and np.asarray(value).dtype != np.float16:
                out[c.key] = np.asarray(value).astype(np.float16)
        return out

    def taps_attribute(self, rows: int) -> dict[str, dict[str, Any]]:
        """The files' ``taps`` record: ``{key: {dataset, layer, shape (rows first), dtype, pool}}``.

        Example:
            >>> s = TapSchema.build([TapInfo("e", "e", (None, 2), "float32")], {"e": "avg"},
            ...                     "parquet")
            >>> s.taps_attribute(5)["e"]["shape"]
            [5, 2]
        """
        return {
            c.key: {
                "dataset": c.name,
                "layer": c.layer,
                "shape": [rows, *c.shape],
                "dtype": c.dtype,
                "pool": c.reducer,
            }
            for c in self.columns
        }


def parquet_schema(schema: TapSchema, metadata: Mapping[str, Any] | None = None) -> Any:
    """The Parquet schema of a feature file (every engine writes exactly this).

    A ``path`` column (string), then one column per tap: a fixed-size list of float32
    (``halffloat`` for a run that stores float16: :attr:`TapColumn.storage`) holding the
    row flattened in C order,
    whose field metadata records the tap's
    ``key``, ``layer``, ``shape`` and source ``dtype``. ``metadata`` goes, as JSON,
    under the schema metadata key ``layertap``.

    Example:
        >>> s = TapSchema.build([TapInfo("emb", "embedding", (None, 2, 3), "float32")],
        ...                     {"emb": "keep"}, "parquet")
        >>> p = parquet_schema(s)
        >>> [(f.name, str(f.type)) for f in p]
        [('path', 'string'), ('emb', 'fixed_size_list<item: float>[6]')]
        >>> json.loads(p.field("emb").metadata[b"shape"])
        [2, 3]
    """
    import pyarrow as pa

    fields = [pa.field("path", pa.string(), nullable=False)]
    for c in schema:
        fields.append(
            pa.field(
                c.name,
                pa.list_(pa.float16() if c.storage == "float16" else pa.float32(), c.size),
                nullable=False,
                metadata={
                    "key": c.key,
                    "layer": c.layer,
                    "shape": json.dumps(list(c.shape)),
                    "dtype": c.dtype,
                },
            )
        )
    return pa.schema(fields, metadata={"layertap": json.dumps(dict(metadata or {}))})


def parquet_table(
    arrow_schema: Any, schema: TapSchema, paths: Sequence[str], values: Mapping[str, Any]
) -> Any:
    """One ``pyarrow.Table`` of rows: ``paths`` and ``{column name: array (rows first)}``.

    Example:
        >>> s = TapSchema.build([TapInfo("e", "e", (None, 2), "float32")], {"e": "keep"},
        ...                     "parquet")
        >>> t = parquet_table(parquet_schema(s), s, ["a.png"], {"e": np.ones((1, 2))})
        >>> t.num_rows, t["e"].to_pylist()
        (1, [[1.0, 1.0]])
    """
    import pyarrow as pa

    arrays = [pa.array(list(paths), pa.string())]
    for c in schema:
        stored = np.float16 if c.storage == "float16" else np.float32
        flat = np.asarray(values[c.name], dtype=stored).reshape(-1)
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), c.size))
    return pa.Table.from_arrays(arrays, schema=arrow_schema)
