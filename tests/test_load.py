"""load_model: .keras and .h5 files, safe by default, errors that name the file."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

import layertap
from tests.conftest import Split, assert_close


def small_model() -> keras.Model:
    inner = keras.Sequential(
        [keras.Input((4,)), layers.Dense(3, name="d1"), layers.BatchNormalization(name="bn")],
        name="backbone",
    )
    return keras.Sequential([keras.Input((4,)), inner, layers.Dense(2, name="head")], name="clf")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_load_and_tap_a_saved_nested_model(
    tmp_path: Path, suffix: str, rng: np.random.Generator
) -> None:
    model = small_model()
    path = tmp_path / f"model{suffix}"
    model.save(path)
    loaded = layertap.load_model(path)
    assert not loaded.compiled
    data = rng.random((3, 4), dtype="float32")
    run = layertap.Extractor(loaded, ["backbone/d1", "head"])(data)
    assert_close(run["backbone/d1"], model.get_layer("backbone").layers[0](data))
    assert_close(run["head"], model.predict(data, verbose=0))


def test_custom_objects(tmp_path: Path) -> None:
    x = keras.Input((4,))
    p, q = Split(name="split")(x)
    model = keras.Model(x, layers.Add()([p, q]))
    model.save(tmp_path / "custom.keras")
    loaded = layertap.load_model(tmp_path / "custom.keras", custom_objects={"Split": Split})
    assert [r.path for r in layertap.list_layers(loaded, pattern="split*")] == [
        "split:0",
        "split:1",
    ]


def test_safe_mode_refuses_lambda_code(tmp_path: Path) -> None:
    mark = tmp_path / "mark.txt"
    x = keras.Input((2,))
    # The lambda writes a file when it runs: loading must never run it.
    body = f"lambda t: (open({str(mark)!r}, 'w').close(), t)[1]"
    model = keras.Model(x, layers.Lambda(eval(body), name="sneaky")(x))  # noqa: S307
    mark.unlink()
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(layertap.ModelLoadError, match="safe_mode=False") as info:
        layertap.load_model(tmp_path / "lambda.keras")
    assert "lambda.keras" in str(info.value)
    assert not mark.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.keras", "model file '{}' does not exist"),
        (lambda d: d, "model path '{}' is a directory"),
        (
            lambda d: (d / "notes.keras").write_text("hello") and d / "notes.keras",
            "model file '{}' is neither a .keras archive nor an HDF5 file",
        ),
    ],
)
def test_bad_paths(tmp_path: Path, make: object, message: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(layertap.ModelLoadError, match=re.escape(message.format(path))):
        layertap.load_model(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    small_model().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(layertap.ModelLoadError, match=re.escape(str(path))):
        layertap.load_model(path)


def test_wrong_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    small_model().save(tmp_path / "model.keras")
    (tmp_path / "model.keras").rename(path)
    with pytest.raises(layertap.ModelLoadError, match="rename it to end in .keras"):
        layertap.load_model(path)


def test_public_names_are_pinned() -> None:
    assert sorted(layertap.__all__) == [
        "AmbiguousLayerError",
        "BadInputError",
        "BadSpecError",
        "Comparison",
        "Explanation",
        "ExtractResult",
        "Extractor",
        "FeatureFileError",
        "FeatureReader",
        "Features",
        "Gradients",
        "LabelError",
        "LayerDiff",
        "LayerInfo",
        "LayerNotFoundError",
        "LayerReduction",
        "LayerScore",
        "LayertapError",
        "MissingDependencyError",
        "ModelLoadError",
        "OutputError",
        "Preset",
        "ProbeResult",
        "Reduction",
        "Similarity",
        "TapInfo",
        "UnsupportedModelError",
        "UntracedLayerError",
        "__version__",
        "compare",
        "compare_files",
        "explain",
        "extract",
        "feature_model",
        "gradients",
        "list_layers",
        "load_model",
        "load_preset",
        "open_features",
        "probe",
        "reduce",
        "similarity",
        "summary",
        "tap",
    ]
    for name in layertap.__all__:
        assert hasattr(layertap, name)
    errors = [getattr(layertap, n) for n in layertap.__all__ if n.endswith("Error")]
    assert all(issubclass(e, layertap.LayertapError) for e in errors)


def test_a_missing_optional_package_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    x = np.ones((4, 3), "float32")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails
    with pytest.raises(layertap.MissingDependencyError, match=r"'layertap\[parquet\]'") as info:
        layertap.extract(model, x, ["d"], tmp_path / "f.parquet")
    assert isinstance(info.value, ImportError)
    assert not (tmp_path / "f.parquet").exists()
    monkeypatch.setitem(sys.modules, "ray", None)
    from layertap import ray as layertap_ray

    model.save(tmp_path / "m.keras")
    with pytest.raises(layertap.MissingDependencyError, match=r"'layertap\[ray\]'"):
        layertap_ray.extract_parquet(tmp_path / "m.keras", [tmp_path], ["d"], tmp_path / "out")


def test_ray_names_moved_to_layertap_ray_and_still_resolve() -> None:
    import layertap.ray

    for name in ("FeatureMapper", "extract_dataset", "extract_parquet"):
        assert name not in layertap.__all__ and name in layertap.ray.__all__
        with pytest.warns(DeprecationWarning, match=f"layertap.ray.{name}"):
            assert getattr(layertap, name) is getattr(layertap.ray, name)
