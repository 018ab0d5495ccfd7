"""`layertap explain PRESET lines.txt -l <embedding> -o DIR`: the text report.

A BertTextClassifier task preset built offline; the page's tokens, colours, classes and
attention pictures are checked against ``layertap.explain`` and the attention places
tapped directly, and the page is opened offline in headless Chromium.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("keras_hub")
pytest.importorskip("matplotlib", reason="the report draws with the viz extra")

import layertap  # noqa: E402
from layertap.cli import cli  # noqa: E402
from layertap.explainer import viz  # noqa: E402
from tests.browser import (
    ONCE_REASON,
    SKIP_REASON,
    chromium,
    not_first_pass,
    open_offline,
    screenshot,
)  # noqa: E402
from tests.hub_presets import bert_classifier_preset  # noqa: E402

LINES = ["the cat sat on the mat", "", "a dog sat on a log", "the dog and the cat ran"]
EMBEDDING = "bert_backbone/token_embedding"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    root = tmp_path_factory.mktemp("text_report")
    bert_classifier_preset(root / "preset")
    (root / "lines.txt").write_text("\n".join(LINES) + "\n")
    (root / "labels.txt").write_text("negative\nneutral\npositive\n")
    args = ["explain", str(root / "preset"), str(root / "lines.txt"), "-l", EMBEDDING,
            "-o", str(root / "out"), "--labels", str(root / "labels.txt"),
            "--steps", "16"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    return root, result, layertap.load_preset(root / "preset")


def test_the_text_report(report: tuple[Path, Any, Any]) -> None:
    root, result, preset = report
    assert result.exit_code == 1, result.output  # the empty line is skipped and named
    assert re.search(r"skipped .*lines\.txt:2: empty text", result.stderr)
    assert "explained 3 lines (integrated_gradients)" in result.stdout
    texts = [line for line in LINES if line]
    expected = layertap.explain(preset, texts, EMBEDDING, method="integrated_gradients", steps=16)
    saved = json.loads((root / "out" / "attributions.json").read_text())
    assert [row["text"] for row in saved["rows"]] == texts
    page = (root / "out" / "index.html").read_text()
    for i, row in enumerate(saved["rows"]):
        tokens = expected.info["tokens"][i]
        real = [j for j, t in enumerate(tokens) if t != "[PAD]"]
        assert row["tokens"] == [tokens[j] for j in real]
        np.testing.assert_allclose(row["attributions"], expected[i, real], rtol=1e-4, atol=1e-6)
        # Each token is a span coloured on the line's own scale, its value in the title.
        scale = np.abs(expected[i, real]).max()
        for token, value, colour in zip(
            row["tokens"],
            row["attributions"],
            viz.token_colours(expected[i, real], scale),
            strict=True,
        ):
            span = re.escape(f'<span style="background:{colour}')
            title = re.escape(f'" title="{value:+.4g}">{token}</span>')
            assert re.search(span + "(;color:#fff)?" + title, page), (token, value)
    # Top classes by name; one legend and one attention picture per line, all inlined.
    assert "negative" in page and "positive" in page
    assert page.count('<img src="data:image/png;base64,') == 1 + 3
    assert "bert_backbone/transformer_layer_1/self_attention_layer/softmax" in page
    assert not re.search(r"https?://|<script|<link", page)


def test_the_attention_rows_are_the_first_tokens_head_mean(
    report: tuple[Path, Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the heatmap draws: each layer's [CLS] row, averaged over heads, real tokens."""
    from layertap.explainer import report as report_module

    _, _, preset = report
    texts = [line for line in LINES if line]
    paths, rows = report_module._first_token_attention(preset, texts, 2)
    probs = layertap.Extractor(preset, paths)(texts)
    for k, path in enumerate(paths):
        np.testing.assert_allclose(rows[:, k], probs[path][:, :, 0, :].mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(rows.sum(axis=-1), 1.0, atol=1e-5)


def test_text_mistakes_are_one_line(report: tuple[Path, Any, Any], tmp_path: Path) -> None:
    root, _, _ = report
    base = ["explain", str(root / "preset"), str(root / "lines.txt"), "-o", str(tmp_path / "o")]
    cases = [
        (["-l", EMBEDDING, "-m", "gradcam"], "the text report explains tokens with"),
        ([], "explaining texts takes one --layer"),
        (["-l", "nope"], "no layer named 'nope'"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(cli, [*base, *extra])
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(chromium() is None, reason=SKIP_REASON)
@pytest.mark.skipif(not_first_pass(), reason=ONCE_REASON)
def test_the_text_page_opens_cleanly_in_headless_chromium(report: tuple[Path, Any, Any]) -> None:
    root, _, _ = report
    page = root / "out" / "index.html"
    images, bad, console = open_offline(page)
    assert (images, bad) == (4, 0)
    assert len(console) == 1 and "layertap-check" in console[0], console
    pixels = screenshot(page)
    assert pixels.shape == (800, 1000) and pixels.std() > 10  # not blank
