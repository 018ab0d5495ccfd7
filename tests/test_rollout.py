"""Attention rollout (Abnar & Zuidema 2020) on keras-hub vision transformers.

The oracle is the formula written out with loops on the probabilities layertap taps
(each checked against the layers themselves in ``tests/test_keras_hub_blocks.py``):
heads fused, ``0.5 A + 0.5 I`` with rows renormalised, the product from the first block
on, the class token's row over the patch tokens on the patch grid, scaled to [0, 1].
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

import layertap
from layertap.explainer import maps
from tests.hub_backbones import BACKBONES

pytest.importorskip("keras_hub")

FUSE = {"mean": np.mean, "max": np.max, "min": np.min}


def rollout_by_hand(
    blocks: list[np.ndarray], fusion: str, discard: float, prefix: int, grid: tuple[int, int]
) -> np.ndarray:
    """The paper's rollout, one image and one block at a time, loops where they read best."""
    n, tokens = blocks[0].shape[0], blocks[0].shape[-1]
    out = np.zeros((n, *grid))
    for i in range(n):
        joint = np.eye(tokens)
        for a in blocks:
            heads = a[i].reshape(-1, tokens, tokens).astype(np.float64)
            fused = FUSE[fusion](heads, axis=0)
            for r in range(tokens):  # drop each row's smallest weights, the class token kept
                drop = int(discard * tokens)
                for c in np.argsort(fused[r])[:drop]:
                    if c != 0:
                        fused[r, c] = 0.0
            aug = 0.5 * fused + 0.5 * np.eye(tokens)
            for r in range(tokens):
                aug[r] /= aug[r].sum()
            joint = aug @ joint
        out[i] = joint[0, prefix:].reshape(grid)
    low = out.min(axis=(1, 2), keepdims=True)
    return (out - low) / (out.max(axis=(1, 2), keepdims=True) - low)


def _scores(backbone: keras.Model, images: np.ndarray) -> list[np.ndarray]:
    ex = layertap.Extractor(backbone, ["**/scores"])
    assert len(ex.places) == 2  # both blocks' attention, in block order
    return list(ex(images).values())


@pytest.mark.parametrize(
    ("fusion", "discard"), [("mean", 0.0), ("max", 0.0), ("min", 0.5), ("mean", 0.9)]
)
def test_vit_rollout_equals_the_formula(fusion: str, discard: float) -> None:
    backbone, make = BACKBONES["ViTBackbone"]()
    images = make(np.random.default_rng(0), 3)
    got = layertap.explain(
        backbone, images, method="rollout", head_fusion=fusion, discard_ratio=discard,
        upsample=False,
    )  # fmt: skip
    expected = rollout_by_hand(_scores(backbone, images), fusion, discard, 1, (4, 4))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.info["prefix_tokens"] == 1 and got.info["grid"] == [4, 4]
    assert got.info["head_fusion"] == fusion and len(got.info["layer"]) == 2
    full = layertap.explain(backbone, images, method="rollout", head_fusion=fusion,
                            discard_ratio=discard)  # fmt: skip
    assert full.shape == (3, 16, 16) and full.min() >= 0.0 and full.max() <= 1.0
    np.testing.assert_allclose(full, maps.normalize(maps.upsample(got, (16, 16))), atol=1e-6)


def test_rollout_rows_sum_to_one_on_tapped_attention() -> None:
    backbone, make = BACKBONES["ViTBackbone"]()
    joint = maps.attention_rollout(_scores(backbone, make(np.random.default_rng(1), 2)))
    np.testing.assert_allclose(joint.sum(axis=-1), 1.0, atol=1e-5)


def test_dinov2_registers_are_skipped() -> None:
    """DINOv2 with four registers: [class, 4 registers, 16 patches]; the map skips them."""
    import keras_hub

    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=4, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
        image_shape=(16, 16, 3), position_embedding_shape=(16, 16, 3), num_register_tokens=4,
    )  # fmt: skip
    images = np.random.default_rng(2).uniform(size=(2, 16, 16, 3)).astype("float32")
    got = layertap.explain(backbone, images, method="rollout", upsample=False)
    assert got.info["prefix_tokens"] == 5 and got.info["grid"] == [4, 4]
    expected = rollout_by_hand(_scores(backbone, images), "mean", 0.0, 5, (4, 4))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_one_block_chosen_by_layer() -> None:
    backbone, make = BACKBONES["ViTBackbone"]()
    images = make(np.random.default_rng(3), 2)
    first = [p.path for p in layertap.list_layers(backbone) if p.class_name == "Softmax"][0]
    got = layertap.explain(backbone, images, first, method="rollout", upsample=False)
    (probs,) = layertap.Extractor(backbone, [first])(images).values()
    np.testing.assert_allclose(got, rollout_by_hand([probs], "mean", 0.0, 1, (4, 4)), atol=1e-5)
    assert got.info["layer"] == [first]


@pytest.mark.parametrize(
    ("layer", "options", "needle"),
    [
        (None, {"head_fusion": "median"}, "head_fusion 'median'"),
        (None, {"discard_ratio": 1.0}, "discard_ratio 1.0"),
        ("vit_encoder", {}, "rollout needs self-attention probabilities"),
        (None, {"prefix_tokens": 3}, "pass prefix_tokens="),
    ],
)
def test_rollout_mistakes_are_named(layer: Any, options: dict[str, Any], needle: str) -> None:
    backbone, make = BACKBONES["ViTBackbone"]()
    with pytest.raises(layertap.BadSpecError, match=needle):
        layertap.explain(backbone, make(np.random.default_rng(4), 1), layer, method="rollout",
                         **options)  # fmt: skip


def test_a_model_without_attention_is_told_so() -> None:
    cnn = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="c")])
    with pytest.raises(layertap.BadSpecError, match="no attention layer"):
        layertap.explain(cnn, np.zeros((1, 8, 8, 3), "float32"), method="rollout")


def test_cli_rollout_report(tmp_path: Any) -> None:
    """`layertap explain VIT.keras IMAGES --method rollout -o DIR`: one overlay per image."""
    pytest.importorskip("matplotlib", reason="the report draws with the viz extra")
    from click.testing import CliRunner
    from PIL import Image

    from layertap.cli import cli

    backbone, _ = BACKBONES["ViTBackbone"]()
    backbone.save(tmp_path / "vit.keras")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "report"
    args = ["explain", str(tmp_path / "vit.keras"), str(images), "-m", "rollout", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "explained 2 images over every attention layer (rollout)" in result.stdout
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [
        "0__rollout_over_2_attention_layers.png",
        "1__rollout_over_2_attention_layers.png",
    ]
    assert not (out / "grids").exists()
    page = (out / "index.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 2
    assert "rollout over 2 attention layers" in page
    # A CNN has no attention: one line, exit 2.
    cnn = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="c")])
    cnn.save(tmp_path / "cnn.keras")
    args[1] = str(tmp_path / "cnn.keras")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "has no attention layer" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
