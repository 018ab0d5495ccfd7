"""From features to answers: the chunked reader, probes and similarity (issue 18).

One tiny model's features, written by ``layertap.extract`` as HDF5, NPZ and Parquet
(and a Ray output folder made by the Ray engine's own writers), are read back through
``open_features``; the probe's folds equal scikit-learn's ``cross_val_score``; CKA and
RSA equal the formulas written out here and the published reference numbers.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("sklearn")
pq = pytest.importorskip("pyarrow.parquet")

import layertap  # noqa: E402
from layertap.analysis.similarity import cka, hsic  # noqa: E402
from layertap.cli import cli  # noqa: E402
from layertap.io.read import open_features  # noqa: E402
from layertap.io.schema import TapInfo, TapSchema  # noqa: E402
from layertap.io.write import open_writer  # noqa: E402

ROWS = 23
LAYERS = {"seq": "seq", "out": "out"}


def tiny_model() -> keras.Model:
    inp = keras.Input((4, 3))
    h = keras.layers.Dense(5, activation="tanh", name="seq")(inp)
    out = keras.layers.Dense(3, name="out")(keras.layers.Flatten(name="flat")(h))
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """In-memory features and the same run written as .h5, .npz and .parquet."""
    d = tmp_path_factory.mktemp("answers")
    keras.utils.set_random_seed(3)
    model = tiny_model()
    x = np.random.default_rng(1).normal(size=(ROWS, 4, 3)).astype("float32")
    found: dict[str, Any] = {"memory": layertap.extract(model, x, LAYERS, batch_size=5)}
    for suffix in ("h5", "npz", "parquet"):
        found[suffix] = layertap.extract(model, x, LAYERS, d / f"f.{suffix}", batch_size=5)
    return found


# --- the reader -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["h5", "npz", "parquet"])
def test_reader_gives_back_what_extract_wrote(written: dict[str, Any], fmt: str) -> None:
    memory = written["memory"]
    for source in (written[fmt], written[fmt].path, str(written[fmt].path)):
        with open_features(source) as r:
            assert r.keys == ["seq", "out"] and r.rows == ROWS and r.complete
            assert r.shape("seq") == (4, 5) and r.shape("out") == (3,)
            assert r.dtype("seq") == "float32" and r.layer("out") == "out"
            assert r.paths.tolist() == [f"array[{i}]" for i in range(ROWS)]
            assert r.masks == {} and r.mask("seq") is None and r.failed == []
            for key in LAYERS:
                np.testing.assert_allclose(r.read(key), memory[key], rtol=1e-6)
    assert open_features(memory).paths.tolist() == memory["paths"].tolist()


@pytest.mark.parametrize("fmt", ["memory", "h5", "npz", "parquet"])
@pytest.mark.parametrize("rows", [1, 4, 5, ROWS, ROWS + 10])
def test_chunks_are_consecutive_blocks_of_rows(
    written: dict[str, Any], fmt: str, rows: int
) -> None:
    r = open_features(written[fmt])
    chunks = list(r.chunks("seq", rows=rows))
    sizes = [len(c) for c in chunks]
    assert sizes == [rows] * (ROWS // rows) + ([ROWS % rows] if ROWS % rows else [])
    assert all(c.shape[1:] == (4, 5) and c.dtype == np.float32 for c in chunks)
    np.testing.assert_allclose(np.concatenate(chunks), written["memory"]["seq"], rtol=1e-6)
    with pytest.raises(layertap.FeatureFileError, match="at least 1"):
        r.chunks("seq", rows=0)


def test_npz_arrays_are_memory_mapped(written: dict[str, Any]) -> None:
    r = open_features(written["npz"])
    chunk = next(r.chunks("out", rows=3))
    assert isinstance(chunk, np.memmap) and chunk.shape == (3, 3)


def test_masks_and_an_interrupted_hdf5(tmp_path: Path) -> None:
    schema = TapSchema.build([TapInfo("h", "enc", (None, 3, 2), "float32")], {"h": "keep"}, "hdf5")
    schema = schema.with_masks(["h"], 3, "hdf5")
    w = open_writer(tmp_path / "f.h5", schema, {"model": "m"}, fingerprint={"run": 1})
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.uint8)
    w.write(["a", "b"], {"h": np.ones((2, 3, 2), "float32"), "h.mask": mask})
    w.abort()  # as if killed: committed rows are readable, the file is not complete
    r = open_features(tmp_path / "f.h5")
    assert r.keys == ["h"] and r.masks == {"h": "h.mask"} and not r.complete
    assert r.rows == 2 and r.mask("h").tolist() == mask.tolist()
    arrays = open_features({"h": np.zeros((2, 3, 2)), "h.mask": mask})
    assert arrays.keys == ["h"] and arrays.mask("h").tolist() == mask.tolist()


def test_ray_folder(tmp_path: Path) -> None:
    """A folder laid out by the Ray engine's own part and summary writers."""
    from layertap.engines.ray import _write_part, _write_summary

    schema = TapSchema.build([TapInfo("emb", "gap", (None, 2, 2), "float32")], {"emb": "keep"},
                             "parquet")  # fmt: skip
    out = str(tmp_path / "ray")
    attrs = {"model": "m.keras"}
    values = np.arange(28, dtype="float32").reshape(7, 2, 2)
    parts = []
    for name, rows in (
        ("part-00000-a.parquet", slice(0, 4)),
        ("part-00001-b.parquet", slice(4, 7)),
    ):
        ids = [f"img{i}.png" for i in range(7)][rows]
        Path(out).mkdir(exist_ok=True)
        _write_part(out, name, schema, {"rows": len(ids)}, ids, {"emb": values[rows]})
        parts.append({"file": name, "rows": len(ids), "failed": [("bad.png", "no such file")][:1 if
                      name.startswith("part-00001") else 0]})  # fmt: skip
    with pytest.raises(layertap.FeatureFileError, match="did not finish"):
        open_features(out)
    _write_summary(out, attrs, schema, parts)
    r = open_features(out)
    assert r.format == "ray" and r.rows == 7 and r.keys == ["emb"] and r.shape("emb") == (2, 2)
    assert r.paths.tolist() == [f"img{i}.png" for i in range(7)]
    assert r.failed == [("bad.png", "no such file")] and r.attrs["model"] == "m.keras"
    assert [len(c) for c in r.chunks("emb", rows=3)] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(list(r.chunks("emb", rows=3))), values)


def test_sources_that_are_not_ours(tmp_path: Path, written: dict[str, Any]) -> None:
    import h5py
    import pyarrow as pa

    (tmp_path / "notes.txt").write_text("hello")
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as zf:
        zf.writestr("x.npy", b"")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other.parquet")
    (tmp_path / "folder").mkdir()
    for name, why in [
        ("notes.txt", "neither HDF5, NPZ nor Parquet"),
        ("other.npz", "without layertap's __layertap__"),
        ("other.h5", "without layertap's taps"),
        ("other.parquet", "without layertap's schema metadata"),
        ("folder", "without _layertap.json"),
        ("missing.h5", "no such feature file"),
    ]:
        with pytest.raises(layertap.FeatureFileError, match=why) as info:
            open_features(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    r = open_features(written["h5"])
    with pytest.raises(
        layertap.FeatureFileError, match=r"no key 'sequ' \(close: seq\); its keys: seq, out"
    ):
        r.read("sequ")
    with pytest.raises(layertap.FeatureFileError, match=r"one row count \(a: 3, b: 2\)"):
        open_features({"a": np.zeros(3), "b": np.zeros(2)})
    with pytest.raises(layertap.FeatureFileError, match="cannot read features from a int"):
        open_features(3)


# --- probes -------------------------------------------------------------------------------


def _classes(n: int = 60, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    signal = np.eye(3)[y] * 1.5 + rng.normal(size=(n, 3))
    return {
        "noise": rng.normal(size=(n, 4)),
        "signal": signal,
        "maps": rng.normal(size=(n, 2, 3)),
    }, y


def test_probe_folds_equal_cross_val_score() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats, y = _classes()
    result = layertap.probe(feats, y, cv=4, seed=7)
    assert list(result) == ["noise", "signal", "maps"] and result.best == "signal"
    for key, x in feats.items():
        expected = cross_val_score(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
            x.reshape(len(x), -1), y,
            cv=StratifiedKFold(4, shuffle=True, random_state=7), scoring="accuracy",
        )  # fmt: skip
        assert result[key].folds == tuple(expected)
        assert result[key].mean == pytest.approx(expected.mean())
        assert result[key].std == pytest.approx(expected.std())
        assert result[key].dim == x[0].size and result[key].projected is None
    table = result.table()
    assert "signal" in table and table.splitlines()[3].endswith("<- best")
    assert result.plot().png[:4] == b"\x89PNG" and "<img" in result._repr_html_()
    assert json.loads(json.dumps(result.to_dict()))["best"] == "signal"


def test_float_labels_are_a_ridge_regression() -> None:
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    y = x @ rng.normal(size=5) + 0.1 * rng.normal(size=40)
    result = layertap.probe({"x": x}, y, cv=5)
    expected = cross_val_score(make_pipeline(StandardScaler(), Ridge()), x, y, scoring="r2",
                               cv=KFold(5, shuffle=True, random_state=0))  # fmt: skip
    assert result.metric == "r2" and result.classes is None
    assert result["x"].folds == tuple(expected)


def test_wide_layers_are_randomly_projected_first() -> None:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.random_projection import GaussianRandomProjection

    from layertap.analysis.probe import default_estimator

    feats, y = _classes()
    wide = np.concatenate([feats["signal"], np.random.default_rng(2).normal(size=(60, 37))], 1)
    result = layertap.probe({"wide": wide}, y, cv=3, max_dim=16, seed=1)
    projected = GaussianRandomProjection(16, random_state=1).fit_transform(wide)
    expected = cross_val_score(default_estimator(False), projected, y, scoring="accuracy",
                               cv=StratifiedKFold(3, shuffle=True, random_state=1))  # fmt: skip
    assert result["wide"].folds == tuple(expected)
    assert (result["wide"].dim, result["wide"].projected) == (40, 16)
    assert "40 -> 16 (random projection)" in result.table()


def test_labels_from_csv_and_json_by_path(tmp_path: Path) -> None:
    feats, y = _classes()
    paths = [f"img/{i}.png" for i in range(len(y))]
    order = np.random.default_rng(0).permutation(len(y))
    (tmp_path / "l.csv").write_text(
        "path,label\n" + "".join(f"{paths[i]},c{y[i]}\n" for i in order)
    )
    (tmp_path / "l.json").write_text(json.dumps({paths[i]: int(y[i]) for i in order}))
    with_paths = {**feats, "paths": np.array(paths)}
    from_array = layertap.probe(with_paths, y, cv=3)
    for name in ("l.csv", "l.json"):
        result = layertap.probe(with_paths, tmp_path / name, cv=3)
        assert {k: v.folds for k, v in result.items()} == {
            k: v.folds for k, v in from_array.items()
        }


def test_labels_that_do_not_fit_are_one_line_errors(tmp_path: Path) -> None:
    feats, y = _classes(12)
    feats["paths"] = np.array([f"{i}.png" for i in range(12)])
    (tmp_path / "short.csv").write_text("".join(f"{i}.png,{i % 2}\n" for i in range(10)))
    (tmp_path / "other.json").write_text(json.dumps({f"{i}.jpg": i % 2 for i in range(12)}))
    cases = [
        (y[:5], r"5 labels for 12 rows"),
        (tmp_path / "short.csv", r"no label for 2 of 12 rows \('10.png', '11.png'\)"),
        (
            tmp_path / "other.json",
            r"12 labelled paths are not rows \('0.jpg', '1.jpg', '2.jpg' and 9",
        ),
        (np.zeros(12, int), r"one class only \(0\)"),
        (np.arange(12) % 2, r"class 0 has 6 rows, fewer than the cv=7 folds"),
        (tmp_path / "l.txt", r"no such label file"),
    ]
    for labels, message in cases:
        with pytest.raises(layertap.LabelError, match=message) as info:
            layertap.probe(feats, labels, cv=7 if "cv=7" in message else 3)
        assert "\n" not in str(info.value)


# --- similarity ---------------------------------------------------------------------------


def _written_out_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. (5): centred features, Frobenius norms."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def _written_out_hsic1(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al. (2012), eq. (5), term by term."""
    n = len(x)
    k, lm = x @ x.T, y @ y.T
    np.fill_diagonal(k, 0)
    np.fill_diagonal(lm, 0)
    one = np.ones(n)
    return float(
        (np.trace(k @ lm) + (one @ k @ one) * (one @ lm @ one) / ((n - 1) * (n - 2))
         - 2 / (n - 2) * one @ k @ lm @ one) / (n * (n - 3))
    )  # fmt: skip


def test_cka_reproduces_the_reference_notebook() -> None:
    """google-research representation_similarity demo: 0.55761 linear, 0.51346 debiased."""
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    assert cka(x, y) == pytest.approx(0.55761, abs=5e-6)
    assert cka(x, y, unbiased=True) == pytest.approx(0.51346, abs=5e-6)
    assert cka(x, y) == pytest.approx(_written_out_cka(x, y), rel=1e-12)
    assert hsic(x, y, unbiased=True) == pytest.approx(_written_out_hsic1(x, y), rel=1e-10)
    s = layertap.similarity({"x": x}, {"y": y}, unbiased=True)
    assert s.matrix.shape == (1, 1) and s["x", "y"] == pytest.approx(0.51346, abs=5e-6)


def test_cka_invariances() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 12)), rng.normal(size=(80, 7))
    q = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    base = cka(x, y)
    for unbiased in (False, True):
        assert cka(x, x, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)
        ref = cka(x, y, unbiased=unbiased)
        assert cka(x @ q, y, unbiased=unbiased) == pytest.approx(ref, rel=1e-10)
        assert cka(3.7 * x, y, unbiased=unbiased) == pytest.approx(ref, rel=1e-10)
    stretched = x * np.linspace(0.1, 10, 12)  # a general (non-orthogonal) linear map
    assert abs(cka(stretched, y) - base) > 1e-3
    s = layertap.similarity({"x": x, "xq": 2 * x @ q, "y": y})
    assert s.rows == s.cols == ("x", "xq", "y")
    np.testing.assert_allclose(np.diag(s.matrix), 1.0, atol=1e-12)
    np.testing.assert_allclose(s.matrix, s.matrix.T, atol=1e-12)
    assert s["x", "xq"] == pytest.approx(1.0, abs=1e-12)
    assert s["x", "y"] == pytest.approx(_written_out_cka(x, y), rel=1e-10)


def test_minibatch_cka() -> None:
    """Nguyen et al. (2021): block HSIC sums; one block of n is the whole-data estimate."""
    rng = np.random.default_rng(0)
    n = 2000
    x = rng.normal(size=(n, 20))
    y = x @ rng.normal(size=(20, 15)) + 2 * rng.normal(size=(n, 15))
    whole = cka(x, y, unbiased=True)
    one_block = layertap.similarity({"x": x}, {"y": y}, unbiased=True, batch_size=n)
    assert one_block["x", "y"] == pytest.approx(whole, rel=1e-10)
    unbiased = layertap.similarity({"x": x}, {"y": y}, unbiased=True, batch_size=100)["x", "y"]
    biased = layertap.similarity({"x": x}, {"y": y}, batch_size=100)["x", "y"]
    assert abs(unbiased - whole) < 0.01  # the unbiased blocks estimate the same CKA
    assert abs(biased - cka(x, y)) > abs(unbiased - whole)  # the biased ones keep their bias
    # 103 rows in blocks of 50: the 3-row tail joins the second block
    x, y = x[:103], y[:103]
    blocks = [(slice(0, 50), slice(50, 103))]
    expected_xy = sum(hsic(x[b], y[b], unbiased=True) for b in blocks[0])
    expected_xx = sum(hsic(x[b], x[b], unbiased=True) for b in blocks[0])
    expected_yy = sum(hsic(y[b], y[b], unbiased=True) for b in blocks[0])
    got = layertap.similarity({"x": x}, {"y": y}, unbiased=True, batch_size=50)["x", "y"]
    assert got == pytest.approx(expected_xy / np.sqrt(expected_xx * expected_yy), rel=1e-10)


def test_rsa_is_spearman_of_correlation_rdms() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 6)), rng.normal(size=(30, 2, 4))
    iu = np.triu_indices(30, k=1)
    rdm_x = 1 - np.corrcoef(x)[iu]
    rdm_y = 1 - np.corrcoef(y.reshape(30, -1))[iu]
    s = layertap.similarity({"x": x, "y": y}, method="rsa")
    assert s["x", "y"] == pytest.approx(spearmanr(rdm_x, rdm_y).statistic, rel=1e-12)
    assert s["x", "x"] == 1.0 and s.method == "rsa"
    with pytest.raises(layertap.BadInputError, match="RSA compares whole-data RDMs"):
        layertap.similarity({"x": x}, method="rsa", batch_size=10)


def test_similarity_between_files(written: dict[str, Any]) -> None:
    memory = written["memory"]
    itself = layertap.similarity(written["h5"])
    between = layertap.similarity(written["h5"], written["parquet"], unbiased=True, batch_size=8)
    ref = cka(memory["seq"].reshape(ROWS, -1), memory["out"], unbiased=False)
    assert itself["seq", "out"] == pytest.approx(ref, rel=1e-5)
    assert between.rows == between.cols == ("seq", "out")
    assert between["seq", "seq"] == pytest.approx(1.0, abs=1e-5)
    assert "linear CKA (unbiased HSIC, minibatches of 8) over 23 rows" in between.table()
    assert between.plot().png[:4] == b"\x89PNG"
    with pytest.raises(layertap.FeatureFileError, match="has 23 rows and the dict of arrays 5"):
        layertap.similarity(written["h5"], {"z": np.zeros((5, 2))})
    shuffled = {"z": np.zeros((ROWS, 2)), "paths": np.array([f"x{i}" for i in range(ROWS)])}
    with pytest.raises(layertap.FeatureFileError, match="row 0: 'array.0.' vs 'x0'"):
        layertap.similarity(written["npz"], shuffled)


# --- the command line ---------------------------------------------------------------------


def run(*args: object) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_probe_and_similarity(written: dict[str, Any], tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"array[{i}],{'ab'[i % 2]}\n" for i in range(ROWS)))
    done = run("probe", written["h5"].path, "--labels", labels, "--cv", 3, "--plot",
               tmp_path / "p.png")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "3-fold accuracy over 23 rows, 2 classes" in done.output
    assert sum("<- best" in line for line in done.output.splitlines()) == 1
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    done = run("probe", written["npz"].path, "--labels", labels, "-l", "out", "--cv", 3, "--json")
    record = json.loads(done.output)
    assert list(record["layers"]) == ["out"] and len(record["layers"]["out"]["folds"]) == 3
    done = run("similarity", written["h5"].path, written["parquet"].path, "--unbiased",
               "--batch-size", 10, "--plot", tmp_path / "s.png")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert (
        done.output.splitlines()[0] == "linear CKA (unbiased HSIC, minibatches of 10) over 23 rows"
    )
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads(run("similarity", written["npz"].path, "--method", "rsa", "--json").output)
    assert record["rows"] == ["seq", "out"] and record["matrix"][0][0] == 1.0


def test_cli_errors_are_one_line(written: dict[str, Any], tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"array[{i}],{i % 2}\n" for i in range(ROWS - 1)))
    (tmp_path / "notes.txt").write_text("hello")
    h5 = written["h5"].path
    cases = [
        (("probe", h5, "--labels", labels), "no label for 1 of 23 rows ('array[22]')"),
        (("probe", h5, "--labels", labels, "-l", "outt"), "no key 'outt'"),
        (("probe", tmp_path / "notes.txt", "--labels", labels), "is not a layertap feature file"),
        (("similarity", h5, "--method", "svcca"), "Invalid value for '--method'"),
        (("similarity", h5, "--unbiased", "--batch-size", 3), "a block needs at least 4 rows"),
    ]
    for args, message in cases:
        done = run(*args)
        assert done.exit_code == 2, (args, done.output)
        lines = [line for line in done.output.splitlines() if line]
        assert len(lines) == 1 and lines[0].startswith("layertap: error: "), done.output
        assert message in lines[0], lines[0]


def test_whole_data_cka_streams_feature_space_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrow layers: no n x n matrix; wide layers (p > n): the Grams of all rows."""
    import layertap.analysis.similarity as sim

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 8)) + 3.0  # far from centred
    y = x @ rng.normal(size=(8, 6)) + rng.normal(size=(5000, 6))
    expected = {u: cka(x[:600], y[:600], unbiased=u) for u in (False, True)}

    def no_gram(*args: object) -> None:
        raise AssertionError("an n x n Gram matrix was built")

    with monkeypatch.context() as m:
        m.setattr(sim, "_gram", no_gram)
        for u in (False, True):
            got = layertap.similarity({"x": x[:600]}, {"y": y[:600]}, unbiased=u)["x", "y"]
            assert got == pytest.approx(expected[u], rel=1e-9)
        assert 0 < layertap.similarity({"x": x, "y": y})["x", "y"] < 1
    wide = rng.normal(size=(30, 50))
    s = layertap.similarity({"w": wide, "y": y[:30]}, unbiased=True)
    assert s["w", "y"] == pytest.approx(cka(wide, y[:30], unbiased=True), rel=1e-10)
