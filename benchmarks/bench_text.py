"""Text lines to pooled features on disk: layertap extract vs predict on tokenized inputs.

Writes a BERT-style keras-hub preset into a temp dir (nothing is downloaded):
``BertBackbone`` with random weights in the shape of ``--config`` (``small``, the
default: keras-hub's ``bert_small_en_uncased``, 4 layers, 8 heads, hidden 512,
intermediate 2048, vocabulary 30522, ``max_sequence_length=512``; ``tiny``:
``bert_tiny_en_uncased``, 2 layers, 2 heads, hidden 128, intermediate 512; ``toy``: 2
layers, 2 heads, hidden 64, intermediate 256), a tokenizer vocabulary of a few hundred
words built in code (the five special tokens first), ``BertTokenizer`` and
``BertTextClassifierPreprocessor(sequence_length=--sequence-length)``, all saved with
``save_to_preset``. ``lines.txt`` holds ``--lines`` random sentences of 5-40 words
(seeded).

- **throughput**: rows/s of ``layertap.extract(preset dir, Path("lines.txt"),
  {"emb": layer}, "out.h5", pool="avg")`` (what ``layertap extract PRESET lines.txt
  -l emb=LAYER --pool avg -o out.h5 -q`` runs: preset load, tokenization batch by
  batch, the truncated model's ``predict_on_batch``, masked mean, HDF5 writes; all
  timed) over rows/s of the backbone's ``predict`` on the same lines already tokenized
  and padded (``layertap.graph.preset.text_inputs``; tokenization not timed). Same
  batch size. Target >= 0.90.
- diagnostics: ``predict`` of the truncated model (input -> LAYER, what layertap
  runs); extract on one batch of lines (its fixed cost: preset load, planning,
  tracing) and the marginal rate that leaves; ``load_preset`` alone; tokenizing the
  lines batch by batch as extract does; the truncated model's ``predict_on_batch``
  batch by batch on tokenized inputs (extract's forward pass without the rest).

Each variant runs once as a warm-up, then ``--repeats`` interleaved rounds; medians.

Usage::

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_text.py
    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_text.py --config tiny --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _timing import environment, interleaved

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

#: BertBackbone shapes: (layers, heads, hidden, intermediate, vocabulary size).
CONFIGS = {
    "small": (4, 8, 512, 2048, 30522),  # keras-hub's bert_small_en_uncased
    "tiny": (2, 2, 128, 512, 30522),  # keras-hub's bert_tiny_en_uncased
    "toy": (2, 2, 64, 256, None),  # None: the tokenizer's vocabulary
}


def vocabulary(n_words: int = 400) -> list[str]:
    """The special tokens, then ``n_words`` made-up lowercase words and some punctuation."""
    onsets = "b d f g k l m n p r s t v z".split()
    vowels = "a e i o u".split()
    syllables = [c + v for c in onsets for v in vowels]  # 70
    words: list[str] = []
    for first in syllables:
        for second in syllables:
            words.append(first + second)
            if len(words) == n_words:
                return SPECIAL + [".", ","] + words
    return SPECIAL + [".", ","] + words


def write_lines(path: Path, words: list[str], n: int, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            k = int(rng.integers(5, 41))
            f.write(" ".join(words[i] for i in rng.integers(0, len(words), k)) + " .\n")


def write_preset(directory: Path, vocab: list[str], config: str, sequence_length: int) -> None:
    import keras_hub

    layers, heads, hidden, intermediate, vocabulary_size = CONFIGS[config]
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size or len(vocab),
        num_layers=layers,
        num_heads=heads,
        hidden_dim=hidden,
        intermediate_dim=intermediate,
        max_sequence_length=512,
    )
    backbone.save_to_preset(str(directory))
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab)
    tokenizer.save_to_preset(str(directory))
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    preprocessor.save_to_preset(str(directory))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--layer", default=None, help="default: the last transformer layer")
    parser.add_argument("--sequence-length", type=int, default=64)
    args = parser.parse_args()
    num_layers, num_heads, hidden, _, vocabulary_size = CONFIGS[args.config]
    layer = args.layer or f"transformer_layer_{num_layers - 1}"
    batch = args.batch_size

    import h5py
    import keras
    import keras_hub
    import numpy as np

    import layertap
    from layertap.graph.preset import text_inputs

    tmp = Path(tempfile.mkdtemp(prefix="layertap-bench-text-"))
    preset_dir = tmp / "bert_preset"
    vocab = vocabulary()
    write_preset(preset_dir, vocab, args.config, args.sequence_length)
    words = vocab[len(SPECIAL) + 2 :]
    lines = tmp / "lines.txt"
    write_lines(lines, words, args.lines)
    one_batch = tmp / "one_batch.txt"
    one_batch.write_text("".join(lines.read_text().splitlines(keepends=True)[:batch]))
    texts = lines.read_text(encoding="utf-8").splitlines()

    # The baselines: the same preset, loaded once, on inputs tokenized beforehand.
    preset = layertap.load_preset(str(preset_dir))
    backbone = preset.model
    truncated = keras.Model(backbone.input, backbone.get_layer(layer).output)
    x = text_inputs(preset, texts)
    chunks = [{k: v[i : i + batch] for k, v in x.items()} for i in range(0, len(texts), batch)]
    n_tokens = int(x["padding_mask"].sum())

    runs = 0

    def extract(inputs: Path) -> Callable[[], Any]:
        def go() -> Any:
            nonlocal runs
            runs += 1  # a fresh file each time: the same run again would be "complete"
            return layertap.extract(
                str(preset_dir),
                inputs,
                {"emb": layer},
                tmp / f"out{runs}.h5",
                pool="avg",
                batch_size=batch,
                progress=False,
            )

        return go

    def tokenize() -> None:
        for i in range(0, len(texts), batch):
            text_inputs(preset.preprocessor, texts[i : i + batch])

    variants: dict[str, Callable[[], Any]] = {
        "extract": extract(lines),
        "predict": lambda: backbone.predict(x, batch_size=batch, verbose=0),
        "truncated": lambda: truncated.predict(x, batch_size=batch, verbose=0),
        "extract_1": extract(one_batch),
        "load": lambda: layertap.load_preset(str(preset_dir)),
        "tokenize": tokenize,
        "on_batch": lambda: [truncated.predict_on_batch(c) for c in chunks],
    }

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    outs = {k: f() for k, f in variants.items()}
    warmup = time.perf_counter() - t0
    # Sanity check: extract's rows are the truncated model's masked means.
    mask = x["padding_mask"].astype("float32")[..., None]
    expected = (outs["truncated"] * mask).sum(1) / mask.sum(1)
    with h5py.File(outs["extract"].path) as f:
        got = f["emb"][:]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    times = interleaved(variants, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = len(texts)
    rate = {k: n / med[k] for k in ("extract", "predict", "truncated", "tokenize", "on_batch")}
    marginal = (n - batch) / (med["extract"] - med["extract_1"])
    fixed = med["extract_1"] - batch / marginal  # time = fixed + rows / marginal
    ratio = rate["extract"] / rate["predict"]

    print(environment(load0[0], keras_hub=keras_hub.__version__))
    print(
        f"BertBackbone ({args.config}) {num_layers} layers, {num_heads} heads, hidden {hidden}, "
        f"vocabulary {vocabulary_size or len(vocab)} (tokenizer {len(vocab)}); tap {layer} "
        f"pool avg; {n} lines ({n_tokens} tokens, "
        f"{n_tokens / n:.1f} per line) padded to {args.sequence_length}; batch {batch}; "
        f"median of {args.repeats} interleaved repeats after a warm-up ({warmup:.1f} s)"
    )
    print(f"{'measure':60} {'value':>9} {'target':>8}  ok")
    rows = [
        (f"layertap extract, lines.txt -> HDF5 ({n} lines), rows/s", rate["extract"], "", ""),
        ("backbone.predict on tokenized inputs, rows/s", rate["predict"], "", ""),
        ("throughput ratio extract / predict", ratio, ">= 0.90", ratio >= 0.90),
        (f"truncated model (input -> {layer}).predict, rows/s", rate["truncated"], "", ""),
        ("extract on one batch (fixed cost), s", med["extract_1"], "", ""),
        ("  of which load_preset, s", med["load"], "", ""),
        ("extract, marginal rate past the first batch, rows/s", marginal, "", ""),
        ("extract fixed cost (one batch's share removed), s", fixed, "", ""),
        (f"tokenize in batches of {batch} (text_inputs), rows/s", rate["tokenize"], "", ""),
        (f"truncated predict_on_batch, batches of {batch}, rows/s", rate["on_batch"], "", ""),
    ]
    for name, value, target, ok in rows:
        mark = "" if ok == "" else ("yes" if ok else "NO")
        print(f"{name:60} {value:9.2f} {target:>8}  {mark}")
    print("all repeats (s):")
    for k, v in times.items():
        print(f"  {k:10s} " + " ".join(f"{t:.3f}" for t in v) + f"  (min {min(v):.3f})")


if __name__ == "__main__":
    main()
