"""A keras-hub preset and a text file through `layertap extract`: the masked-mean
embeddings of a transformer layer equal an oracle that tokenizes each line alone and
averages over its real tokens; the Python API takes a list of strings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("keras_hub")

import layertap  # noqa: E402
from layertap.cli import cli  # noqa: E402
from tests.conftest import assert_close  # noqa: E402
from tests.hub_presets import bert_preset  # noqa: E402

TEXTS = ["the cat sat on the mat", "a dog", "", "my big fish swam in blue water and ran"]
LAYER = "transformer_layer_0"


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    directory = tmp_path_factory.mktemp("bert_preset")
    backbone, tokenizer = bert_preset(directory, sequence_length=16)
    return directory, backbone, tokenizer


def oracle(backbone: Any, tokenizer: Any, text: str, length: int) -> tuple[np.ndarray, ...]:
    """One line alone: [CLS] ids [SEP], padded; the layer's output averaged over real tokens."""
    ids = [2, *np.asarray(tokenizer(text)).tolist(), 3][:length]
    token_ids = np.zeros((1, length), "int32")
    token_ids[0, : len(ids)] = ids
    mask = np.zeros((1, length), "int32")
    mask[0, : len(ids)] = 1
    inputs = {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids), "padding_mask": mask}
    model = keras.Model(backbone.input, backbone.get_layer(LAYER).output)
    out = keras.ops.convert_to_numpy(model(inputs))[0]
    real = out[: len(ids)]
    return real.mean(axis=0), real.max(axis=0), real[0], real[-1]


def test_cli_text_file_masked_mean_equals_each_line_alone(
    preset: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    directory, backbone, tokenizer = preset
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "emb.h5"
    args = ["extract", str(directory), str(lines), "-b", "3", "-o", str(out)]
    for alias, pool in (("mean", "avg"), ("top", "max"), ("cls", "first"), ("end", "last")):
        args += ["-l", f"{alias}={LAYER}", "--pool", f"{alias}={pool}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output  # the empty line is skipped and named
    assert f"skipped {lines}:3: empty text" in result.stderr
    with h5py.File(out) as f:
        assert list(f["paths"].asstr()) == [f"{lines}:1", f"{lines}:2", f"{lines}:4"]
        got = {name: f[name][:] for name in ("mean", "top", "cls", "end")}
    for row, text in enumerate([t for t in TEXTS if t]):
        mean, top, first, last = oracle(backbone, tokenizer, text, 16)
        assert_close(got["mean"][row], mean)
        assert_close(got["top"][row], top)
        assert_close(got["cls"][row], first)
        assert_close(got["end"][row], last)


def test_python_list_of_strings_and_the_padded_length(preset: tuple[Path, Any, Any]) -> None:
    directory, backbone, tokenizer = preset
    texts = [t for t in TEXTS if t]
    short = layertap.extract(str(directory), texts, {"e": LAYER}, pool="avg")
    long = layertap.extract(str(directory), texts, {"e": LAYER}, pool="avg", sequence_length=24)
    assert short["paths"].tolist() == ["text[0]", "text[1]", "text[2]"]
    assert_close(long["e"], short["e"])  # padding does not change a masked mean
    for row, text in enumerate(texts):
        assert_close(short["e"][row], oracle(backbone, tokenizer, text, 16)[0])
    p = layertap.load_preset(str(directory))
    again = layertap.extract(p.model, texts, {"e": LAYER}, pool="avg", preprocess=p.preprocessor)
    assert_close(again["e"], short["e"])


def test_keep_stores_the_mask_next_to_the_tap(
    preset: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    directory, backbone, tokenizer = preset
    texts = ["the cat sat", "a big red house by the water"]
    out = tmp_path / "tokens.h5"
    result = layertap.extract(str(directory), texts, {"h": LAYER, "m": LAYER}, out,
                              pool={"m": "avg"})  # fmt: skip
    assert result.shapes["h"] == (2, 16, 16) and result.shapes["h.mask"] == (2, 16)
    assert "m.mask" not in result.shapes  # a pooled tap needs no mask
    model = keras.Model(backbone.input, backbone.get_layer(LAYER).output)
    with h5py.File(out) as f:
        for row, text in enumerate(texts):
            n = len(np.asarray(tokenizer(text))) + 2  # [CLS] ... [SEP]
            np.testing.assert_array_equal(f["h.mask"][row], [1] * n + [0] * (16 - n))
            p = layertap.load_preset(str(directory))
            from layertap.graph.preset import text_inputs

            want = keras.ops.convert_to_numpy(model(text_inputs(p, [text])))[0]
            assert_close(f["h"][row][:n], want[:n])
    feats = layertap.extract(str(directory), texts, {"h": LAYER})
    assert sorted(feats) == ["h", "h.mask", "paths"]


def test_a_decoder_preset_last_real_token(tmp_path: Path) -> None:
    from tests.hub_presets import gemma_preset

    backbone, _ = gemma_preset(tmp_path / "gemma")
    texts = ["the cat sat", "a dog ran on the mat"]
    layers = {"last": "decoder_block_0", "mean": "decoder_block_0"}
    feats = layertap.extract(
        str(tmp_path / "gemma"), texts, layers, pool={"last": "last", "mean": "avg"}
    )
    preset = layertap.load_preset(str(tmp_path / "gemma"))
    from layertap.graph.preset import text_inputs

    model = keras.Model(backbone.input, backbone.get_layer("decoder_block_0").output)
    for row, text in enumerate(texts):
        alone = text_inputs(preset, [text])
        n = int(alone["padding_mask"].sum())
        out = keras.ops.convert_to_numpy(model(alone))[0]
        assert_close(feats["last"][row], out[n - 1])
        assert_close(feats["mean"][row], out[:n].mean(axis=0))


def test_array_of_strings_and_a_too_long_sequence(preset: tuple[Path, Any, Any]) -> None:
    directory, _, _ = preset
    texts = np.array(["the cat sat", "a dog"])
    feats = layertap.extract(str(directory), texts, {"e": LAYER}, pool="avg")
    assert feats["paths"].tolist() == ["text[0]", "text[1]"] and feats["e"].shape[0] == 2
    with pytest.raises(
        layertap.BadInputError, match="longer than the backbone's max_sequence_length 32"
    ):
        layertap.extract(str(directory), ["a dog"], {"e": LAYER}, sequence_length=40)
