"""Stage 7, the report: per-image overlays and a self-contained ``index.html``.

``write_report`` explains each image at each layer, and writes into one folder:

* ``overlays/<image>__<layer>.png``: the map over the image;
* ``grids/<image>__<layer>.png``: the layer's feature maps (top channels by mean);
* ``activation_stats.png``: per-layer statistics over the images;
* ``index.html``: every picture inlined as a ``data:`` URI (the page makes no network
  request and needs no other file), the top classes of each image with their names
  (``labels``), one panel per layer, the feature-map grids and the statistics.

Images that cannot be decoded are skipped and listed, as ``layertap extract`` does.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from layertap._errors import BadInputError, BadSpecError, LayerNotFoundError
from layertap.explainer import maps, viz
from layertap.explainer.methods import (
    ATTENTION_METHODS,
    CAM_METHODS,
    INPUT_METHODS,
    METHODS,
    explain,
)
from layertap.graph.extractor import Extractor
from layertap.io.images import Decoder, ImageSpec
from layertap.io.inputs import InputOptions

__all__ = ["TEXT_METHODS", "Report", "read_labels", "write_report", "write_text_report"]

_OUTPUT = "__layertap_output"
_DISPLAY = 384  # longest side of an image in the report


@dataclasses.dataclass
class Report:
    """What :func:`write_report` wrote.

    Attributes:
        index: the ``index.html`` path.
        overlays: the overlay PNGs, in image then layer order.
        images: the inputs explained.
        failed: ``(input, reason)`` of those that could not be decoded.
    """

    index: Path
    overlays: list[Path]
    images: list[str]
    failed: list[tuple[str, str]]


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """Class names: a ``.txt`` with one name per line (line i is class i), or a ``.json``
    list, or a dict from index to a name or to ``[id, name]`` (ImageNet's class index).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "l.json"
        >>> _ = p.write_text('{"1": ["n02", "goldfish"], "0": ["n01", "tench"]}')
        >>> read_labels(p)
        ['tench', 'goldfish']
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"labels file {str(path)!r} cannot be read: {exc}") from exc
    if path.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"labels file {str(path)!r} is not valid JSON: {exc}") from exc
    if isinstance(data, list):
        return [str(x) for x in data]
    if isinstance(data, dict) and all(str(k).isdigit() for k in data):
        names = {int(k): (v[-1] if isinstance(v, list) else v) for k, v in data.items()}
        return [str(names.get(i, i)) for i in range(max(names) + 1)]
    raise BadInputError(
        f"labels file {str(path)!r}: give a list of names, or a dict from class index to a "
        "name (or to [id, name])"
    )


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _display_image(path: str) -> np.ndarray:
    """The image upright, its longest side brought to between 224 and 384 pixels."""
    with Image.open(path) as img:
        out = ImageOps.exif_transpose(img).convert("RGB")
    scale = min(_DISPLAY, max(224, max(out.size))) / max(out.size)
    size = (max(1, round(out.width * scale)), max(1, round(out.height * scale)))
    return np.asarray(out.resize(size, Image.Resampling.BILINEAR) if scale != 1 else out)


def _decode(
    spec: ImageSpec, inputs: Sequence[str], options: InputOptions
) -> tuple[list[str], np.ndarray | None, list[tuple[str, str]]]:
    """The inputs that decode, their arrays, and ``(input, reason)`` for the others."""
    with Decoder(spec, options.workers) as decoder:
        outcomes = decoder.decode([(item, -1) for item in inputs])
    good = [item for item, (x, _) in zip(inputs, outcomes, strict=True) if x is not None]
    failed = [(item, why) for item, (x, why) in zip(inputs, outcomes, strict=True) if x is None]
    arrays = [x for x, _ in outcomes if x is not None]
    return good, (np.stack(arrays) if arrays else None), failed


def _maps_per_layer(
    model: Any, images: np.ndarray, layers: Sequence[str], method: str, target: Any, batch: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Any]:
    """``{layer: maps}``, ``{layer: activations}`` and the gradient result."""
    if method in INPUT_METHODS:
        raise BadSpecError(f"the report draws layer maps; {method} explains the input only")
    taps = {f"l{i}": spec for i, spec in enumerate(layers)}
    ex = Extractor(model, {**taps, _OUTPUT: -1})
    g = ex.gradients(images, target, batch_size=batch)
    acts = {spec: g.activations[key] for key, spec in taps.items()}
    for spec, a in acts.items():
        if a.ndim != 4:
            raise BadSpecError(
                f"layer {spec!r} gives {a.shape}, not a spatial map (n, height, width, "
                "channels): pick a convolutional layer (layertap layers MODEL)"
            )
    out = {}
    for key, spec in taps.items():
        if method in CAM_METHODS:
            raw = CAM_METHODS[method](g.activations[key], g.gradients[key])
            out[spec] = maps.normalize(maps.upsample(raw, images.shape[1:3]))
        else:
            out[spec] = np.asarray(explain(model, images, spec, method=method, target=g.targets))
    return out, acts, g


def _attention_maps(
    model: Any, images: np.ndarray, layers: Sequence[str], batch: int
) -> dict[str, np.ndarray]:
    """``{caption: rollout maps}`` over ``layers`` (default: every attention layer). There
    are no feature maps to draw (attention has no channels) and no class explained."""
    rollout = explain(model, images, list(layers) or None, method="rollout", batch_size=batch)
    return {f"rollout over {len(rollout.info['layer'])} attention layers": rollout}


def _top_classes(
    scores: np.ndarray, labels: Sequence[str] | None, top: int
) -> list[tuple[str, float]]:
    order = np.argsort(-scores)[:top]
    names = [labels[i] if labels is not None and i < len(labels) else f"class {i}" for i in order]
    return [(name, float(scores[i])) for name, i in zip(names, order, strict=True)]


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:2em;border-top:1px solid #ccc;padding-top:1em}
.panels{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0;background:#fff;padding:.5em;border:1px solid #ddd}
figcaption{font-size:.8em;color:#555;max-width:24em;word-break:break-all}
table{border-collapse:collapse;font-size:.9em} td,th{padding:.2em .6em;border-bottom:1px solid #eee}
img{display:block;max-width:24em}
"""


def _figure_html(picture: viz.Picture, caption: str, alt: str) -> str:
    return (
        f'<figure><img src="{picture.data_uri()}" alt="{html.escape(alt)}"/>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _class_name(index: int | None, labels: Sequence[str] | None) -> str:
    if index is not None and labels is not None and index < len(labels):
        return labels[index]
    return str(index)


@dataclasses.dataclass
class _Image:
    """One image's part of the report: its pictures written, its HTML section."""

    path: str
    maps: dict[str, np.ndarray]  # layer -> (H, W) map
    acts: dict[str, np.ndarray]  # layer -> (h, w, c) activation
    scores: np.ndarray  # the model's output row
    target: int | None

    def write(
        self, folder: Path, method: str, labels: Sequence[str] | None, top: int, grid: int
    ) -> tuple[str, list[Path]]:
        picture = _display_image(self.path)
        stem = _safe(Path(self.path).stem)
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{score:.4f}</td></tr>"
            for name, score in _top_classes(self.scores, labels, top)
        )
        panels, written = [], []
        for spec, heatmap in self.maps.items():
            name = f"{stem}__{_safe(spec)}.png"
            heat = viz.overlay(picture, heatmap)
            heat.save(folder / "overlays" / name)
            written.append(folder / "overlays" / name)
            caption = spec if method in ATTENTION_METHODS else f"{method} at {spec}"
            panels.append(_figure_html(heat, caption, f"{method} {spec}"))
            if spec in self.acts:
                features = viz.feature_grid(self.acts[spec], count=grid, order="top")
                features.save(folder / "grids" / name)
                panels.append(_figure_html(features, f"top {grid} channels of {spec}", spec))
        section = (
            f"<h2>{html.escape(Path(self.path).name)}</h2>"
            + (
                ""
                if method in ATTENTION_METHODS
                else f"<p>explained: {html.escape(_class_name(self.target, labels))}</p>"
            )
            + f"<table><tr><th>class</th><th>score</th></tr>{rows}</table>"
            f'<div class="panels">{"".join(panels)}</div>'
        )
        return section, written


def _page(title: str, count: int, failed: list[tuple[str, str]], body: str) -> str:
    skipped = "".join(f"<li>{html.escape(p)}: {html.escape(r)}</li>" for p, r in failed)
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"/>'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{count} images"
        + (f"; skipped {len(failed)}:</p><ul>{skipped}</ul>" if failed else "</p>")
        + body
        + "</body></html>"
    )


def write_report(
    model: Any,
    inputs: Sequence[str | os.PathLike[str]],
    layers: Sequence[str],
    out: str | os.PathLike[str],
    *,
    method: str = "gradcam",
    target: Any = None,
    labels: Sequence[str] | None = None,
    top: int = 5,
    grid: int = 16,
    batch_size: int = 32,
    options: InputOptions | None = None,
) -> Report:
    """Explain image files at ``layers`` and write the overlays and ``index.html`` to ``out``.

    Wide because it is ``layertap explain`` as a function: each option is one flag, and
    how the images are read (``preprocess``, ``size``, ``resize``, ``workers``) is the
    run's :class:`~layertap.io.inputs.InputOptions` (default: ``InputOptions()``).

    Example:
        >>> import keras, tempfile
        >>> m = keras.Sequential([keras.Input((8, 8, 3)),
        ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
        >>> d = Path(tempfile.mkdtemp()); Image.new("RGB", (20, 12), "red").save(d / "a.png")
        >>> r = write_report(m, [d / "a.png"], ["conv"], d / "report", labels=["cat", "dog"])
        >>> r.index.name, [p.name for p in r.overlays], r.failed
        ('index.html', ['a__conv.png'], [])
    """
    if method not in METHODS:
        raise BadSpecError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if not layers and method not in ATTENTION_METHODS:
        raise BadSpecError("the report needs at least one layer (--layer SPEC)")
    folder = Path(out)
    options = options or InputOptions()
    probe = Extractor(model, {_OUTPUT: -1}, preprocess=options.preprocess, size=options.size,
                      resize=options.resize)  # fmt: skip
    if probe.image_spec is None:
        raise BadInputError("the report explains image files; this model takes no images")
    good, images, failed = _decode(probe.image_spec, [os.fspath(p) for p in inputs], options)
    if images is None:
        shown = "; ".join(f"{p}: {r}" for p, r in failed[:3])
        raise BadInputError(f"none of the {len(failed)} inputs could be decoded ({shown})")
    if method in ATTENTION_METHODS:
        per_layer, targets = _attention_maps(model, images, layers, batch_size), None
        acts: dict[str, np.ndarray] = {}
        outputs = probe.predict(images, batch_size=batch_size)[_OUTPUT].reshape(len(good), -1)
        title = f"layertap explain: {method} over {', '.join(layers) or 'every attention layer'}"
    else:
        per_layer, acts, g = _maps_per_layer(model, images, layers, method, target, batch_size)
        outputs = g.activations[_OUTPUT].reshape(len(good), -1)
        targets = g.targets
        title = f"layertap explain: {method} at {', '.join(layers)}"
    for sub in ("overlays", "grids") if acts else ("overlays",):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sections = []
    for i, path in enumerate(good):
        one = _Image(
            path,
            {spec: m[i] for spec, m in per_layer.items()},
            {spec: a[i] for spec, a in acts.items()},
            outputs[i],
            None if targets is None else int(targets[i]),
        )
        section, pictures = one.write(folder, method, labels, top, grid)
        sections.append(section)
        written.extend(pictures)
    if acts:
        stats = viz.activation_stats({spec: viz.layer_stats(a) for spec, a in acts.items()})
        stats.save(folder / "activation_stats.png")
        sections.append(
            "<h2>Activation statistics</h2>"
            + _figure_html(stats, "per layer, over all images", "activation statistics")
        )
    index = folder / "index.html"
    index.write_text(_page(title, len(good), failed, "".join(sections)), encoding="utf-8")
    return Report(index, written, good, failed)


#: Token attribution methods the text report takes.
TEXT_METHODS = ("integrated_gradients", "gradxact", "saliency")


def _real_tokens(info: dict[str, Any], values: np.ndarray) -> list[list[int]]:
    """Per row, the positions of real tokens (padding left out)."""
    mask = info.get("mask")
    if mask is not None:
        return [np.flatnonzero(np.asarray(row)).tolist() for row in mask]
    return [list(range(values.shape[1])) for _ in range(len(values))]


def _first_token_attention(
    model: Any, texts: list[str], batch: int
) -> tuple[list[str], np.ndarray] | None:
    """``(layer paths, (n, layers, tokens))``: the first token's attention to each token,
    averaged over heads, at every attention layer; ``None`` for a model without one."""
    from layertap.explainer.methods import ALL_SCORES

    try:
        ex = Extractor(model, [ALL_SCORES])
    except LayerNotFoundError:  # no attention layer
        return None
    paths = [place.path for place in ex.places.values()]
    rows = []
    for start in range(0, len(texts), batch):
        probs = ex(texts[start : start + batch])
        per_layer = []
        for key in ex.places:
            a = probs[key]
            first = a[..., 0, :]  # (n, heads..., key): the first query token's row
            per_layer.append(first.reshape(len(a), -1, a.shape[-1]).mean(axis=1))
        rows.append(np.stack(per_layer, axis=1))
    return paths, np.concatenate(rows)


_TEXT_STYLE = """
.tokens{line-height:2.1em;font-family:ui-monospace,monospace;font-size:.95em;max-width:60em}
.tokens span{padding:.15em .25em;margin:0 .1em;border-radius:.2em;white-space:pre}
.scale{font-size:.8em;color:#555}
"""


def _ink(background: str) -> str:
    """``;color:#fff`` on a dark background (relative luminance below 0.35), else ``""``."""
    r, g, b = (int(background[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return ";color:#fff" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.35 else ""


def _tokens_html(tokens: Sequence[str], values: np.ndarray, real: Sequence[int]) -> str:
    scale = float(np.abs(values[list(real)]).max()) if len(real) else 0.0
    colours = viz.token_colours(values[list(real)], scale)
    spans = "".join(
        f'<span style="background:{colour}{_ink(colour)}" title="{float(values[j]):+.4g}">'
        f"{html.escape(tokens[j])}</span>"
        for j, colour in zip(real, colours, strict=True)
    )
    return (
        f'<p class="tokens">{spans}</p>'
        f'<p class="scale">colour scale: &#177;{scale:.4g} (this line\'s largest '
        "|attribution|)</p>"
    )


@dataclasses.dataclass
class _Line:
    """One line's part of the text report."""

    row_id: str
    text: str
    tokens: list[str]
    values: np.ndarray  # (tokens,) attributions
    real: list[int]  # positions of real tokens
    scores: np.ndarray  # the model's output row
    info: dict[str, Any]
    index: int

    @property
    def target(self) -> int | None:
        targets = self.info.get("targets")
        return None if targets is None else int(targets[self.index])

    def section(
        self,
        labels: Sequence[str] | None,
        top: int,
        attention: tuple[list[str], np.ndarray] | None,
    ) -> str:
        classes = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{score:.4f}</td></tr>"
            for name, score in _top_classes(self.scores, labels, top)
        )
        parts = [
            f"<h2>{html.escape(self.row_id)}</h2>",
            f"<p>explained: {html.escape(_class_name(self.target, labels))}</p>",
            f"<table><tr><th>class</th><th>score</th></tr>{classes}</table>",
            _tokens_html(self.tokens, self.values, self.real),
        ]
        if attention is not None:
            paths, first = attention
            picture = viz.attention_rows(
                first[self.index][:, self.real],
                [self.tokens[j] for j in self.real],
                [str(k) for k in range(len(paths))],
            )
            caption = (
                "the first token's attention (mean over heads), one row per attention "
                "layer: " + ", ".join(f"{k}: {p}" for k, p in enumerate(paths))
            )
            parts.append(_figure_html(picture, caption, "attention"))
        return "".join(parts)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.row_id,
            "text": self.text,
            "target": self.target,
            "tokens": [self.tokens[j] for j in self.real],
            "attributions": [float(self.values[j]) for j in self.real],
        }


def write_text_report(
    model: Any,
    inputs: Sequence[str | os.PathLike[str]],
    layer: str,
    out: str | os.PathLike[str],
    *,
    method: str = "integrated_gradients",
    target: Any = None,
    labels: Sequence[str] | None = None,
    top: int = 5,
    batch_size: int = 32,
    steps: int = 32,
    text_column: str | None = None,
) -> Report:
    """Explain each line of text files at an embedding ``layer``; write ``index.html``.

    Wide because it is ``layertap explain`` on texts as a function: each option is one flag.

    ``model`` is a :class:`~layertap.Preset` with a text preprocessor (a keras-hub task
    preset, say). Each line's tokens are coloured by their attribution (signed, on a
    diverging palette, each line scaled by its own largest magnitude, with a legend),
    with the top classes (names from ``labels``) and, for a transformer, the first
    token's head-averaged attention at every attention layer as a small heatmap. The
    page is self-contained (pictures inlined). ``attributions.json`` beside it holds
    each line's tokens and values. Empty lines are skipped and listed.

    Example:
        >>> r = write_text_report(preset, ["lines.txt"], "token_embedding",
        ...                       "report")  # doctest: +SKIP
        >>> r.index.name  # doctest: +SKIP
        'index.html'
    """
    from layertap.io.text import TextSource, expand_text_inputs

    if method not in TEXT_METHODS:
        raise BadSpecError(
            f"the text report explains tokens with {', '.join(TEXT_METHODS)}, not {method!r}"
        )
    files = expand_text_inputs(inputs)
    rows = TextSource(files, lambda texts: {}, text_column=text_column).rows  # read, not encoded
    good = [(row_id, text) for row_id, text, _ in rows if text is not None]
    failed = [(row_id, reason) for row_id, text, reason in rows if text is None]
    if not good:
        raise BadInputError(f"none of the {len(failed)} lines holds text")
    texts = [text for _, text in good]
    options: dict[str, Any] = {"steps": steps} if method == "integrated_gradients" else {}
    attributions = explain(
        model, texts, layer, method=method, target=target, batch_size=batch_size, **options
    )
    values = np.asarray(attributions)
    info = attributions.info
    tokens: list[list[str]] = info["tokens"]
    real = _real_tokens(info, values)
    outputs = Extractor(model, {_OUTPUT: -1}).predict(texts, batch_size=batch_size)[_OUTPUT]
    outputs = outputs.reshape(len(texts), -1)
    attention = _first_token_attention(model, texts, batch_size)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    legend = viz.colour_legend(1.0, "attribution / the line's largest |attribution|")
    sections = [_figure_html(legend, "blue: against the class; red: for it", "colour legend")]
    records = []
    for i, (row_id, text) in enumerate(good):
        line = _Line(row_id, text, tokens[i], values[i], real[i], outputs[i], info, i)
        sections.append(line.section(labels, top, attention))
        records.append(line.record())
    (folder / "attributions.json").write_text(
        json.dumps({"method": method, "layer": layer, "rows": records}, indent=1),
        encoding="utf-8",
    )
    title = f"layertap explain: {method} at {layer}"
    page = _page(title, len(good), failed, "".join(sections)).replace(
        "</style>", _TEXT_STYLE + "</style>", 1
    )
    page = page.replace(f"<p>{len(good)} images", f"<p>{len(good)} lines", 1)
    index = folder / "index.html"
    index.write_text(page, encoding="utf-8")
    return Report(index, [], [row_id for row_id, _ in good], failed)
