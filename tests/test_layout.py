"""The package's shape: no import cycles, Keras-free I/O, Keras internals in one module,
and functions of a readable size (``tools/code_shape.py`` prints the figures)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tools.code_shape import MAX_LINES, MAX_PARAMS, SRC, functions

ADAPTER = "layertap.graph.keras_internals"


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC.parent).with_suffix("").as_posix().replace("/", ".")
        found[name.removesuffix(".__init__")] = ast.parse(path.read_text())
    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, leaving out ``if TYPE_CHECKING:`` blocks (they never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The package modules (and outside packages) ``tree`` imports when it runs."""
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in found if n in known or not n.startswith("layertap")}


def test_no_import_cycles() -> None:
    trees = modules()
    known = set(trees)
    graph = {name: imports(tree, known) & known for name, tree in trees.items()}
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if dep == name or (name.startswith(dep + ".") and dep == "layertap"):
                continue  # a module's own package: its __init__ imports only _errors
            assert state.get(dep) != 1, f"import cycle: {' -> '.join([*path, name, dep])}"
            if dep not in state:
                visit(dep, [*path, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert "layertap._errors" in graph["layertap"] and len(graph["layertap"]) == 1


def test_boundaries_between_subpackages() -> None:
    trees = modules()
    known = set(trees)
    rules = {
        "layertap.io": ("layertap.graph", "layertap.engines", "layertap.cli", "layertap.ray",
                        "keras", "tensorflow", "jax", "torch"),
        "layertap.graph": ("layertap.engines", "layertap.cli", "layertap.ray"),
        "layertap.engines": ("layertap.cli",),
        "layertap.analysis": ("layertap.graph", "layertap.engines", "layertap.cli", "layertap.ray",
                              "layertap.explainer.methods", "keras", "tensorflow", "jax", "torch"),
    }  # fmt: skip
    for name, tree in trees.items():
        for package, banned in rules.items():
            if name == package or name.startswith(package + "."):
                bad = sorted(i for i in imports(tree, known) if i.startswith(banned))
                assert not bad, f"{name} imports {bad}"


def test_io_imports_without_keras() -> None:
    code = (
        "import sys, layertap.io.data, layertap.io.reduce, layertap.io.schema, "
        "layertap.io.write, layertap.io.read, layertap.analysis.probe, "
        "layertap.analysis.similarity, layertap.analysis.plot, layertap.analysis.reduction, "
        "layertap.analysis.compare, "
        "layertap.io.source, layertap.io.expand, layertap.io.images, layertap.io.arrays, "
        "layertap.io.text, layertap.io.inputs; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('keras', 'tensorflow', 'jax', 'torch')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_keras_internals_are_in_one_module() -> None:
    offenders = []
    for name, tree in modules().items():
        if name == ADAPTER:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                private = not node.attr.startswith("__")
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                if private and owner not in ("self", "cls"):
                    offenders.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in getattr(node, "names", [])]
                if any(n.startswith("keras.src") for n in names):
                    offenders.append(f"{name}:{node.lineno} imports keras.src")
    assert not offenders, "Keras internals outside the adapter:\n" + "\n".join(offenders)


def test_functions_are_short_and_narrow_or_say_why() -> None:
    wide, long = [], []
    for name, params, lines, doc in functions():
        if params > MAX_PARAMS and "Wide because" not in doc:
            wide.append(f"{name} ({params} parameters)")
        if lines > MAX_LINES and "Long because" not in doc:
            long.append(f"{name} ({lines} lines)")
    assert not wide and not long, f"too wide: {wide}; too long: {long}"


def test_extract_has_precise_return_types(tmp_path: Path) -> None:
    """A type checker knows ``extract`` gives Features in memory, ExtractResult to a file."""
    import keras
    import pytest

    if keras.backend.backend() != "tensorflow":
        pytest.skip("a static check: once is enough (on the TensorFlow run)")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "import numpy as np\nimport layertap\n"
        "m = layertap.load_model('m.keras')\n"
        "reveal_type(layertap.extract(m, np.zeros((2, 3)), ['d']))\n"
        "reveal_type(layertap.extract(m, np.zeros((2, 3)), ['d'], 'f.h5'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), str(snippet)],
        capture_output=True, text=True, cwd=SRC.parents[1],
    )  # fmt: skip
    revealed = [line.split('"')[1] for line in done.stdout.splitlines() if "Revealed" in line]
    assert revealed == ["layertap.engines.local.Features", "layertap.engines.local.ExtractResult"]
