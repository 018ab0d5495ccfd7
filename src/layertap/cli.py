"""Stage 8, cli: ``layertap layers`` and ``layertap extract``, a thin layer over the API.

Keras (and through it TensorFlow) is imported only when a command runs, so
``--help`` stays fast. Every :class:`~layertap.LayertapError` and every usage
error ends the run with one line, ``layertap: error: ...``, on stderr and exit
status 2.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from layertap._images import ImageBatches
    from layertap._write import FeatureWriter

__all__ = ["cli", "layer_specs", "main", "parse_layer_options"]

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2

_INT_SPEC = re.compile(r"^-?\d+$")


def _error(message: str) -> None:
    click.echo(f"layertap: error: {' '.join(message.split())}", err=True)


class _Group(click.Group):
    """A group whose errors are one line on stderr, never a traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        from layertap._errors import LayertapError

        try:
            rv = super().main(
                args, prog_name or "layertap", complete_var, standalone_mode=False, **extra
            )
        except click.UsageError as exc:
            _error(exc.format_message())
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            _error(exc.format_message())
            sys.exit(EXIT_USAGE)
        except LayertapError as exc:
            _error(str(exc))
            sys.exit(EXIT_USAGE)
        except click.Abort:
            _error("interrupted")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


def parse_layer_options(options: Sequence[str]) -> list[tuple[str | None, str | int]]:
    """``--layer`` values -> ``(alias or None, spec)`` pairs.

    ``ALIAS=SPEC`` names the output; an all-digit SPEC (``3``, ``-1``) is an index
    into ``model.layers``.

    Example:
        >>> parse_layer_options(["emb=embedding", "-1"])
        [('emb', 'embedding'), (None, -1)]
    """
    from layertap._errors import BadSpecError

    parsed: list[tuple[str | None, str | int]] = []
    for text in options:
        alias, sep, spec = text.partition("=")
        if not sep:
            alias, spec = "", text
        elif not alias or not spec:
            raise BadSpecError(
                f"--layer {text!r} is malformed: expected SPEC or ALIAS=SPEC, both non-empty"
            )
        value: str | int = int(spec) if _INT_SPEC.match(spec) else spec
        parsed.append((alias or None, value))
    return parsed


def layer_specs(
    parsed: Sequence[tuple[str | None, str | int]], model: Any
) -> list[str | int] | dict[str, str | int]:
    """What :class:`~layertap.Extractor` takes for parsed ``--layer`` values.

    Without aliases, a list (outputs keyed by canonical path). With aliases, a
    dict; a spec given without an alias is keyed by the canonical path of each
    place it resolves to, as it would be in a list.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> layer_specs([("out", "d"), (None, -1)], m)
        {'out': 'd', 'd': 'd'}
    """
    from layertap._errors import BadSpecError
    from layertap._graph import walk
    from layertap._resolve import resolve_one

    if all(alias is None for alias, _ in parsed):
        return [spec for _, spec in parsed]
    places = walk(model)
    layers: dict[str, str | int] = {}
    for alias, spec in parsed:
        keys = [alias] if alias is not None else [p.path for p in resolve_one(spec, model, places)]
        for key in keys:
            if key in layers:
                raise BadSpecError(
                    f"--layer output name {key!r} is given twice; use distinct aliases"
                )
            layers[key] = spec if alias is not None else key
    return layers


def _quiet_backend_logs() -> None:
    # TensorFlow's C++ logging reads this once, when TensorFlow is first imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="layertap", prog_name="layertap")
def cli() -> None:
    """Features from any layer of a pre-trained Keras model, nested sub-models included.

    \b
    Examples:
      layertap layers model.keras
      layertap extract model.keras photos/ --layer emb=embedding --out feats.h5
    """


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON record per layer instead of a table."
)
@click.option(
    "--max-depth",
    type=click.IntRange(min=0),
    default=None,
    help="Show places at most this deep (0 = top-level layers only).",
)
def layers(model: Path, as_json: bool, max_depth: int | None) -> None:
    """List every layer of MODEL that can be tapped, nested sub-models expanded.

    Every path shown is a valid --layer SPEC for `layertap extract`.

    \b
    Examples:
      layertap layers model.keras
      layertap layers model.keras --max-depth 0
      layertap layers model.keras --json | jq -r '.[].path'
    """
    import layertap

    m = layertap.load_model(model)
    if not as_json:
        click.echo(layertap.summary(m, max_depth=max_depth))
        return
    records = [
        {
            "path": p.path,
            "index": p.index,
            "class_name": p.class_name,
            "output_shape": list(p.output_shape),
            "dtype": p.dtype,
            "params": p.params,
        }
        for p in layertap.list_layers(m, max_depth=max_depth)
    ]
    click.echo(json.dumps(records, indent=1))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)
@click.option(
    "--layer",
    "-l",
    "layer_options",
    metavar="[ALIAS=]SPEC",
    multiple=True,
    required=True,
    help="A layer to tap (repeatable): an index (3, -1), a name, a path "
    "(backbone/block_1_conv), a call (encoder@1/conv) or a glob (backbone/*_relu). "
    "ALIAS names the output dataset.",
)
@click.option(
    "--out",
    "-o",
    metavar="FILE",
    required=True,
    type=click.Path(path_type=Path),
    help="Output file: .h5 / .hdf5 (HDF5) or .npz (NumPy).",
)
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--preprocess",
    type=click.Choice(["rescale", "none"]),
    default="rescale",
    show_default=True,
    help="rescale: pixels / 255 (in [0, 1]); none: pixels in [0, 255].",
)
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary line.")
def extract(
    model: Path,
    inputs: tuple[str, ...],
    layer_options: tuple[str, ...],
    out: Path,
    batch_size: int,
    preprocess: str,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Run images through MODEL once and write the chosen layers' outputs to FILE.

    INPUT is an image file, a folder (read recursively, in sorted order) or a
    glob pattern (quote it). Images are turned upright by their EXIF tag,
    converted to RGB or grayscale and resized to the model's input size.

    Rows of every dataset follow the order of the `paths` dataset. Files that
    cannot be decoded are skipped, named on stderr and listed in the output.

    \b
    Exit status:
      0  every input was written
      1  some inputs could not be read (the rest were written)
      2  a usage error: bad option, layer spec, model or input path

    \b
    Examples:
      layertap extract model.keras photos/ --layer gap --out feats.h5
      layertap extract model.keras 'shots/**/*.jpg' -l early=backbone/block_1_conv \\
          -l emb=embedding -l -1 --out feats.npz --batch-size 64
    """
    _quiet_backend_logs()
    import layertap
    from layertap._images import ImageBatches, ImageSpec, expand_inputs
    from layertap._write import check_output, open_writer

    # Check what is cheap to check before the slow model load.
    parsed = parse_layer_options(layer_options)
    check_output(out, overwrite=overwrite)
    paths = expand_inputs(inputs)
    m = layertap.load_model(model)
    extractor = layertap.Extractor(m, layer_specs(parsed, m))
    spec = ImageSpec.from_model(m, preset=preprocess)
    batches = ImageBatches(paths, spec, batch_size=batch_size)
    meta = {
        "model": str(model),
        "layers": list(layer_options),
        "preprocessing": spec.describe(),
        "layertap_version": layertap.__version__,
    }
    writer = open_writer(out, extractor.outputs, meta, overwrite=overwrite)
    try:
        _run(extractor, batches, writer, quiet=quiet)
    except BaseException:
        writer.abort()
        raise
    for path, reason in batches.failed:
        click.echo(f"layertap: skipped {path}: {reason}", err=True)
    if not quiet:
        shapes = ", ".join(
            f"{name} {_shape_text(writer.shapes.get(name))}" for name in writer.names.values()
        )
        failed = f", {len(batches.failed)} failed" if batches.failed else ""
        click.echo(f"wrote {writer.rows} rows{failed} to {out}: {shapes}")
    if batches.failed:
        raise click.exceptions.Exit(EXIT_SOME_FAILED)


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "(" + ", ".join(str(d) for d in shape) + ")"


def _run(extractor: Any, batches: ImageBatches, writer: FeatureWriter, *, quiet: bool) -> None:
    from tqdm import tqdm

    show = not quiet and sys.stderr.isatty()
    with tqdm(
        total=len(batches), unit="img", disable=not show, file=sys.stderr, leave=False
    ) as bar:
        for paths, array in batches:
            writer.write(paths, extractor(array))
            bar.update(batches.done - bar.n)
        bar.update(batches.done - bar.n)
    writer.close(batches.failed)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``layertap`` console script: run the CLI on ``argv`` and exit.

    Example (a shell)::

        layertap extract model.keras photos/ --layer gap --out feats.h5
    """
    _quiet_backend_logs()
    cli.main(args=list(argv) if argv is not None else None, prog_name="layertap")
