"""Reduction that streams (issue 18, part 5): ``layertap.reduce`` and ``layertap reduce``.

Keras-free: the feature files are written with layertap's own writer. The PCA equals
scikit-learn's ``IncrementalPCA`` run in memory with the same batches, the projection
equals ``GaussianRandomProjection``'s transform; rows, paths, failed inputs and the run's
attributes are carried over in each format; ``using=`` reproduces; and the reader is only
ever asked for chunks of ``chunk`` rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("sklearn")
pytest.importorskip("pyarrow.parquet")

from sklearn.decomposition import PCA, IncrementalPCA  # noqa: E402
from sklearn.random_projection import GaussianRandomProjection  # noqa: E402

import layertap  # noqa: E402
from layertap.analysis.reduction import load_reducers  # noqa: E402
from layertap.cli import cli  # noqa: E402
from layertap.io.read import FeatureReader, open_features  # noqa: E402
from layertap.io.schema import TapInfo, TapSchema  # noqa: E402
from layertap.io.write import open_writer  # noqa: E402

ROWS = 53
FORMATS = ["h5", "npz", "parquet"]


def _arrays(rows: int = ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(6, 4 * 4 * 3))  # a low-rank map plus noise: PCA has a subspace
    conv = (rng.normal(size=(rows, 6)) * [5, 4, 3, 2, 1, 0.5]) @ basis
    conv = conv + 0.05 * rng.normal(size=conv.shape)
    return {
        "backbone/conv": conv.reshape(rows, 4, 4, 3).astype("float32"),
        "emb": rng.normal(size=(rows, 20)).astype("float32"),
        "logits": rng.normal(size=(rows, 3)).astype("float32"),
    }


def write_features(path: Path, arrays: dict[str, np.ndarray], batch: int = 10) -> Path:
    """A feature file as extract writes it: taps, paths, one failed input, attributes."""
    taps = [TapInfo(k, k, (None, *v.shape[1:]), v.dtype.name) for k, v in arrays.items()]
    fmt = {"h5": "hdf5", "npz": "npz", "parquet": "parquet"}[path.suffix[1:]]
    schema = TapSchema.build(taps, {k: "keep" for k in arrays}, fmt)
    meta = {"model": "m.keras", "layers": ["backbone/conv", "emb", "logits"], "note": "kept"}
    w = open_writer(path, schema, meta, fingerprint={"run": path.name})
    rows = len(next(iter(arrays.values())))
    for i in range(0, rows, batch):
        ids = [f"img_{j}.png" for j in range(i, min(i + batch, rows))]
        failed = [("broken.png", "cannot identify image file")] if i == 0 else []
        w.write(ids, {k: v[i : i + batch] for k, v in arrays.items()}, failed=failed)
    w.close()
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reduce")
    return {fmt: write_features(d / f"f.{fmt}", _arrays()) for fmt in FORMATS}


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pca_equals_incremental_pca_in_memory(files: dict[str, Path], tmp_path: Path, fmt: str):
    x = _flat(_arrays()["backbone/conv"])
    out = tmp_path / f"r.{fmt}"
    result = layertap.reduce(files[fmt], out, pca=5, chunk=12)
    # 53 rows in chunks of 12: the last 5 rows (fewer than K? no: 5 = K) are a batch of their own
    want = IncrementalPCA(n_components=5, batch_size=12).fit(x)
    with open_features(out) as r:
        np.testing.assert_allclose(r.read("backbone/conv"), want.transform(x), rtol=1e-4, atol=1e-4)
        assert r.shape("backbone/conv") == (5,) and r.shape("emb") == (5,)
        np.testing.assert_array_equal(r.read("logits"), _arrays()["logits"])  # 3 <= 5: copied
        np.testing.assert_allclose(
            r.attached("reduction/backbone.conv/explained_variance_ratio"),
            want.explained_variance_ratio_,
            rtol=1e-5,
        )
    assert list(result) == ["backbone/conv", "emb"] and result.copied == ("logits",)
    assert result["backbone/conv"].shape == (4, 4, 3) and result["backbone/conv"].dim == 48
    assert result["backbone/conv"].explained > 0.99
    # ... and close to the full PCA's subspace
    full = PCA(5).fit(x)
    overlap = np.linalg.svd(want.components_ @ full.components_.T, compute_uv=False)
    assert overlap.min() > 0.999


def test_a_short_last_chunk_is_folded_as_fit_does(tmp_path: Path) -> None:
    x = _arrays()["emb"]
    layertap.reduce({"emb": x}, tmp_path / "r.h5", pca=8, chunk=15)  # last chunk: 8 rows, then
    layertap.reduce({"emb": x}, tmp_path / "s.h5", pca=9, chunk=15)  # 8 < 9: folded
    for name, k in (("r.h5", 8), ("s.h5", 9)):
        want = IncrementalPCA(n_components=k, batch_size=15).fit(x).transform(x)
        got = open_features(tmp_path / name).read("emb")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_projection_equals_gaussian_random_projection(
    files: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    x = _flat(_arrays()["backbone/conv"])
    out = tmp_path / f"p.{fmt}"
    result = layertap.reduce(files[fmt], out, projection=7, layers=["backbone/conv"], seed=4)
    want = GaussianRandomProjection(7, random_state=4).fit(x)
    with open_features(out) as r:
        np.testing.assert_allclose(r.read("backbone/conv"), want.transform(x), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(r.attached("reduction/backbone.conv/components"),
                                      want.components_)  # fmt: skip
        np.testing.assert_array_equal(r.read("emb"), _arrays()["emb"])  # not listed: copied
    assert result["backbone/conv"].seed == 4 and result.copied == ("emb", "logits")


@pytest.mark.parametrize("fmt", FORMATS)
def test_rows_paths_failed_and_metadata_are_carried_over(
    files: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"r.{fmt}"
    layertap.reduce(files[fmt], out, pca=4, chunk=20)
    with open_features(files[fmt]) as src, open_features(out) as dst:
        assert dst.rows == src.rows == ROWS and dst.keys == src.keys
        assert dst.paths.tolist() == src.paths.tolist() == [f"img_{i}.png" for i in range(ROWS)]
        assert dst.failed == src.failed == [("broken.png", "cannot identify image file")]
        assert dst.layer("backbone/conv") == "backbone/conv" and dst.complete
        assert dst.attrs["model"] == "m.keras" and dst.attrs["note"] == "kept"
        record = json.loads(dst.attrs["reduction"])
        assert record["method"] == "pca" and record["components"] == 4 and record["chunk"] == 20
        assert record["source"] == src.source and record["copied"] == ["logits"]
        assert record["layers"]["backbone/conv"]["shape"] == [4, 4, 3]
        assert record["source_fingerprint"] == src.attrs["fingerprint"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_using_reproduces(files: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    first = tmp_path / f"train.{fmt}"
    layertap.reduce(files[fmt], first, pca=5, chunk=16)
    again = tmp_path / f"again.{fmt}"
    result = layertap.reduce(files[fmt], again, using=first, chunk=7)
    assert list(result) == ["backbone/conv", "emb"] and result.using == str(first)
    with open_features(first) as a, open_features(again) as b:
        for key in a.keys:
            np.testing.assert_array_equal(a.read(key), b.read(key))
    # another file (a test set) reduced the same way: the stored components, applied
    test = write_features(tmp_path / f"test.{fmt}", _arrays(rows=9, seed=5))
    layertap.reduce(test, tmp_path / f"test_r.{fmt}", using=first, layers=["emb"])
    fitted = load_reducers(first)
    assert type(fitted["emb"]).__name__ == "IncrementalPCA"
    got = open_features(tmp_path / f"test_r.{fmt}")
    np.testing.assert_allclose(got.read("emb"), fitted["emb"].transform(_arrays(9, 5)["emb"]),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    assert got.shape("backbone/conv") == (4, 4, 3)


def test_projection_using_reproduces_across_formats(files: dict[str, Path], tmp_path: Path):
    layertap.reduce(files["h5"], tmp_path / "p.parquet", projection=6, seed=2)
    layertap.reduce(files["npz"], tmp_path / "q.h5", using=tmp_path / "p.parquet")
    a, b = open_features(tmp_path / "p.parquet"), open_features(tmp_path / "q.h5")
    for key in ("backbone/conv", "emb"):
        np.testing.assert_allclose(a.read(key), b.read(key), rtol=1e-6)


def test_memory_is_bounded_by_the_chunk(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, int]] = []
    given: list[int] = []
    chunks = FeatureReader.chunks

    def spy(self: FeatureReader, key: str, rows: int = 4096) -> Any:
        asked.append((key, rows))
        for block in chunks(self, key, rows):
            given.append(len(block))
            yield block

    def whole(self: FeatureReader, key: str) -> Any:
        raise AssertionError(f"read({key!r}) holds a whole tap")

    monkeypatch.setattr(FeatureReader, "chunks", spy)
    monkeypatch.setattr(FeatureReader, "read", whole)
    layertap.reduce(files["h5"], tmp_path / "r.npz", pca=4, chunk=8)
    assert asked and {rows for _, rows in asked} == {8}
    assert max(given) == 8
    # the fit reads each reduced tap once, the transform every tap once
    assert sorted(k for k, _ in asked) == sorted(["backbone/conv", "emb", "backbone/conv", "emb",
                                                   "logits"])  # fmt: skip


def test_errors_name_the_layer(files: dict[str, Path], tmp_path: Path) -> None:
    h5 = files["h5"]
    with pytest.raises(layertap.LayertapError, match=r"pca=10 is more than the 3 .*'logits'"):
        layertap.reduce(h5, tmp_path / "a.h5", pca=10, layers=["logits"])
    with pytest.raises(layertap.LayertapError, match=r"pca=15 is more than the 9 rows of 'emb'"):
        small = write_features(tmp_path / "small.h5", _arrays(rows=9))
        layertap.reduce(small, tmp_path / "b.h5", pca=15, layers=["emb"])
    with pytest.raises(layertap.FeatureFileError, match=r"no key 'embb' \(close: emb\)"):
        layertap.reduce(h5, tmp_path / "c.h5", pca=2, layers=["embb"])
    layertap.reduce(h5, tmp_path / "only_emb.h5", pca=2, layers=["emb"])
    with pytest.raises(layertap.FeatureFileError, match=r"no components for 'logits' .*: emb\)"):
        layertap.reduce(h5, tmp_path / "d.h5", using=tmp_path / "only_emb.h5", layers=["logits"])
    with pytest.raises(layertap.FeatureFileError, match="holds no reduction"):
        layertap.reduce(h5, tmp_path / "e.h5", using=h5)
    with pytest.raises(layertap.BadSpecError, match="one of pca=K or projection=K"):
        layertap.reduce(h5, tmp_path / "f.h5", pca=2, projection=2)
    with pytest.raises(layertap.OutputError, match="the source itself"):
        layertap.reduce(h5, h5, pca=2)
    with pytest.raises(layertap.OutputError, match="unknown suffix"):
        layertap.reduce(h5, tmp_path / "g.bin", pca=2)


def test_an_existing_dst_is_refused_unless_overwrite(files: dict[str, Path], tmp_path: Path):
    out = tmp_path / "r.h5"
    layertap.reduce(files["h5"], out, pca=3)
    assert layertap.reduce(files["h5"], out, pca=3).already_complete
    with pytest.raises(layertap.OutputError, match="different run"):
        layertap.reduce(files["h5"], out, pca=4)
    assert open_features(layertap.reduce(files["h5"], out, pca=4, overwrite=True).path).shape(
        "emb"
    ) == (4,)


def _run(*args: Any) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli(files: dict[str, Path], tmp_path: Path) -> None:
    done = _run("reduce", files["parquet"], tmp_path / "r.h5", "--pca", 4, "--chunk", 10)
    assert done.exit_code == 0, done.output
    assert "backbone/conv  pca" in done.output and "logits         copied" in done.output
    assert "of the variance" in done.output
    done = _run("reduce", files["h5"], tmp_path / "p.npz", "--projection", 5, "-l", "emb", "-q")
    assert done.exit_code == 0 and done.output == ""
    assert open_features(tmp_path / "p.npz").shape("emb") == (5,)
    done = _run("reduce", files["npz"], tmp_path / "u.parquet", "--using", tmp_path / "r.h5")
    assert done.exit_code == 0, done.output
    np.testing.assert_allclose(open_features(tmp_path / "u.parquet").read("emb"),
                               open_features(tmp_path / "r.h5").read("emb"), rtol=1e-5)  # fmt: skip
    for args, message in (
        (("--pca", 100, "-l", "emb"), "pca=100 is more than the 20 values per row of 'emb'"),
        (("--pca", 2, "-l", "nope"), "has no key 'nope'"),
        ((), "give one of pca=K or projection=K"),
        (("--using", files["h5"]), "holds no reduction"),
    ):
        done = _run("reduce", files["h5"], tmp_path / "x.h5", *args)
        assert done.exit_code == 2, done.output
        lines = done.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("layertap: error: ") and message in lines[0]


@pytest.mark.parametrize("fmt", ["h5", "npz"])
def test_an_interrupted_reduction_resumes_to_the_clean_result(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    from layertap.io.write import FeatureWriter

    clean = tmp_path / f"clean.{fmt}"
    layertap.reduce(files["h5"], clean, pca=4, chunk=10)
    write, calls = FeatureWriter.write, []

    def dies_on_the_third(self: FeatureWriter, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(self, *args, **kwargs)

    out = tmp_path / f"r.{fmt}"
    monkeypatch.setattr(FeatureWriter, "write", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        layertap.reduce(files["h5"], out, pca=4, chunk=10)
    monkeypatch.setattr(FeatureWriter, "write", write)
    layertap.reduce(files["h5"], out, pca=4, chunk=10)
    with open_features(clean) as a, open_features(out) as b:
        assert b.paths.tolist() == a.paths.tolist() and b.failed == a.failed
        for key in a.keys:
            np.testing.assert_array_equal(a.read(key), b.read(key))
        assert b.attached_names == a.attached_names
