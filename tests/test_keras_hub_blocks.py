"""Taps inside the first transformer block of keras-hub backbones, against plain Keras.

For each backbone the oracle takes the block's input from a functional model truncated
at the block's inbound node, then re-runs the block's ``call()`` by hand with the
block's own sublayer objects (query/key/value projections, attention scores, norms, MLP
denses) and compares every place with what layertap extracts, on a padded batch.

Attention probabilities are a place at every attention layer, fused or not: the oracle
asks the layer itself for them (``return_attention_scores=True``, or its unfused path
run by hand) while the block's output is the model's own, fused where Keras fuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import pytest
from keras import ops

import layertap
from tests.conftest import assert_close, to_numpy
from tests.hub_backbones import BACKBONES

pytest.importorskip("keras_hub")
masks = pytest.importorskip("keras_hub.src.layers.modeling.transformer_layer_utils")

BATCH = 3
TOL = 1e-5


@dataclass
class Oracle:
    """Expected values of the places to tap, and the attention layers' softmax names."""

    taps: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    attention: dict[str, str] = field(default_factory=dict)  # attention path -> softmax name

    def scores(self, alias: str, attention: str, softmax: str, value: Any) -> None:
        """The probabilities, by the softmax sublayer's name and by ``<attention>/scores``."""
        self.add(f"{alias}scores", f"{attention}/{softmax}", value)
        self.add(f"{alias}scores_by_alias", f"{attention}/scores", value)
        self.attention[attention] = softmax

    def add(self, alias: str, path: str, value: Any) -> Any:
        self.taps[alias] = (path, to_numpy(value))
        return value


Call = tuple[tuple[Any, ...], dict[str, Any]]


def block_calls(graph: keras.Model, layers: list[Any], inputs: Any) -> list[Call]:
    """The arguments each of ``layers`` is called with inside ``graph``, on ``inputs``.

    A plain functional model over ``graph``'s inputs, truncated at the tensors read by
    the layers' (only) inbound nodes, gives their values; they are put back in each
    node's call structure (positional and keyword arguments).
    """
    nodes = [node for layer in layers for node in layer._inbound_nodes]
    assert len(nodes) == len(layers)  # each layer is called once in the graph
    tensors = list({id(t): t for node in nodes for t in node.arguments.keras_tensors}.values())
    # A Keras mask riding on an input would change attention; the oracle passes none.
    assert all(getattr(t, "_keras_mask", None) is None for t in tensors)
    if isinstance(graph.input, dict) and not isinstance(inputs, dict):
        (key,) = graph.input  # a one-input model given a bare array
        inputs = {key: inputs}
    values = keras.tree.flatten(keras.Model(graph.input, tensors).predict_on_batch(inputs))
    filled = {id(t): ops.convert_to_tensor(v) for t, v in zip(tensors, values, strict=True)}
    return [node.arguments.fill_in(filled) for node in nodes]


def block_call(graph: keras.Model, layer: Any, inputs: Any) -> Call:
    """``block_calls`` for one layer."""
    (call,) = block_calls(graph, [layer], inputs)
    return call


def mha_oracle(
    o: Oracle,
    alias: str,
    path: str,
    mha: keras.layers.MultiHeadAttention,
    query: Any,
    value: Any,
    mask: Any = None,
    **call_kwargs: Any,
) -> Any:
    """Projections, scores and output of a Keras MHA.

    The output is the layer's own call (fused where it has no dropout); the scores come
    from the layer asked for them, whose output must agree with it.
    """
    o.add(f"{alias}query", f"{path}/query", mha._query_dense(query))
    o.add(f"{alias}key", f"{path}/key", mha._key_dense(value))
    o.add(f"{alias}value", f"{path}/value", mha._value_dense(value))
    out = mha(query, value, attention_mask=mask, **call_kwargs)
    unfused, scores = mha(
        query, value, attention_mask=mask, return_attention_scores=True, **call_kwargs
    )
    assert_close(to_numpy(unfused), to_numpy(out), TOL)
    o.scores(alias, path, mha._softmax.name, scores)
    return o.add(f"{alias}attention", path, out)


def transformer_encoder(o: Oracle, alias: str, path: str, block: Any, x: Any, pad: Any) -> None:
    """``keras_hub.layers.TransformerEncoder.call`` (Bert, DistilBert; WhisperEncoder)."""
    mask = masks.merge_padding_and_attention_mask(x, pad, None)
    residual = x
    if block.normalize_first:
        x = o.add(
            f"{alias}norm1",
            f"{path}/self_attention_layer_norm",
            block._self_attention_layer_norm(x),
        )
    attn = block._self_attention_layer
    x = mha_oracle(o, alias, f"{path}/{attn.name}", attn, x, x, mask)
    x = block._self_attention_dropout(x) + residual
    if not block.normalize_first:
        x = o.add(
            f"{alias}norm1",
            f"{path}/self_attention_layer_norm",
            block._self_attention_layer_norm(x),
        )
    residual = x
    if block.normalize_first:
        x = o.add(
            f"{alias}norm2", f"{path}/feedforward_layer_norm", block._feedforward_layer_norm(x)
        )
    x = o.add(
        f"{alias}mlp_in",
        f"{path}/feedforward_intermediate_dense",
        block._feedforward_intermediate_dense(x),
    )
    x = o.add(
        f"{alias}mlp_out", f"{path}/feedforward_output_dense", block._feedforward_output_dense(x)
    )
    x = block._feedforward_dropout(x) + residual
    if not block.normalize_first:
        x = o.add(
            f"{alias}norm2", f"{path}/feedforward_layer_norm", block._feedforward_layer_norm(x)
        )
    o.add(f"{alias}block", path, x)


def encoder_only(backbone: keras.Model, inputs: Any) -> Oracle:
    """BertBackbone, DistilBertBackbone: post-norm encoder blocks with a padding mask."""
    o = Oracle()
    block = backbone.get_layer("transformer_layer_0")
    (x,), kwargs = block_call(backbone, block, inputs)
    transformer_encoder(o, "", "transformer_layer_0", block, x, kwargs["padding_mask"])
    return o


def causal_mask(x: Any, pad: Any) -> Any:
    """Padding mask merged with a causal mask, as keras-hub decoders build it."""
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    padding = masks.merge_padding_and_attention_mask(x, pad, None)
    return ops.minimum(padding, masks.compute_causal_mask(batch, length, length))


def gemma(backbone: keras.Model, inputs: Any) -> Oracle:
    """GemmaDecoderBlock + CachedGemmaAttention (grouped queries, RoPE, gated GELU MLP)."""
    o, p = Oracle(), "decoder_block_0"
    block = backbone.get_layer(p)
    (x,), kwargs = block_call(backbone, block, inputs)
    attn = block.attention
    normed = o.add("norm1", f"{p}/pre_attention_norm", block.pre_attention_norm(x))
    mask = causal_mask(normed, kwargs["padding_mask"])
    q = o.add("query", f"{p}/attention/query", attn.query_dense(normed))
    k = o.add("key", f"{p}/attention/key", attn.key_dense(normed))
    o.add("value", f"{p}/attention/value", attn.value_dense(normed))
    rope = attn.rope_layer.name  # called twice: @0 on the query, @1 on the key
    q = o.add("rope_q", f"{p}/attention/{rope}@0", attn.rope_layer(q, start_index=0))
    k = o.add("rope_k", f"{p}/attention/{rope}@1", attn.rope_layer(k, start_index=0))
    # Gemma's layout for the rotated halves (CachedGemmaAttention._apply_rope).
    q = ops.reshape(ops.stack(ops.split(q, 2, axis=-1), axis=-1), ops.shape(q))
    k = ops.reshape(ops.stack(ops.split(k, 2, axis=-1), axis=-1), ops.shape(k))
    # CachedGemmaAttention's unfused path (the fused op runs on GPU and TPU only).
    q = q * ops.cast(1 / np.sqrt(attn.head_dim), q.dtype)
    b, t = ops.shape(q)[0], ops.shape(q)[1]
    groups = attn.num_query_heads // attn.num_key_value_heads
    q = ops.reshape(q, (b, t, attn.num_key_value_heads, groups, attn.head_dim))
    logits = ops.einsum("btkgh,bskh->bkgts", q, k)
    scores = attn.softmax(logits, mask=mask[:, None, None, :, :])
    o.scores("", f"{p}/attention", attn.softmax.name, scores)
    attention = o.add("attention", f"{p}/attention", attn(normed, attention_mask=mask))
    x = x + attention
    normed = o.add("norm2", f"{p}/pre_ffw_norm", block.pre_ffw_norm(x))
    x1 = o.add("mlp_in", f"{p}/ffw_gating", block.gating_ffw(normed))
    x2 = o.add("mlp_in_2", f"{p}/ffw_gating_2", block.gating_ffw_2(normed))
    y = block.ffw_linear(keras.activations.gelu(x1, approximate=True) * x2)
    o.add("mlp_out", f"{p}/ffw_linear", y)
    o.add("block", p, y + x)
    return o


def llama(backbone: keras.Model, inputs: Any) -> Oracle:
    """LlamaTransformerDecoder + LlamaAttention (grouped queries, RoPE, SwiGLU MLP)."""
    o, p = Oracle(), "transformer_layer_0"
    block = backbone.get_layer(p)
    (x,), kwargs = block_call(backbone, block, inputs)
    attn = block._self_attention_layer
    mask = causal_mask(x, kwargs["decoder_padding_mask"])
    normed = o.add("norm1", f"{p}/self_attention_layernorm", block._self_attention_layernorm(x))
    q = o.add("query", f"{p}/self_attention/query", attn._query_dense(normed))
    k = o.add("key", f"{p}/self_attention/key", attn._key_dense(normed))
    o.add("value", f"{p}/self_attention/value", attn._value_dense(normed))
    rope = attn.rotary_embedding_layer  # called twice: @0 on the query, @1 on the key
    q = o.add("rope_q", f"{p}/self_attention/{rope.name}@0", rope(q, start_index=0))
    k = o.add("rope_k", f"{p}/self_attention/{rope.name}@1", rope(k, start_index=0))
    # LlamaAttention's unfused path, by hand (JAX and torch fuse it: the model's own
    # output below is the fused op's there).
    k = ops.repeat(k, repeats=attn.num_key_value_groups, axis=2)
    logits = ops.einsum(attn._dot_product_equation, q, k)
    logits = logits * ops.cast(attn._inv_norm_factor, logits.dtype)
    scores = attn._softmax(logits, mask[:, None, :, :])
    o.scores("", f"{p}/self_attention", attn._softmax.name, scores)
    attention = attn(hidden_states=normed, attention_mask=mask)
    x = o.add("attention", f"{p}/self_attention", attention) + x
    normed = o.add("norm2", f"{p}/feedforward_layernorm", block._feedforward_layernorm(x))
    gate = o.add("mlp_gate", f"{p}/feedforward_gate_dense", block._feedforward_gate_dense(normed))
    h = o.add(
        "mlp_in",
        f"{p}/feedforward_intermediate_dense",
        block._feedforward_intermediate_dense(normed),
    )
    y = block._feedforward_output_dense(h * block.activation(gate))
    o.add("mlp_out", f"{p}/feedforward_output_dense", y)
    o.add("block", p, y + x)
    return o


def vit(backbone: keras.Model, inputs: Any) -> Oracle:
    """ViTEncoderBlock, inside the ViTEncoder layer (pre-norm, no mask)."""
    o = Oracle()
    encoder = backbone.get_layer("vit_encoder")
    (x,), _ = block_call(backbone, encoder, inputs)
    x = encoder.dropout(x)  # ViTEncoder.call, before its first block
    block = encoder.encoder_layers[0]
    p = f"vit_encoder/{block.name}"
    h = o.add("norm1", f"{p}/ln_1", block.layer_norm_1(x))
    x = block.dropout(mha_oracle(o, "", f"{p}/mha", block.mha, h, h)) + x
    y = o.add("norm2", f"{p}/ln_2", block.layer_norm_2(x))
    y = o.add("mlp_in", f"{p}/mlp/dense_1", block.mlp.dense_1(y))
    y = o.add("mlp_out", f"{p}/mlp/dense_2", block.mlp.dense_2(block.mlp.dropout(y)))
    o.add("block", p, x + block.mlp.dropout(y))
    return o


def dinov2(backbone: keras.Model, inputs: Any) -> Oracle:
    """DINOV2Layer, inside the DINOV2Encoder layer (pre-norm, layer scale, no mask)."""
    o, p = Oracle(), "encoder/layers_0"
    encoder = backbone.get_layer("encoder")
    (x,), _ = block_call(backbone, encoder, inputs)
    block = encoder.layers[0]
    h = o.add("norm1", f"{p}/norm1", block.norm1(x))
    mha_oracle(o, "", f"{p}/attention/attention", block.attention.attention, h, h)
    attention = o.add("attention_block", f"{p}/attention", block.attention(h))
    x = block.drop_path(o.add("scale1", f"{p}/layer_scale1", block.layer_scale1(attention))) + x
    y = o.add("norm2", f"{p}/norm2", block.norm2(x))
    y = o.add("mlp_in", f"{p}/mlp/fc1", block.mlp.fc1(y))
    y = o.add("mlp_out", f"{p}/mlp/fc2", block.mlp.fc2(y))
    o.add("block", p, block.drop_path(block.layer_scale2(y)) + x)
    return o


def clip(backbone: keras.Model, inputs: Any) -> Oracle:
    """CLIPEncoderLayer in the vision and in the text encoder (nested functional models)."""
    o = Oracle()
    for alias, encoder, key in (
        ("vision_", backbone.vision_encoder, "images"),
        ("text_", backbone.text_encoder, "token_ids"),
    ):
        block = encoder.get_layer("encoder_block_0")
        # The truncated model runs over the nested encoder's own input.
        (x,), _ = block_call(encoder, block, {key: inputs[key]})
        p = f"{encoder.name}/{block.name}"
        h = o.add(f"{alias}norm1", f"{p}/layer_norm_1", block.layer_norm_1(x))
        causal = {"use_causal_mask": block.use_causal_mask}  # True in the text encoder
        x = mha_oracle(o, alias, f"{p}/attention", block.attention, h, h, **causal) + x
        y = o.add(f"{alias}norm2", f"{p}/layer_norm_2", block.layer_norm_2(x))
        y = o.add(f"{alias}mlp_in", f"{p}/dense_1", block.dense_1(y))
        y = o.add(f"{alias}mlp_out", f"{p}/dense_2", block.dense_2(block.activation(y)))
        o.add(f"{alias}block", p, y + x)
    return o


def whisper(backbone: keras.Model, inputs: Any) -> Oracle:
    """WhisperEncoder (pre-norm TransformerEncoder) and WhisperDecoder (self + cross)."""
    o = Oracle()
    encoder, decoder = (
        backbone.get_layer(f"transformer_{n}_layer_0") for n in ("encoder", "decoder")
    )
    ((x,), enc_kwargs), (_, kwargs) = block_calls(backbone, [encoder, decoder], inputs)
    assert encoder.normalize_first and not enc_kwargs  # called without a padding mask
    transformer_encoder(o, "enc_", encoder.name, encoder, x, None)

    # TransformerDecoder.call with normalize_first=True (the Whisper setting).
    p = decoder.name
    x = residual = kwargs["decoder_sequence"]
    encoded = kwargs["encoder_sequence"]
    assert decoder.normalize_first and set(kwargs) == {
        "decoder_sequence",
        "encoder_sequence",
        "decoder_padding_mask",
    }
    mask = causal_mask(x, kwargs["decoder_padding_mask"])
    h = o.add("dec_norm1", f"{p}/self_attention_layer_norm", decoder._self_attention_layer_norm(x))
    attn = decoder._self_attention_layer
    x = mha_oracle(o, "dec_", f"{p}/{attn.name}", attn, h, h, mask)
    x = decoder._self_attention_dropout(x) + residual
    h = o.add(
        "dec_cross_norm", f"{p}/cross_attention_layer_norm", decoder._cross_attention_layer_norm(x)
    )
    cross = decoder._cross_attention_layer
    cross_mask = masks.merge_padding_and_attention_mask(encoded, None, None)  # None: unpadded
    y = mha_oracle(o, "dec_cross_", f"{p}/{cross.name}", cross, h, encoded, cross_mask)
    x = decoder._cross_attention_dropout(y) + x
    h = o.add("dec_norm2", f"{p}/feedforward_layer_norm", decoder._feedforward_layer_norm(x))
    h = o.add(
        "dec_mlp_in",
        f"{p}/feedforward_intermediate_dense",
        decoder._feedforward_intermediate_dense(h),
    )
    y = o.add("dec_mlp_out", f"{p}/feedforward_output_dense", decoder._feedforward_output_dense(h))
    o.add("dec_block", p, decoder._feedforward_dropout(y) + x)
    return o


ORACLES: dict[str, Callable[[keras.Model, Any], Oracle]] = {
    "BertBackbone": encoder_only,
    "DistilBertBackbone": encoder_only,
    "GemmaBackbone": gemma,
    "LlamaBackbone": llama,
    "ViTBackbone": vit,
    "DINOV2Backbone": dinov2,
    "CLIPBackbone": clip,
    "WhisperBackbone": whisper,
}


@pytest.mark.parametrize("name", list(ORACLES))
def test_first_block_taps_match_hand_run_sublayers(name: str, rng: np.random.Generator) -> None:
    """Every tap in the first block equals the hand-run sublayer, attention scores included
    (fused or not); the block's output with its scores tapped is the model's own."""
    backbone, make_inputs = BACKBONES[name]()
    inputs = make_inputs(rng, BATCH)
    for key, array in inputs.items() if isinstance(inputs, dict) else []:
        if "padding_mask" in key:
            assert (array == 0).any() and (array == 1).any()  # really padded
    oracle = ORACLES[name](backbone, inputs)
    assert oracle.attention  # every backbone here has attention in its first block

    got = layertap.Extractor(backbone, {alias: path for alias, (path, _) in oracle.taps.items()})(
        inputs
    )
    assert set(got) == set(oracle.taps)
    for alias, (path, expected) in oracle.taps.items():
        try:
            assert_close(got[alias], expected, TOL)
        except AssertionError as err:
            raise AssertionError(f"{name}: tap {alias!r} ({path})\n{err}") from None

    records = {r.path: r for r in layertap.list_layers(backbone)}
    for attention, softmax in oracle.attention.items():
        record = records[f"{attention}/{softmax}"]
        assert record.class_name == "Softmax" and record.trace_error is None
        assert record.alias is not None and record.alias.endswith("/scores")
        heads = record.output_shape[1:-2]  # Gemma keeps (kv heads, groups) apart
        assert record.output_shape[0] is None and all(h is not None for h in heads)
