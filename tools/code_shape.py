"""Signature width and length of every function in ``src/layertap``, widest and longest first.

``python tools/code_shape.py [N]`` prints the N (default 12) functions with the most
parameters and the N longest, and the count over the limits the project keeps
(10 parameters, 90 lines; a docstring that says ``Long because`` or ``Wide because``
explains an exception; ``@overload`` stubs are left out). ``tests/test_layout.py``
checks the limits.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "layertap"
MAX_PARAMS = 10
MAX_LINES = 90


def _is_overload(decorator: ast.expr) -> bool:
    name = decorator.attr if isinstance(decorator, ast.Attribute) else getattr(decorator, "id", "")
    return name == "overload"


def functions(root: Path = SRC) -> Iterator[tuple[str, int, int, str]]:
    """``(module:qualname, parameters, lines, docstring)`` for every function under ``root``.

    The docstring of an ``__init__`` includes its class's.
    """
    for path in sorted(root.rglob("*.py")):
        module = path.relative_to(root.parent).with_suffix("").as_posix().replace("/", ".")
        tree = ast.parse(path.read_text())
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    if any(_is_overload(d) for d in child.decorator_list):
                        continue
                    a = child.args
                    names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
                    names = [n for n in names if n not in ("self", "cls")]
                    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
                    lines = (child.end_lineno or child.lineno) - child.lineno + 1
                    doc = ast.get_docstring(child) or ""
                    if child.name == "__init__" and isinstance(node, ast.ClassDef):
                        doc += "\n" + (ast.get_docstring(node) or "")
                    name = f"{module}:{prefix}{child.name}"
                    yield name, len(names), lines, doc
                    stack.append((child, f"{prefix}{child.name}."))
                elif isinstance(child, ast.ClassDef):
                    stack.append((child, f"{prefix}{child.name}."))


def main() -> None:
    """Print the tables."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    found = list(functions())
    print(f"{len(found)} functions")
    print("\nmost parameters:")
    for name, params, _, _ in sorted(found, key=lambda f: -f[1])[:n]:
        print(f"  {params:3d}  {name}")
    print("\nlongest (lines, docstring included):")
    for name, _, lines, _ in sorted(found, key=lambda f: -f[2])[:n]:
        print(f"  {lines:4d}  {name}")
    wide = [f for f in found if f[1] > MAX_PARAMS]
    long = [f for f in found if f[2] > MAX_LINES]
    print(f"\nover {MAX_PARAMS} parameters: {len(wide)}; over {MAX_LINES} lines: {len(long)}")


if __name__ == "__main__":
    main()
