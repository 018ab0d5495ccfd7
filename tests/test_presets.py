"""keras-hub presets as models: recognised, loaded with their preprocessor, fed with text.

The presets are written offline by ``tests/hub_presets.py`` (small backbones, random
weights, in-test vocabularies); nothing here reaches the network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import layertap
from layertap.graph.preset import Preset, is_preset, load_preset, text_inputs
from tests.conftest import assert_close, to_numpy
from tests.hub_presets import backbone_only_preset, bert_preset, gemma_preset

keras_hub = pytest.importorskip("keras_hub")

TEXTS = ["the cat sat", "a dog"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    keras.utils.set_random_seed(0)
    directory = tmp_path_factory.mktemp("bert_preset")
    backbone, tokenizer = bert_preset(directory)
    return directory, backbone, tokenizer


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    keras.utils.set_random_seed(0)
    directory = tmp_path_factory.mktemp("gemma_preset")
    backbone, tokenizer = gemma_preset(directory)
    return directory, backbone, tokenizer


def alone(tokenizer: Any, line: str, length: int, start: int, end: int | None) -> np.ndarray:
    """The oracle: one line tokenized by itself, framed and zero-padded to ``length``."""
    ids = [start, *to_numpy(tokenizer(line)).tolist()] + ([end] if end is not None else [])
    return np.array(ids + [0] * (length - len(ids)), "int32")


def check_rows(
    x: dict[str, np.ndarray], tokenizer: Any, length: int, start: int, end: int | None
) -> None:
    for row, line in enumerate(TEXTS):
        expected = alone(tokenizer, line, length, start, end)
        np.testing.assert_array_equal(x["token_ids"][row], expected)
        n = len(to_numpy(tokenizer(line))) + 1 + (end is not None)
        np.testing.assert_array_equal(x["padding_mask"][row], np.arange(length) < n)


def outputs(model: keras.Model, x: dict[str, np.ndarray]) -> list[np.ndarray]:
    out = model(x)
    return [to_numpy(v) for v in (out.values() if isinstance(out, dict) else [out])]


# --- recognising presets -------------------------------------------------------------------


def test_save_to_preset_writes_a_directory_layertap_recognises(
    bert: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    directory = bert[0]
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    assert files == [
        "assets/tokenizer/vocabulary.txt",
        "config.json",
        "metadata.json",
        "model.weights.h5",
        "preprocessor.json",
        "tokenizer.json",
    ]
    metadata = json.loads((directory / "metadata.json").read_text())
    assert {"keras_version", "keras_hub_version", "tasks"} <= set(metadata)
    assert json.loads((directory / "config.json").read_text())["registered_name"] == (
        "keras_hub>BertBackbone"
    )
    assert is_preset(directory) and is_preset(str(directory))
    # Not presets: an empty directory, a config.json of another kind, a model file.
    assert not is_preset(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert not is_preset(tmp_path)
    model_file = tmp_path / "m.keras"
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(model_file)
    assert not is_preset(model_file)
    assert not is_preset(123)


def test_handles_and_builtin_names_are_presets_without_a_download() -> None:
    assert is_preset("kaggle://keras/bert/keras/bert_tiny_en_uncased/2")
    assert is_preset("hf://someone/some_model")
    assert is_preset("bert_tiny_en_uncased")  # keras-hub's registry, read locally
    assert not is_preset("no_such_preset_name")
    assert not is_preset("missing_file.keras")


# --- BERT: backbone, preprocessor, text inputs ---------------------------------------------


def test_bert_preset_loads_the_same_backbone_and_its_preprocessor(
    bert: tuple[Path, Any, Any],
) -> None:
    directory, original, tokenizer = bert
    preset = load_preset(directory)
    assert isinstance(preset, Preset) and isinstance(preset.model, keras.Model)
    assert type(preset.preprocessor).__name__ == "BertTextClassifierPreprocessor"
    assert (preset.kind, preset.sequence_length, preset.source) == ("text", 16, str(directory))
    x = text_inputs(preset, TEXTS)
    assert sorted(x) == ["padding_mask", "segment_ids", "token_ids"]
    assert all(v.shape == (2, 16) and v.dtype == np.int32 for v in x.values())
    for got, want in zip(outputs(preset.model, x), outputs(original, x), strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("length", [None, 24])
def test_bert_text_inputs_pad_each_line_as_if_alone(
    bert: tuple[Path, Any, Any], length: int | None
) -> None:
    directory, _, tokenizer = bert
    preset = load_preset(directory)
    x = text_inputs(preset, TEXTS, sequence_length=length)
    check_rows(x, tokenizer, length or 16, start=2, end=3)  # [CLS] ... [SEP]
    np.testing.assert_array_equal(x["segment_ids"], 0)
    for row, line in enumerate(TEXTS):  # the same row from a batch of one
        single = text_inputs(preset, [line], sequence_length=length)
        for key in x:
            np.testing.assert_array_equal(x[key][row], single[key][0])
    assert preset.preprocessor.sequence_length == 16  # the override did not stick


def test_sequence_length_given_at_load_replaces_the_preprocessors(
    bert: tuple[Path, Any, Any],
) -> None:
    directory, original, tokenizer = bert
    preset = load_preset(directory, sequence_length=24)
    assert preset.sequence_length == 24
    x = text_inputs(preset.preprocessor, TEXTS)  # a bare preprocessor works too
    check_rows(x, tokenizer, 24, start=2, end=3)
    assert x["padding_mask"].dtype == bool  # keras-hub's own dtypes without a Preset
    for got, want in zip(outputs(preset.model, x), outputs(original, x), strict=True):
        assert_close(got, want)


def test_loaded_preset_backbone_can_be_tapped(bert: tuple[Path, Any, Any]) -> None:
    directory, original, _ = bert
    preset = load_preset(directory)
    x = text_inputs(preset, TEXTS)
    name = "transformer_layer_0"
    got = layertap.Extractor(preset.model, [name])(x)[name]
    oracle = keras.Model(original.input, original.get_layer(name).output)
    assert_close(np.asarray(got), oracle(x))


# --- Gemma: a SentencePiece tokenizer and a causal LM preprocessor --------------------------


def test_gemma_preset_uses_the_inference_path_of_its_causal_lm_preprocessor(
    gemma: tuple[Path, Any, Any],
) -> None:
    directory, original, tokenizer = gemma
    preset = load_preset(directory)
    assert type(preset.preprocessor).__name__ == "GemmaCausalLMPreprocessor"
    assert (preset.kind, preset.sequence_length) == ("text", 16)
    for length in (None, 24):
        x = text_inputs(preset, TEXTS, sequence_length=length)
        assert sorted(x) == ["padding_mask", "token_ids"]
        check_rows(x, tokenizer, length or 16, start=tokenizer.start_token_id, end=None)
    for got, want in zip(outputs(preset.model, x), outputs(original, x), strict=True):
        assert_close(got, want)


# --- load_model and handles ----------------------------------------------------------------


def test_load_model_returns_the_backbone_of_a_preset_directory(
    bert: tuple[Path, Any, Any],
) -> None:
    directory, original, _ = bert
    x = text_inputs(load_preset(directory), TEXTS)
    for source in (directory, str(directory)):
        model = layertap.load_model(source)
        assert type(model) is type(original)
        for got, want in zip(outputs(model, x), outputs(original, x), strict=True):
            assert_close(got, want)


def test_a_handle_goes_to_keras_hub_and_its_failure_says_it_needs_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

    def fake(preset: str) -> keras.Model:
        seen.append(preset)
        return model

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", fake)
    assert layertap.load_model("kaggle://nobody/nothing/keras/none") is model
    assert seen == ["kaggle://nobody/nothing/keras/none"]

    def offline(preset: str) -> keras.Model:
        raise ConnectionError("Max retries exceeded with url")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(layertap.ModelLoadError, match=r"'kaggle://nobody/nothing'.*network"):
        layertap.load_model("kaggle://nobody/nothing")


# --- broken presets and wrong inputs -------------------------------------------------------


def test_a_broken_preset_directory_names_the_path_and_the_reason(
    bert: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bert[0], broken)
    (broken / "model.weights.h5").unlink()
    with pytest.raises(
        layertap.ModelLoadError, match=r"preset directory '.*broken' has no model.weights.h5"
    ):
        layertap.load_model(broken)
    shutil.copytree(bert[0], broken, dirs_exist_ok=True)
    (broken / "config.json").write_text("{not json")
    assert is_preset(broken)  # metadata.json still says keras-hub
    with pytest.raises(layertap.ModelLoadError, match=r"broken.*JSON|broken.*Expecting"):
        load_preset(broken)
    shutil.copytree(bert[0], broken, dirs_exist_ok=True)
    (broken / "assets" / "tokenizer" / "vocabulary.txt").unlink()
    with pytest.raises(layertap.ModelLoadError, match=r"preprocessor.*broken.*vocabulary.txt"):
        load_preset(broken)


def test_a_preset_without_tokenizer_has_no_preprocessor(tmp_path: Path) -> None:
    backbone_only_preset(tmp_path)
    preset = load_preset(tmp_path)
    assert (preset.preprocessor, preset.kind, preset.sequence_length) == (None, None, None)
    with pytest.raises(layertap.BadInputError, match="text preprocessor"):
        text_inputs(preset, TEXTS)
    with pytest.raises(layertap.BadInputError, match="sequence_length=8"):
        load_preset(tmp_path, sequence_length=8)


def test_text_inputs_wants_a_list_of_strings(bert: tuple[Path, Any, Any]) -> None:
    preset = load_preset(bert[0])
    with pytest.raises(layertap.BadInputError, match="list of strings"):
        text_inputs(preset, "the cat sat")
    with pytest.raises(layertap.BadInputError, match="positive int"):
        text_inputs(preset, TEXTS, sequence_length=0)


# --- the traced tokenizer path ------------------------------------------------------------

#: Lines keras-hub's two tokenizer paths could split differently: case, accents, CJK,
#: punctuation runs, unknown words, extra spaces, a line longer than the padded length.
TRICKY = [
    "The CAT sat, on the mat!!",
    "Héllo wörld 東京 über  café",
    "  a dog   ran\tover the log  ",
    "unknownword xyzzy ... ?!",
    " ".join(["the big red dog"] * 12),
]


def graphs(preprocessor: Any) -> dict[Any, Any]:
    from layertap.graph import preset as preset_module

    return preset_module._packer(preprocessor)._graphs


@pytest.mark.parametrize("which", ["bert", "gemma"])
def test_the_traced_path_gives_the_python_paths_tokens(
    which: str,
    bert: tuple[Path, Any, Any],
    gemma: tuple[Path, Any, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("tensorflow_text", reason="keras-hub's TF path needs tensorflow-text")
    from layertap.graph import preset as preset_module

    preset = load_preset({"bert": bert, "gemma": gemma}[which][0])
    pre = preset.preprocessor
    first = text_inputs(pre, TRICKY[:2])  # Python: under TRACE_AFTER_SECONDS
    assert graphs(pre) == {}
    monkeypatch.setattr(preset_module, "TRACE_AFTER_SECONDS", 0.0)
    np.testing.assert_array_equal(first["token_ids"], text_inputs(pre, TRICKY[:2])["token_ids"])
    assert list(graphs(pre).values()) != [None]  # TF and tensorflow-text are in the venv
    for lines in (TRICKY, TRICKY[:2], TRICKY[3:]):
        got = text_inputs(pre, lines)  # traced
        want = pre.generate_preprocess(lines) if which == "gemma" else pre(lines)
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], to_numpy(value))
            assert got[key].dtype == to_numpy(value).dtype
    again = text_inputs(preset, TRICKY, sequence_length=24)  # a second length, traced apart
    assert again["token_ids"].shape == (len(TRICKY), 24)
    assert len(graphs(pre)) == 2


def test_a_traced_path_that_differs_is_not_used(
    bert: tuple[Path, Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tensorflow as tf

    from layertap.graph import preset as preset_module

    pack = preset_module._pack

    def off_by_one(preprocessor: Any, texts: Any, length: int | None) -> Any:
        out = pack(preprocessor, texts, length)
        if tf.inside_function():  # only the traced path is wrong
            out = {**out, "token_ids": out["token_ids"] + 1}
        return out

    monkeypatch.setattr(preset_module, "_pack", off_by_one)
    monkeypatch.setattr(preset_module, "TRACE_AFTER_SECONDS", 0.0)
    preset = load_preset(bert[0])
    for _ in range(2):
        x = text_inputs(preset, TEXTS)
        check_rows(x, bert[2], 16, start=2, end=3)
    assert list(graphs(preset.preprocessor).values()) == [None]
