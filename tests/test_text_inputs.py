"""Text files through TextSource: every format, row ids, bad rows reported and skipped,
and a start index for a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layertap import BadInputError
from layertap.io.data import InputOptions, TextSource, expand_text_inputs, make_source


def encode(texts: list[str]) -> dict[str, np.ndarray]:
    """A stand-in tokenizer: one id per word (its length), padded to 4, with a mask."""
    ids = np.zeros((len(texts), 4), "int32")
    mask = np.zeros((len(texts), 4), bool)
    for i, text in enumerate(texts):
        words = text.split()[:4]
        ids[i, : len(words)] = [len(w) for w in words]
        mask[i, : len(words)] = True
    return {"token_ids": ids, "padding_mask": mask}


def collect(source: TextSource, start: int = 0) -> tuple[list[str], np.ndarray, list]:
    ids, rows, failed = [], [], []
    for batch in source.batches(start=start):
        ids.extend(batch.ids)
        failed.extend(batch.failed)
        if batch.ids:
            rows.append(batch.x["token_ids"])
    return ids, np.concatenate(rows) if rows else np.zeros((0, 4)), failed


def test_txt_lines_with_bad_rows(tmp_path: Path) -> None:
    f = tmp_path / "lines.txt"
    f.write_bytes(b"a cat sat\n\n   \nthe dog\r\nbad \xff byte\nlast line")
    source = TextSource([f], encode, batch_size=2)
    ids, x, failed = collect(source)
    assert ids == [f"{f}:1", f"{f}:4", f"{f}:6"]
    np.testing.assert_array_equal(x, [[1, 3, 3, 0], [3, 3, 0, 0], [4, 4, 0, 0]])
    assert [i for i, _ in failed] == [f"{f}:2", f"{f}:3", f"{f}:5"]
    assert failed[0][1] == "empty text" and "not UTF-8" in failed[2][1]
    assert source.total == 6
    ids_rest, _, failed_rest = collect(source, start=3)  # resume after three rows
    assert ids_rest == [f"{f}:4", f"{f}:6"] and [i for i, _ in failed_rest] == [f"{f}:5"]


def test_jsonl_csv_parquet_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    lines = [{"body": "one two"}, {"other": 1}, "not json", {"body": None}, {"body": "three"}]
    jl = tmp_path / "a.jsonl"
    jl.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    ids, x, failed = collect(TextSource([jl], encode, text_column="body"))
    assert ids == [f"{jl}:1", f"{jl}:5"]
    assert [r for _, r in failed] == ["no 'body' field", failed[1][1], "no text (null)"]
    assert failed[1][1].startswith("not JSON")
    csv_file = tmp_path / "b.csv"
    csv_file.write_text('id,body\n1,"hello, world"\n2,\n3,bye\n')
    ids, x, failed = collect(TextSource([csv_file], encode, text_column="body"))
    assert ids == [f"{csv_file}:2", f"{csv_file}:4"] and failed == [(f"{csv_file}:3", "empty text")]
    np.testing.assert_array_equal(x[0], [6, 5, 0, 0])
    with pytest.raises(BadInputError, match=r"columns \['id', 'body'\], not 'text'"):
        TextSource([csv_file], encode)
    pf = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["x y z", None, "w"]}), pf)
    ids, x, failed = collect(TextSource([pf], encode))
    assert ids == [f"{pf}#0", f"{pf}#2"] and failed == [(f"{pf}#1", "no text (null)")]


def test_strings_are_texts_and_paths_are_files(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("bee\n")
    (tmp_path / "d" / "a.txt").write_text("ant\n")
    (tmp_path / "d" / "skip.md").write_text("not text input\n")
    assert [p.name for p in expand_text_inputs([tmp_path / "d"])] == ["a.txt", "b.txt"]
    source = make_source(["first text", tmp_path / "d", "last"], None, encode=encode)
    ids, _, _ = collect(source)  # type: ignore[arg-type]
    assert ids == ["text[0]", f"{tmp_path / 'd' / 'a.txt'}:1", f"{tmp_path / 'd' / 'b.txt'}:1",
                   "text[1]"]  # fmt: skip
    one_file = make_source(str(tmp_path / "d" / "a.txt"), None, encode=encode)
    assert one_file.total == 1 and one_file.fingerprint is not None
    with pytest.raises(BadInputError, match="'just a sentence' does not exist"):
        make_source("just a sentence", None, InputOptions(), encode=encode)  # one str: a file
