"""Grad-CAM at an inner layer of a nested MobileNetV2, next to one plain ``predict``.

A keras.applications MobileNetV2 (160 px, alpha 1.0, ``weights=None``) nested in a
Sequential head (global average pooling, a 10-class softmax ``Dense``), weights drawn
from a seeded generator (He-scaled kernels, BatchNorm scales and variances in [0.5,
1.5]: Keras's default initialisation leaves the logits at ~1e-12), ``--images``
random images (default 256):

- **ratio**: seconds of ``layertap.explain(model, x, "mobilenetv2_1.00_160/block_13_expand_relu",
  method="gradcam", batch_size=B)`` (one forward and one backward pass per batch, the
  maps upsampled to 160 px and normalised) over seconds of ``model.predict(x,
  batch_size=B)``. Target <= 3.5: a forward plus a backward costs about 3x a forward.
- **tf-keras-vis** (TensorFlow only, when installed): its ``Gradcam`` on a *flattened*
  copy of the model (the backbone's layers re-applied in one Functional; tf-keras-vis
  fails on the nested model), same layer, ``ReplaceToLinear``, ``CategoricalScore`` of
  the top classes, ``seek_penultimate_conv_layer=False`` (by default it explains the
  nearest Conv2D before a layer that is not one: ``block_13_expand``, not its ReLU).
  Each image's largest difference from layertap's map (both at the layer's resolution,
  in [0, 1]) is taken; their median must stay below 1e-3, their maximum is printed.
  Both are float32 tapes (layertap's compiled, tf-keras-vis's eager) of a network whose
  float32 maps sit ~2e-3 (median image) to 0.2 from a float64 tape's, and up to 1.0 on
  images whose channel sum nearly cancels before normalising: benchmarks/README.md.
- diagnostics: ``explain``'s first call on the model (it walks the model, builds the
  gradient model and traces its step; later calls reuse them, as ``predict`` reuses its
  compiled function after its warm-up), ``Extractor.gradients`` alone (no maps),
  ``explain`` at the layer's resolution (``upsample=False``).

Transformers (``--part transformers``), a keras-hub ``ViTBackbone`` shaped as ViT-B/16
(224 px, patch 16, 12 blocks of 12 heads, width 768, MLP 3072; random weights), over
``--vit-images`` random images (default 16), batch ``--vit-batch`` (8):

- **rollout**: ``explain(vit, x, method="rollout")`` (one forward pass tapping all 12
  blocks' attention probabilities, the rollout in numpy, maps upsampled) over
  ``vit.predict(x)``. Target <= 1.5.
- **fused vs unfused**: the feature model's ``predict`` with a tap inside the encoder
  that is not attention scores (``vit_encoder/transformer_block_11``: every attention
  stays fused; "no slowdown" is this ratio near 1), and with every block's scores
  tapped (``**/scores``: all 12 run unfused), each over ``vit.predict(x)``. Recorded.
- **text integrated gradients**: a ``BertTextClassifier`` shaped as BERT-Small (4 blocks,
  width 512, 8 heads, MLP 2048; random weights) on ``--texts`` rows (16) of 128 token
  ids: ``explain(task, ids, "bert_backbone/token_embedding",
  method="integrated_gradients", steps=32)`` over 32 forward+backward passes at the same
  tap (``Extractor.gradients``, which IG runs 33 times: the path's 32 steps and x).
  Target <= 1.2.

Each variant runs once as a warm-up, then ``--repeats`` interleaved rounds; medians.

Usage::

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_explain.py
    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_explain.py --images 128
    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_explain.py --part transformers
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

from _timing import environment, interleaved

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LAYER = "block_13_expand_relu"
AGREE = 1e-3  # median over images of max |layertap - tf-keras-vis| (measured: 2.4e-5)


def build(size: int) -> Any:
    import keras

    backbone = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=None
    )
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            backbone,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax", name="head"),
        ]
    )
    # Keras's default initialisation (BatchNorm's unit variance, no training) leaves this
    # deep net's logits at ~1e-12, where maps are float32 noise; these seeded weights keep
    # every block O(1): He-scaled kernels, BatchNorm scales and variances in [0.5, 1.5].
    import numpy as np

    rng = np.random.default_rng(11)
    for w in model.weights:
        shape = tuple(w.shape)
        if "variance" in w.path or "gamma" in w.path:
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1])) if "depthwise" not in w.path else shape[0] * shape[1]
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        else:
            value = rng.normal(0, 0.1, shape)
        w.assign(value.astype("float32"))
    return model


def flattened(model: Any) -> Any:
    """A copy of the model in one Functional (the backbone's layers at the top level),
    with the same weights: what tf-keras-vis can take. The copy has its own layers, so
    each is called once (re-calling the original layers would give them a second node,
    and ``layer.output``, which tf-keras-vis reads, is the first node's)."""
    import keras

    backbone, pool, head = model.layers
    inner = keras.models.clone_model(backbone)
    inner.set_weights(backbone.get_weights())
    dense = keras.layers.Dense(head.units, activation=head.activation, name="head")
    out = dense(keras.layers.GlobalAveragePooling2D()(inner.output))
    dense.set_weights(head.get_weights())
    return keras.Model(inner.input, out)


def _table(rows: list[tuple[str, float, str, Any]]) -> None:
    print(f"{'measure':56} {'value':>8} {'target':>8}  ok")
    for name, value, target, ok in rows:
        mark = "" if ok == "" else ("yes" if ok else "NO")
        shown = f"{value:8.2f}" if value == 0 or abs(value) >= 0.01 else f"{value:8.1e}"
        print(f"{name:56} {shown} {target:>8}  {mark}")


def _repeats(times: dict[str, list[float]]) -> None:
    print("all repeats (s):")
    for k, v in times.items():
        print(f"  {k:14s} " + " ".join(f"{t:.2f}" for t in v))


def bert_small(rows: int) -> tuple[Any, dict[str, Any]]:
    """A BertTextClassifier shaped as BERT-Small (random weights) and ``rows`` rows of 128
    token ids, the last quarter of each row padding."""
    import keras_hub
    import numpy as np

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=30522, num_layers=4, num_heads=8, hidden_dim=512,
        intermediate_dim=2048, max_sequence_length=128, name="bert_backbone",
    )  # fmt: skip
    task = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
    rng = np.random.default_rng(1)
    mask = np.ones((rows, 128), bool)
    mask[:, 96:] = False
    ids = np.where(mask, rng.integers(1000, 30522, (rows, 128)), 0).astype("int32")
    return task, {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}


def transformers(args: argparse.Namespace) -> None:
    """Rollout and fused vs unfused attention on a ViT-B/16-shaped backbone."""
    import keras_hub
    import numpy as np

    import layertap
    from layertap.explainer.methods import explain

    vit = keras_hub.models.ViTBackbone(
        image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=12,
        hidden_dim=768, mlp_dim=3072,
    )  # fmt: skip
    x = np.random.default_rng(0).uniform(-1, 1, (args.vit_images, 224, 224, 3)).astype("f4")
    b = args.vit_batch
    fused = layertap.Extractor(vit, ["vit_encoder/transformer_block_11"])
    unfused = layertap.Extractor(vit, ["**/scores"])
    assert len(unfused.places) == 12
    task, ids = bert_small(args.texts)
    at = layertap.Extractor(task, ["bert_backbone/token_embedding"])
    n = args.texts
    variants: dict[str, Callable[[], Any]] = {
        "predict": lambda: vit.predict(x, batch_size=b, verbose=0),
        "tap_fused": lambda: fused.predict(x, batch_size=b),
        "tap_scores": lambda: unfused.predict(x, batch_size=b),
        "rollout": lambda: explain(vit, x, method="rollout", batch_size=b),
        "grad32": lambda: [at.gradients(ids, 0, batch_size=n) for _ in range(32)],
        "text_ig": lambda: explain(
            task,
            ids,
            "bert_backbone/token_embedding",
            method="integrated_gradients",
            target=0,
            steps=32,
            batch_size=n,
        ),  # fmt: skip
    }
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    for f in variants.values():
        f()
    warmup = time.perf_counter() - t0
    times = interleaved(variants, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(environment(load0[0], keras_hub=keras_hub.__version__))
    print(
        f"ViTBackbone shaped as ViT-B/16 (224 px, 12 x 12 heads, width 768), random weights; "
        f"{args.vit_images} images, batch {b}; median of {args.repeats} interleaved repeats "
        f"after a warm-up ({warmup:.1f} s)"
    )
    rollout = med["rollout"] / med["predict"]
    ig = med["text_ig"] / med["grad32"]
    _table(
        [
            ("vit.predict, s", med["predict"], "", ""),
            ("explain rollout (12 blocks), s", med["rollout"], "", ""),
            ("ratio rollout / predict", rollout, "<= 1.5", rollout <= 1.5),
            ("tap inside the encoder, attention fused, s", med["tap_fused"], "", ""),
            ("  ratio / predict", med["tap_fused"] / med["predict"], "", ""),
            ("tap every block's scores (12 unfused), s", med["tap_scores"], "", ""),
            ("  ratio / predict", med["tap_scores"] / med["predict"], "", ""),
            ("BERT-Small: 32 forward+backward passes at the embedding, s", med["grad32"], "", ""),
            ("text integrated gradients, 32 steps, s", med["text_ig"], "", ""),
            ("ratio text IG / 32 passes", ig, "<= 1.2", ig <= 1.2),
        ]
    )
    _repeats(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["cnn", "transformers", "all"], default="all")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vit-images", type=int, default=16)
    parser.add_argument("--vit-batch", type=int, default=8)
    parser.add_argument("--texts", type=int, default=16)
    args = parser.parse_args()
    if args.part in ("cnn", "all"):
        cnn(args)
    if args.part in ("transformers", "all"):
        transformers(args)


def cnn(args: argparse.Namespace) -> None:
    """Grad-CAM on a nested MobileNetV2, with tf-keras-vis beside it on TensorFlow."""
    import keras
    import numpy as np

    import layertap
    from layertap.explainer import methods
    from layertap.explainer.methods import explain

    model = build(args.size)
    backbone = model.layers[0]
    spec = f"{backbone.name}/{LAYER}"
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.images, args.size, args.size, 3)).astype("float32")
    b = args.batch_size
    ex = layertap.Extractor(model, {"l": spec})

    variants: dict[str, Callable[[], Any]] = {
        "predict": lambda: model.predict(x, batch_size=b, verbose=0),
        "explain": lambda: explain(model, x, spec, batch_size=b),
        "explain_cold": lambda: (methods._CACHE.clear(), explain(model, x, spec, batch_size=b)),
        "gradients": lambda: ex.gradients(x, batch_size=b),
        "explain_small": lambda: explain(model, x, spec, batch_size=b, upsample=False),
    }
    peer = None
    if keras.backend.backend() == "tensorflow":
        try:
            from tf_keras_vis.gradcam import Gradcam
            from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
            from tf_keras_vis.utils.scores import CategoricalScore
        except ImportError:
            print("tf-keras-vis not installed: its row is left out")
        else:
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            flat = flattened(model)
            top = model.predict(x, batch_size=b, verbose=0).argmax(1)
            peer = Gradcam(flat, model_modifier=ReplaceToLinear())

            def run_peer() -> Any:
                maps = [
                    peer(
                        CategoricalScore(list(top[i : i + b])),
                        x[i : i + b],
                        penultimate_layer=LAYER,
                        seek_penultimate_conv_layer=False,  # LAYER, not the conv before it
                        expand_cam=False,
                    )  # fmt: skip
                    for i in range(0, len(x), b)
                ]
                return np.concatenate(maps)

            variants["tf_keras_vis"] = run_peer

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    outs = {k: f() for k, f in variants.items()}
    warmup = time.perf_counter() - t0
    agreement = None  # each image's max |layertap - tf-keras-vis| of the [0, 1] maps
    if "tf_keras_vis" in outs:
        diff = np.abs(np.asarray(outs["explain_small"]) - outs["tf_keras_vis"])
        agreement = diff.reshape(len(x), -1).max(axis=1)
    times = interleaved(variants, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(environment(load0[0]))
    print(
        f"MobileNetV2 {args.size}px nested in a Sequential, tap {spec}; {args.images} images, "
        f"batch {b}; median of {args.repeats} interleaved repeats after a warm-up "
        f"({warmup:.1f} s)"
    )
    ratio = med["explain"] / med["predict"]
    best = min(times["explain"]) / min(times["predict"])
    rows = [
        ("model.predict, s", med["predict"], "", ""),
        (f"layertap.explain gradcam (maps at {args.size} px), s", med["explain"], "", ""),
        ("ratio explain / predict", ratio, "<= 3.5", ratio <= 3.5),
        ("  the same ratio by the fastest rounds", best, "", ""),
        ("  explain, first call (walk, gradient model, trace), s", med["explain_cold"], "", ""),
        ("  ratio of the first call / predict", med["explain_cold"] / med["predict"], "", ""),
        ("  Extractor.gradients alone, s", med["gradients"], "", ""),
        ("  explain at the layer's resolution, s", med["explain_small"], "", ""),
    ]
    if "tf_keras_vis" in med:
        rows.append(("tf-keras-vis Gradcam on a flattened copy, s", med["tf_keras_vis"], "", ""))
        rows.append(("ratio tf-keras-vis / predict", med["tf_keras_vis"] / med["predict"], "", ""))
        assert agreement is not None
        typical = float(np.median(agreement))
        rows.append(("max |layertap - tf-keras-vis| of the [0, 1] maps", agreement.max(), "", ""))
        rows.append(("  each image's max |diff|, median", typical, "< 1e-3", typical < AGREE))
        rows.append(("  images whose max |diff| < 1e-3, share", (agreement < 1e-3).mean(), "", ""))
    _table(rows)
    _repeats(times)
    if agreement is not None:
        typical = float(np.median(agreement))
        assert typical < AGREE, f"layertap and tf-keras-vis differ by {typical:.3g} (median)"


if __name__ == "__main__":
    main()
