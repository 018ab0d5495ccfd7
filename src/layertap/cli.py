"""Stage 8, cli: ``layertap layers`` and ``layertap extract``, a thin layer over the API.

Keras (and through it TensorFlow) is imported only when a command runs, so
``--help`` stays fast. Every :class:`~layertap.LayertapError` and every usage
error ends the run with one line, ``layertap: error: ...``, on stderr and exit
status 2.

Quiet by default: unless ``--verbose``, what the backends log (TensorFlow's C++
start-up lines, Ray's INFO lines) is kept off stderr, so what a command prints is
its own (:func:`_native_logs_hidden`, :data:`QUIET_ENV`). Importing layertap changes
nothing of this: only running the command does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

__all__ = ["cli", "layer_specs", "main", "parse_layer_options"]

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


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
    from layertap.engines.run import LayerOptions

    return list(LayerOptions.parse(options).pairs)


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
    from layertap.engines.run import LayerOptions

    return LayerOptions(tuple(parsed)).specs(model)


#: A log line that native code (TensorFlow, XLA, gRPC, Ray's core) writes to stderr:
#: absl / glog lines (``I0000 00:00:1700000000.123456  3176 port.cc:153] ...``), the
#: older TensorFlow format, Ray's C++ format, absl's banner before its logging starts
#: and TensorFlow's CPU-feature note. Fatal lines (``F...``) are not among them.
NATIVE_LOG_LINE = re.compile(
    r"[IWE]\d{4} [\d:.]+ +\d+ [\w.\-/]+:\d+\] "
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] [\w.\-/]+:\d+\] "
    r"|\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWE] \d+ \d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: .*rebuild TensorFlow with"
)
#: The environment without ``--verbose``, for each variable the user has not set.
QUIET_ENV = {
    # TensorFlow's (and XLA's) C++ logs: errors only. Read when TensorFlow is imported.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "GRPC_VERBOSITY": "ERROR",
    # Ray drops these lines among those its workers print (read when Ray is imported).
    "RAY_DEDUP_LOGS_SKIP_REGEX": f"^(?:{NATIVE_LOG_LINE.pattern})",
}


def _quiet_environment() -> None:
    """Set :data:`QUIET_ENV`'s variables the user has not set (before any backend loads)."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)


def _stderr_is_fd_2() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # e.g. click's CliRunner
        return False


def _pass_on(source: int, target: int) -> None:
    """Copy ``source`` to ``target`` line by line, leaving out :data:`NATIVE_LOG_LINE`."""
    pending = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(source, 1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = [line + b"\n" for line in lines if not _is_native_log(line)]
            _write_all(target, b"".join(kept))
        if not _is_native_log(pending):
            _write_all(target, pending)
    os.close(source)
    os.close(target)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _is_native_log(line: bytes) -> bool:
    return NATIVE_LOG_LINE.match(line.decode("utf-8", "replace")) is not None


@contextlib.contextmanager
def _native_logs_hidden() -> Iterator[None]:
    """While the body runs, leave the native log lines out of what reaches stderr.

    TensorFlow writes some lines when it is loaded, before ``TF_CPP_MIN_LOG_LEVEL``
    applies (the oneDNN notice, CUDA plug-in registration), and Ray's core writes
    some as it runs; no option turns them off. So file descriptor 2, where C and C++
    code write, becomes a pipe whose lines are passed on as they come, but for
    :data:`NATIVE_LOG_LINE`. Python's ``sys.stderr`` (the progress bar, layertap's
    messages, warnings, tracebacks) writes to the real stderr directly, so a progress
    bar still sees a terminal. Nothing is done unless ``sys.stderr`` is descriptor 2.
    """
    if not _stderr_is_fd_2():
        yield
        return
    python_stderr = sys.stderr
    python_stderr.flush()
    terminal = os.dup(2)
    source, sink = os.pipe()
    os.dup2(sink, 2)
    os.close(sink)
    pump = threading.Thread(
        target=_pass_on, args=(source, os.dup(terminal)), name="layertap-stderr", daemon=True
    )
    pump.start()
    # Left open afterwards: a handler or progress bar made meanwhile may still hold it.
    sys.stderr = open(
        os.dup(terminal),
        "w",
        buffering=1,
        encoding=getattr(python_stderr, "encoding", None),
        errors=getattr(python_stderr, "errors", "backslashreplace"),
    )
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        sys.stderr = python_stderr
        os.dup2(terminal, 2)  # closes the pipe's last writer here: the pump drains it
        os.close(terminal)
        pump.join(timeout=5)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="layertap", prog_name="layertap")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Also show the backends' own log lines (TensorFlow's C++ lines, Ray's INFO lines).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Features from any layer of a pre-trained Keras model, nested sub-models included.

    \b
    Examples:
      layertap layers model.keras
      layertap extract model.keras photos/ --layer emb=embedding --out feats.h5
      layertap --verbose extract model.keras photos/ -l gap -o feats.h5

    Quiet by default: the backends' own log lines are left out of stderr
    (TensorFlow's and XLA's C++ lines, from Ray's workers too; the messages of Ray's
    start; Ray Data's INFO lines), and TF_CPP_MIN_LOG_LEVEL=2, GRPC_VERBOSITY=ERROR
    and RAY_DEDUP_LOGS_SKIP_REGEX are set where they are unset. With --verbose nothing
    is hidden or set. The progress bars, layertap's messages and errors, Python
    warnings and tracebacks always show.
    """
    ctx.meta["layertap.verbose"] = verbose
    if not verbose:
        _quiet_environment()
        ctx.with_resource(_native_logs_hidden())


def _model_options(f: Any) -> Any:
    f = click.option(
        "--unsafe",
        is_flag=True,
        help="Load with safe_mode=False: let the model file run stored code (Lambda "
        "layers). Only for files you trust.",
    )(f)
    f = click.option(
        "--custom-objects",
        "custom_objects",
        metavar="SPEC",
        multiple=True,
        help="Custom layers the model uses (repeatable): a PATH.py file or module:attr.",
    )(f)
    return f


def _image_options(f: Any) -> Any:
    """--preprocess, --size and --resize: how image files become model inputs."""
    f = click.option(
        "--resize",
        type=click.Choice(["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]),
        default="bilinear",
        show_default=True,
        help="Resize filter.",
    )(f)
    f = click.option(
        "--size", metavar="HxW", default=None, help="Image size, for a model that takes any size."
    )(f)
    f = click.option(
        "--preprocess",
        metavar="NAME",
        default=None,
        help="none, rescale (x/255), tf ([-1, 1]), caffe (BGR, mean subtracted), torch "
        "(ImageNet mean/std), or module:function. Default: a keras-hub preset's image "
        "converter, else rescale for images; none for .npy.",
    )(f)
    return f


def _load(model: Path, custom_objects: Sequence[str], unsafe: bool) -> Any:
    from layertap.engines.run import ModelSource

    return ModelSource(model, tuple(custom_objects), not unsafe).load()


def _text_preset(model: Path) -> Any:
    """The preset at ``model`` when it is a keras-hub preset with a text preprocessor."""
    from layertap.graph.preset import is_preset, load_preset

    if not is_preset(str(model)):
        return None
    preset = load_preset(str(model))
    return preset if preset.kind == "text" else None


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)(?:[xX,](\d+))?", text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not HxW or N", param_hint="--size")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON record per layer instead of a table."
)
@click.option(
    "--max-depth",
    type=click.IntRange(min=0),
    default=None,
    help="Show places at most this deep (0 = top-level layers only).",
)
@_model_options
def layers(
    model: Path,
    as_json: bool,
    max_depth: int | None,
    custom_objects: tuple[str, ...],
    unsafe: bool,
) -> None:
    """List every layer of MODEL that can be tapped, nested sub-models expanded.

    Every path shown is a valid --layer SPEC for `layertap extract`.

    \b
    Examples:
      layertap layers model.keras
      layertap layers model.keras --max-depth 0
      layertap layers model.keras --json | jq -r '.[].path'
    """
    import layertap

    m = _load(model, custom_objects, unsafe)
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
            "trace_error": p.trace_error,
        }
        for p in layertap.list_layers(m, max_depth=max_depth)
    ]
    click.echo(json.dumps(records, indent=1))


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
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
    help="Output file: .h5 / .hdf5 (HDF5), .npz (NumPy) or .parquet / .pq (Parquet).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["hdf5", "npz", "parquet"]),
    default=None,
    help="Output format, when FILE's suffix does not say.",
)
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
    help="How features are stored: float16 halves the file (values rounded to float16).",
)  # fmt: skip
@click.option(
    "--pool",
    "pool_options",
    metavar="[KEY=]NAME",
    multiple=True,
    help="Reduce taps (repeatable): keep, flatten, avg, max. NAME alone applies to "
    "every tap, KEY=NAME to one (KEY: an alias or canonical path). Default: keep.",
)
@_image_options
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Decoding threads.")
@click.option(
    "--text-column",
    metavar="NAME",
    default=None,
    help="Text models: the column (.csv, Parquet) or field (.jsonl) holding the text "
    "(default: text).",
)
@click.option(
    "--sequence-length",
    type=click.IntRange(min=1),
    default=None,
    help="Text models: tokens per text (default: the preprocessor's own).",
)
@_model_options
@click.option(
    "--overwrite", is_flag=True, help="Replace FILE if it was written by a different run."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary line.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: run on Ray Data (pip install 'layertap[ray]'); --out is then a directory.",
)
@click.option("--address", default=None, help="Ray cluster address (default: start one here).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Ray actors.")
@click.option("--num-cpus", type=click.FloatRange(min=0), default=1.0, help="CPUs per actor.")
@click.option("--num-gpus", type=click.FloatRange(min=0), default=0.0, help="GPUs per actor.")
def extract(**flags: Any) -> None:
    """Run inputs through MODEL once and write the chosen layers' outputs to FILE.

    INPUT is an image file, a folder (read recursively, in sorted order), a glob
    pattern (quote it), a .txt or .csv list of paths, or a .npy array (one row per
    input). Images are turned upright by their EXIF tag, converted to RGB or
    grayscale and resized to the model's input size.

    For a keras-hub preset with a text preprocessor (MODEL is its directory), INPUT is
    text: a .txt file (one example per line), a .jsonl, .csv or Parquet file (the
    --text-column), or a folder of them; empty lines and undecodable rows are skipped
    and named, and each row keeps its FILE:LINE (or FILE#ROW) id.

    Rows of every dataset follow the order of the `paths` dataset. Inputs that
    cannot be decoded are skipped, named on stderr and listed in the output.

    An interrupted run (Ctrl-C, a kill) leaves FILE readable; the same command
    run again resumes where it stopped. A FILE from a different run (model, layers,
    pooling, preprocessing or inputs) is refused unless --overwrite.

    \b
    Exit status:
      0  every input was written
      1  some inputs could not be read (the rest were written)
      2  a usage error: bad option, layer spec, model or input path
      130  interrupted (run the same command again to resume)

    \b
    Examples:
      layertap extract model.keras photos/ --layer gap --out feats.h5
      layertap extract model.keras 'shots/**/*.jpg' -l early=backbone/block_1_conv \\
          -l emb=embedding -l -1 --pool avg --pool emb=keep --out feats.parquet
      layertap extract model.keras files.txt -l gap --preprocess torch -o feats.npz
      layertap extract model.keras photos/ -l gap --engine ray --out feats_dir/
    """
    import logging

    from layertap.engines import get_engine
    from layertap.io.data import expand_inputs

    # Everything that is cheap to check is checked before the slow model load.
    run = _run_from_flags(flags)
    expand_inputs(run.inputs)
    # The CLI names skipped inputs itself; keep the library's log records off stderr.
    logging.getLogger("layertap").addHandler(logging.NullHandler())
    named: set[str] = set()

    def skipped(path: str, reason: str) -> None:
        named.add(path)
        click.echo(f"layertap: skipped {path}: {reason}", err=True)

    try:
        result = get_engine(run.engine).extract(run, skipped)
    except KeyboardInterrupt:
        _error(f"interrupted; run the same command again to resume {run.output.path}")
        sys.exit(130)
    for path, reason in result.failed:  # failures recorded by an earlier, resumed run
        if path not in named:
            click.echo(f"layertap: skipped {path}: {reason}", err=True)
    if not run.quiet:
        click.echo(_summary(result, flags["out"], run.engine))
    if result.failed:
        raise click.exceptions.Exit(EXIT_SOME_FAILED)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)
@click.option(
    "--layer",
    "-l",
    "layer_specs_",
    metavar="SPEC",
    multiple=True,
    help="A spatial layer to explain at (repeatable): a name, a path "
    "(backbone/block_13_expand_relu) or a call (encoder@1/conv). For rollout: the "
    "attention probabilities to roll out, in block order (default: every attention "
    "layer's, **/scores). For texts: one (batch, tokens, dim) layer, an embedding.",
)
@click.option(
    "--method",
    "-m",
    type=click.Choice(
        [
            "gradcam",
            "gradcam++",
            "layercam",
            "gradxact",
            "scorecam",
            "rollout",
            "integrated_gradients",
            "saliency",
        ]
    ),  # fmt: skip
    default=None,
    help="Images: gradcam (default), gradcam++, layercam, gradxact, scorecam, rollout. "
    "Texts: integrated_gradients (default), gradxact, saliency.",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=32, show_default=True,
    help="Integrated gradients' steps (texts).",
)  # fmt: skip
@click.option(
    "--text-column", metavar="NAME", default=None,
    help="The text column of .jsonl/.csv/.parquet inputs (texts).",
)  # fmt: skip
@click.option(
    "--out",
    "-o",
    metavar="DIR",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The report folder: index.html, overlays/, grids/, activation_stats.png.",
)
@click.option(
    "--labels",
    metavar="FILE",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Class names: a .txt (one per line) or a .json list or index dict.",
)
@click.option(
    "--target",
    type=int,
    default=None,
    help="The class to explain in every image (default: each image's top class).",
)
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="Top classes listed per image.")  # fmt: skip
@click.option("--grid", type=click.IntRange(min=1), default=16, show_default=True,
              help="Feature maps per layer in the grids.")  # fmt: skip
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32, show_default=True)
@_image_options
@_model_options
def explain(**flags: Any) -> None:
    """Explain what MODEL looks at in each INPUT, and write a report to DIR.

    For an image model, INPUT is an image file, a folder (read recursively), a glob
    (quote it) or a .txt or .csv list of paths. For each image and each --layer, the
    report holds the map (Grad-CAM by default; the score is the class logit, before the
    softmax) over the image, the layer's feature maps, and the top classes; index.html
    shows it all and needs no network. Images that cannot be decoded are skipped and named (exit 1).
    --method rollout draws a vision transformer's attention rollout instead (the class
    token's attention, rolled out over the blocks; --layer optional).

    For a keras-hub preset with a text preprocessor (a BertTextClassifier preset, say),
    INPUT is a text file (.txt: one text per line; .jsonl, .csv, .parquet) or a folder
    of them, and the report colours each line's tokens by their attribution at one
    --layer (an embedding), with the top classes and, for a transformer, the first
    token's attention at every attention layer.
    """
    from layertap._errors import BadSpecError
    from layertap.explainer.report import read_labels, write_report, write_text_report
    from layertap.io.expand import expand_inputs
    from layertap.io.inputs import InputOptions

    labels = read_labels(flags["labels"]) if flags["labels"] is not None else None
    preset = _text_preset(flags["model"])
    if preset is not None:
        if len(flags["layer_specs_"]) != 1:
            raise BadSpecError(
                "explaining texts takes one --layer, a (batch, tokens, dim) layer such as "
                f"the token embedding; got {len(flags['layer_specs_'])}"
            )
        method = flags["method"] or "integrated_gradients"
        report = write_text_report(
            preset,
            list(flags["inputs"]),
            flags["layer_specs_"][0],
            flags["out"],
            method=method,
            target=flags["target"],
            labels=labels,
            top=flags["top"],
            batch_size=flags["batch_size"],
            steps=flags["steps"],
            text_column=flags["text_column"],
        )
        for path, reason in report.failed:
            click.echo(f"layertap: skipped {path}: {reason}", err=True)
        click.echo(f"explained {len(report.images)} lines ({method}): {report.index}")
        if report.failed:
            sys.exit(EXIT_SOME_FAILED)
        return
    flags["method"] = flags["method"] or "gradcam"
    model = _load(flags["model"], flags["custom_objects"], flags["unsafe"])
    report = write_report(
        model,
        [str(p) for p in expand_inputs(flags["inputs"])],
        list(flags["layer_specs_"]),
        flags["out"],
        method=flags["method"],
        target=flags["target"],
        labels=labels,
        top=flags["top"],
        grid=flags["grid"],
        batch_size=flags["batch_size"],
        options=InputOptions(flags["preprocess"], _parse_size(flags["size"]), flags["resize"]),
    )
    for path, reason in report.failed:
        click.echo(f"layertap: skipped {path}: {reason}", err=True)
    where = (
        f"at {len(flags['layer_specs_'])} layers"
        if flags["layer_specs_"]
        else "over every attention layer"
    )
    click.echo(f"explained {len(report.images)} images {where} ({flags['method']}): {report.index}")
    if report.failed:
        sys.exit(EXIT_SOME_FAILED)


def _show(result: Any, plot: Path | None, as_json: bool) -> None:
    """A probe's or similarity's result: its plot saved to ``plot``, then its table
    (or its JSON record) on stdout."""
    if plot is not None:
        result.plot().save(plot)
    click.echo(json.dumps(result.to_dict(), indent=1) if as_json else result.table())


@cli.command("probe")
@click.argument("features", type=click.Path(path_type=Path))
@click.option(
    "--labels",
    metavar="FILE",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Labels matched to the rows by path: a .csv (path,label), a .json {path: label} "
    "or a .npy array (one per row, in row order).",
)
@click.option(
    "--layer", "-l", "keys", metavar="KEY", multiple=True,
    help="A key to probe (repeatable; default: every key).",
)  # fmt: skip
@click.option("--cv", type=click.IntRange(min=2), default=5, show_default=True, help="Folds.")
@click.option("--seed", type=int, default=0, show_default=True, help="The folds' random state.")
@click.option(
    "--max-dim", type=click.IntRange(min=1), default=4096, show_default=True,
    help="Wider layers are randomly projected to this many dimensions first.",
)  # fmt: skip
@click.option(
    "--plot", metavar="PNG", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Also draw the score per layer (error bars: std over folds) to PNG.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="A JSON record instead of the table.")
def probe_command(**flags: Any) -> None:
    """Which layer holds the labels: a cross-validated linear probe on each key of FEATURES.

    Integer or string labels: StandardScaler + LogisticRegression(max_iter=1000),
    stratified shuffled folds, accuracy. Float labels: StandardScaler + Ridge, R².
    The table marks the best layer. FEATURES is what `layertap extract` wrote: a .h5,
    .npz or .parquet file, or a Ray output folder.

    \b
    Examples:
      layertap probe feats.h5 --labels labels.csv
      layertap probe feats.parquet --labels labels.json -l early -l emb --cv 10 --plot probe.png
    """
    import layertap

    result = layertap.probe(
        flags["features"],
        flags["labels"],
        layers=list(flags["keys"]) or None,
        cv=flags["cv"],
        seed=flags["seed"],
        max_dim=flags["max_dim"],
    )
    _show(result, flags["plot"], flags["as_json"])


@cli.command("similarity")
@click.argument("features", type=click.Path(path_type=Path))
@click.argument("other", required=False, default=None, type=click.Path(path_type=Path))
@click.option(
    "--method", type=click.Choice(["cka", "rsa"]), default="cka", show_default=True,
    help="cka: linear CKA; rsa: Spearman correlation of 1 - Pearson RDMs.",
)  # fmt: skip
@click.option("--unbiased", is_flag=True, help="CKA with the unbiased HSIC estimator.")
@click.option(
    "--batch-size", type=click.IntRange(min=2), default=None,
    help="CKA over consecutive blocks of N rows (minibatch CKA: memory bounded by N).",
)  # fmt: skip
@click.option(
    "--plot", metavar="PNG", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Also draw the matrix as a heatmap to PNG.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="A JSON record instead of the table.")
def similarity_command(**flags: Any) -> None:
    """How similar the layers of FEATURES are to each other, or to those of OTHER.

    Every key of FEATURES against every key of OTHER (default: FEATURES itself), over
    the same inputs in the same order. FEATURES and OTHER are what `layertap extract`
    wrote: .h5, .npz or .parquet files, or Ray output folders.

    \b
    Examples:
      layertap similarity feats.h5
      layertap similarity model_a.h5 model_b.h5 --unbiased --batch-size 512 --plot cka.png
      layertap similarity feats.npz --method rsa --json
    """
    import layertap

    result = layertap.similarity(
        flags["features"],
        flags["other"],
        method=flags["method"],
        unbiased=flags["unbiased"],
        batch_size=flags["batch_size"],
    )
    _show(result, flags["plot"], flags["as_json"])


@cli.command("compare")
@click.argument("model_a", metavar="A", type=click.Path(path_type=Path))
@click.argument("model_b", metavar="B", type=click.Path(path_type=Path))
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)
@click.option(
    "--layer", "-l", "layer_options", metavar="[ALIAS=]SPEC", multiple=True, required=True,
    help="A layer to compare (repeatable), as extract takes it; it must be in both models.",
)  # fmt: skip
@click.option("--batch-size", "-b", type=click.IntRange(min=2), default=32, show_default=True,
              help="Inputs per forward pass and per CKA minibatch.")  # fmt: skip
@click.option(
    "--threshold", type=click.FloatRange(min=0), default=1e-3, show_default=True,
    help="The first layer whose rel_error exceeds this is marked divergent.",
)  # fmt: skip
@click.option("--biased", is_flag=True, help="CKA with the biased HSIC (default: unbiased).")
@click.option(
    "--plot", metavar="PNG", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Also draw rel_error per layer (log scale) to PNG.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="A JSON record instead of the table.")
@_image_options
@click.option("--unsafe", is_flag=True, help="Load with safe_mode=False (trusted files only).")
def compare_command(**flags: Any) -> None:
    """Where two models part: the same layers of A and B over the same INPUTs.

    A and B are model files (.keras, .h5, a SavedModel) or keras-hub preset
    directories. INPUT is image files, folders or globs (decoded as extract decodes
    them), a .npy array, or for a text preset a .txt file (one text a line). Per layer:
    rel_error = ||A - B|| / ||A|| over all inputs, the largest |A - B|, and minibatch
    linear CKA; the first layer whose rel_error exceeds --threshold is marked.

    \b
    Examples:
      layertap compare float.keras int8.keras photos/ -l conv1 -l gap -l -1
      layertap compare before.keras after.keras x.npy -l 'block_*_add' --plot drift.png
    """
    import layertap
    from layertap.engines.run import LayerOptions

    pairs = LayerOptions.parse(flags["layer_options"]).pairs
    specs: Any = (
        [spec for _, spec in pairs]
        if all(alias is None for alias, _ in pairs)
        else {alias or str(spec): spec for alias, spec in pairs}
    )
    inputs: Any = flags["inputs"][0] if len(flags["inputs"]) == 1 else None
    if inputs is None:
        from layertap.io.data import expand_inputs

        inputs = expand_inputs(flags["inputs"])
    result = layertap.compare(
        str(flags["model_a"]),
        str(flags["model_b"]),
        Path(inputs) if isinstance(inputs, str) else inputs,
        specs,
        batch_size=flags["batch_size"],
        unbiased=not flags["biased"],
        preprocess=flags["preprocess"],
        size=_parse_size(flags["size"]),
        resize=flags["resize"],
        safe_mode=not flags["unsafe"],
    )
    threshold = flags["threshold"]
    if flags["plot"] is not None:
        result.plot(threshold).save(flags["plot"])
    if flags["as_json"]:
        click.echo(json.dumps(result.to_dict(threshold), indent=1))
    else:
        click.echo(result.table(threshold))


@cli.command("reduce")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--pca", type=click.IntRange(min=1), default=None, metavar="K",
              help="K principal components (IncrementalPCA, two passes).")  # fmt: skip
@click.option("--projection", type=click.IntRange(min=1), default=None, metavar="K",
              help="K Gaussian random projections (one pass).")  # fmt: skip
@click.option("--layer", "-l", "keys", metavar="KEY", multiple=True,
              help="A key to reduce (repeatable; default: every key wider than K).")  # fmt: skip
@click.option("--chunk", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Rows read, fitted and written at a time.")  # fmt: skip
@click.option("--using", metavar="FILE", type=click.Path(path_type=Path), default=None,
              help="Apply the components stored in FILE (a reduced file); no fitting.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="The projection's seed.")
@click.option("--overwrite", is_flag=True, help="Replace DST if another reduction wrote it.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table.")
def reduce_command(**flags: Any) -> None:
    """Write SRC to DST with its taps reduced to K values per row, streaming.

    Rows are flattened first; other keys are copied. DST (.h5, .npz, .parquet) keeps
    SRC's rows, paths, failed inputs and attributes, and stores the fitted components,
    so that --using DST reduces another file the same way.

    \b
    Examples:
      layertap reduce feats.h5 small.h5 --pca 256
      layertap reduce feats.parquet small.npz --projection 512 -l emb --chunk 1024
      layertap reduce test_feats.h5 test_small.h5 --using small.h5
    """
    import layertap

    result = layertap.reduce(
        flags["src"],
        flags["dst"],
        pca=flags["pca"],
        projection=flags["projection"],
        layers=list(flags["keys"]) or None,
        chunk=flags["chunk"],
        using=flags["using"],
        seed=flags["seed"],
        overwrite=flags["overwrite"],
        progress=False if flags["quiet"] else None,
    )
    if not flags["quiet"]:
        if result.already_complete:
            click.echo(f"{result.path} is complete already; nothing to do")
        click.echo(result.table())


def _run_from_flags(flags: dict[str, Any]) -> Any:
    """The :class:`~layertap.engines.run.Run` the ``extract`` flags describe (validated)."""
    from layertap.engines.run import LayerOptions, ModelSource, Output, RayOptions, Run
    from layertap.io.inputs import InputOptions
    from layertap.io.reduce import parse_pool_options

    f = flags
    return Run(
        ModelSource(f["model"], tuple(f["custom_objects"]), not f["unsafe"]),
        [Path(i) for i in f["inputs"]],  # files, never texts
        LayerOptions.parse(f["layer_options"]),
        input=InputOptions(
            f["preprocess"],
            _parse_size(f["size"]),
            f["resize"],
            f["workers"],
            f["text_column"],
            f["sequence_length"],
        ),
        pool=parse_pool_options(f["pool_options"]),
        batch_size=f["batch_size"],
        output=Output(
            str(f["out"]),
            f["fmt"],
            f["overwrite"],
            {"model": str(f["model"]), "layers": list(f["layer_options"])},
            f["dtype"],
        ),
        engine=f["engine"],
        ray=RayOptions(
            f["address"],
            f["concurrency"],
            f["num_cpus"],
            f["num_gpus"],
            logs=_verbose(),
        ),
        progress=False if f["quiet"] else None,
    )


def _verbose() -> bool:
    """Whether ``--verbose`` was given (``True`` outside a command: nothing is hidden)."""
    ctx = click.get_current_context(silent=True)
    return True if ctx is None else bool(ctx.meta.get("layertap.verbose", True))


def _summary(result: Any, out: Path, engine: str) -> str:
    """The closing line: rows, failures, where, and the datasets' shapes."""
    failed = f", {len(result.failed)} failed" if result.failed else ""
    if result.already_complete:
        return f"{out} is complete already ({result.rows} rows{failed}); nothing to do"
    resumed = f" (resumed after {result.resumed})" if result.resumed else ""
    if engine == "ray":
        return f"wrote {result.rows} rows{failed} to {out}/ (Parquet parts){resumed}"
    shapes = ", ".join(f"{name} {_shape_text(shape)}" for name, shape in result.shapes.items())
    return f"wrote {result.rows} rows{failed} to {out}{resumed}: {shapes}"


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "(" + ", ".join(str(d) for d in shape) + ")"


def main(argv: Sequence[str] | None = None) -> None:
    """The ``layertap`` console script: run the CLI on ``argv`` and exit.

    Example (a shell)::

        layertap extract model.keras photos/ --layer gap --out feats.h5
    """
    cli.main(args=list(argv) if argv is not None else None, prog_name="layertap")
