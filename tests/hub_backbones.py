"""keras-hub backbones from small configs with random weights (nothing is downloaded).

Shared by ``tests/test_keras_hub.py`` and ``benchmarks/bench_discovery.py``. Each
builder returns ``(backbone, make_inputs)``, where ``make_inputs(rng, batch)`` gives
one batch of the inputs the backbone takes (a dict, padded where it has a mask).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

SEQ = 12  # tokens per example
VOCAB = 96

Inputs = Callable[[np.random.Generator, int], Any]


def _tokens(rng: np.random.Generator, batch: int, *, segments: bool = False) -> dict[str, Any]:
    """Token ids and a padding mask with real lengths from 3 to SEQ (zeros after them)."""
    lengths = rng.integers(3, SEQ + 1, size=batch)
    lengths[0] = SEQ
    mask = np.arange(SEQ)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(1, VOCAB, size=(batch, SEQ)), 0).astype("int32")
    out: dict[str, Any] = {"token_ids": ids, "padding_mask": mask.astype("int32")}
    if segments:
        out["segment_ids"] = np.zeros((batch, SEQ), "int32")
    return out


def _images(shape: tuple[int, int, int]) -> Inputs:
    def make(rng: np.random.Generator, batch: int) -> Any:
        return rng.uniform(-1, 1, size=(batch, *shape)).astype("float32")

    return make


def bert() -> tuple[Any, Inputs]:
    import keras_hub

    model = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    return model, lambda rng, b: _tokens(rng, b, segments=True)


def distil_bert() -> tuple[Any, Inputs]:
    import keras_hub

    model = keras_hub.models.DistilBertBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    return model, _tokens


def gemma() -> tuple[Any, Inputs]:
    import keras_hub

    model = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
    )
    return model, _tokens


def llama() -> tuple[Any, Inputs]:
    import keras_hub

    model = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
    )
    return model, _tokens


def vit() -> tuple[Any, Inputs]:
    import keras_hub

    model = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3),
        patch_size=4,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    )
    return model, _images((16, 16, 3))


def dinov2() -> tuple[Any, Inputs]:
    import keras_hub

    model = keras_hub.models.DINOV2Backbone(
        patch_size=4,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(16, 16, 3),
        position_embedding_shape=(16, 16, 3),
    )
    return model, _images((16, 16, 3))


def resnet(image_shape: tuple[int | None, ...] = (16, 16, 3)) -> tuple[Any, Inputs]:
    import keras_hub

    model = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=image_shape,
    )
    return model, _images((16, 16, 3))


def clip() -> tuple[Any, Inputs]:
    import keras_hub

    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=4,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(16, 16, 3),
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=VOCAB,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=SEQ,
    )
    model = keras_hub.models.CLIPBackbone(vision, text, projection_dim=8)
    image = _images((16, 16, 3))

    def make(rng: np.random.Generator, batch: int) -> Any:
        ids = rng.integers(1, VOCAB, size=(batch, SEQ)).astype("int32")
        return {"images": image(rng, batch), "token_ids": ids}

    return model, make


def whisper() -> tuple[Any, Inputs]:
    import keras_hub

    model = keras_hub.models.WhisperBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        num_mels=8,
        max_encoder_sequence_length=16,
        max_decoder_sequence_length=16,
    )

    def make(rng: np.random.Generator, batch: int) -> Any:
        tokens = _tokens(rng, batch)
        return {
            "encoder_features": rng.normal(size=(batch, 16, 8)).astype("float32"),
            "decoder_token_ids": tokens["token_ids"],
            "decoder_padding_mask": tokens["padding_mask"],
        }

    return model, make


BACKBONES: dict[str, Callable[[], tuple[Any, Inputs]]] = {
    "BertBackbone": bert,
    "DistilBertBackbone": distil_bert,
    "GemmaBackbone": gemma,
    "LlamaBackbone": llama,
    "ViTBackbone": vit,
    "DINOV2Backbone": dinov2,
    "ResNetBackbone": resnet,
    "CLIPBackbone": clip,
    "WhisperBackbone": whisper,
}
