"""keras-hub presets written offline: small backbones with random weights, their tokenizers
and preprocessors, saved with ``save_to_preset`` (nothing is downloaded).

Each builder writes a preset into ``directory`` and returns ``(backbone, tokenizer)``:
the original objects, to compare what layertap loads against.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a an cat dog bird fish sat ran flew swam on in over under mat log tree house "
    "water red blue green big small my your and with is was of to from at by"
).split()
BERT_VOCAB = SPECIAL + WORDS

#: Lines a SentencePiece model is trained on (word model: one piece per word).
LINES = [
    "the cat sat on the mat",
    "a dog sat on a log",
    "the dog and the cat ran",
    "a bird flew over the red house",
    "my big fish swam in blue water",
]


def bert_preset(directory: Path, *, sequence_length: int = 16) -> tuple[Any, Any]:
    """BertBackbone + BertTokenizer + BertTextClassifierPreprocessor in one preset."""
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(BERT_VOCAB),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    backbone.save_to_preset(str(directory))
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=BERT_VOCAB)
    tokenizer.save_to_preset(str(directory))
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    preprocessor.save_to_preset(str(directory))
    return backbone, tokenizer


def sentencepiece_proto(vocab_size: int = 20) -> bytes:
    """A SentencePiece word model trained on :data:`LINES`, with Gemma's special pieces."""
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(LINES),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="WORD",
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        bos_piece="<bos>",
        eos_piece="<eos>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return out.getvalue()


def gemma_preset(directory: Path, *, sequence_length: int = 16) -> tuple[Any, Any]:
    """GemmaBackbone + GemmaTokenizer + GemmaCausalLMPreprocessor in one preset."""
    import keras_hub

    tokenizer = keras_hub.models.GemmaTokenizer(proto=sentencepiece_proto())
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
    )
    backbone.save_to_preset(str(directory))
    preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    preprocessor.save_to_preset(str(directory))
    return backbone, tokenizer


def backbone_only_preset(directory: Path) -> Any:
    """A BERT preset with no tokenizer or preprocessor."""
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(BERT_VOCAB),
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
    )
    backbone.save_to_preset(str(directory))
    return backbone


#: ImageNet's mean and std as a converter's per-channel scale and offset, for [0, 255] pixels.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALE = [1 / (255 * s) for s in STD]
OFFSET = [-m / s for m, s in zip(MEAN, STD, strict=True)]


def vit_preset(directory: Path) -> tuple[Any, Any]:
    """ViTBackbone (16x16 images) + ViTImageConverter (crop to aspect, ImageNet scaling).

    Returns ``(backbone, converter)``.
    """
    import keras_hub

    from tests.hub_backbones import vit

    backbone, _ = vit()
    backbone.save_to_preset(str(directory))
    converter = keras_hub.layers.ViTImageConverter(
        image_size=(16, 16), scale=SCALE, offset=OFFSET, interpolation="bilinear"
    )
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    preprocessor.save_to_preset(str(directory))
    return backbone, converter


def resnet_preset(directory: Path) -> tuple[Any, Any]:
    """ResNetBackbone taking any image size + ResNetImageConverter resizing to 20x20.

    Returns ``(backbone, converter)``.
    """
    import keras_hub

    from tests.hub_backbones import resnet

    backbone, _ = resnet(image_shape=(None, None, 3))
    backbone.save_to_preset(str(directory))
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(20, 20), scale=1 / 127.5, offset=-1.0, crop_to_aspect_ratio=False
    )
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    preprocessor.save_to_preset(str(directory))
    return backbone, converter


def _nudge(model: Any, seed: int = 7) -> None:
    """Move every trainable weight by numpy noise, so the saved task differs from any
    fresh one Keras initialises (the tests reseed Keras before loading)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:
        v.assign(np.asarray(v) + rng.normal(0, 0.1, v.shape).astype(v.dtype))


def bert_classifier_preset(directory: Path, *, num_classes: int = 3) -> tuple[Any, Any]:
    """BertTextClassifier (a small BertBackbone, ``num_classes`` logits) and its
    BertTextClassifierPreprocessor (in-memory vocabulary, 16 tokens), saved as a task.

    Its weights are nudged off their initial values (:func:`_nudge`).

    Returns ``(task, preprocessor)``.
    """
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(BERT_VOCAB),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
        name="bert_backbone",  # a fixed name: the tests tap "bert_backbone/..."
    )
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=BERT_VOCAB)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=16)
    task = keras_hub.models.BertTextClassifier(
        backbone, num_classes=num_classes, preprocessor=preprocessor
    )
    _nudge(task)
    task.save_to_preset(str(directory))
    return task, preprocessor


def resnet_classifier_preset(
    directory: Path, *, num_classes: int = 3, base: bool = False
) -> tuple[Any, Any]:
    """ResNetImageClassifier (a small any-size ResNetBackbone, ``num_classes`` outputs) and
    a ResNetImageClassifierPreprocessor resizing to 20x20, saved as a task. With ``base``
    the task is built as ``keras_hub.models.ImageClassifier(backbone=...)`` instead. Its
    weights are nudged off their initial values (:func:`_nudge`).

    Returns ``(task, converter)``.
    """
    import keras_hub

    from tests.hub_backbones import resnet

    backbone, _ = resnet(image_shape=(None, None, 3))
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(20, 20), scale=1 / 127.5, offset=-1.0, crop_to_aspect_ratio=False
    )
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    cls = keras_hub.models.ImageClassifier if base else keras_hub.models.ResNetImageClassifier
    task = cls(backbone=backbone, num_classes=num_classes, preprocessor=preprocessor)
    _nudge(task)
    task.save_to_preset(str(directory))
    return task, converter


def write_images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """Random RGB PNG files ``im<i>.png`` of the given ``(width, height)`` sizes (seed 0)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths
