"""The shape the brief asks of ``src/almat``: short functions, and few almat imports inside functions.

``python tests/test_code_shape.py`` prints the figures (lines, the largest functions, the inner imports).
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "almat"
MAX_FUNCTION_LINES = 70
MAX_INNER_ALMAT_IMPORTS = 15


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC.parent).as_posix(), ast.parse(path.read_text(), filename=str(path))


def function_lengths() -> list[tuple[int, str]]:
    """``(lines, "file:function")`` of every function and method, longest first."""
    out = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{name}:{node.lineno}:{node.name}"))
    return sorted(out, reverse=True)


def inner_almat_imports() -> list[str]:
    """``"file:line"`` of every almat import inside a function."""
    out = []
    for name, tree in _modules():
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("almat") and not node.level:
                    out.append(f"{name}:{node.lineno}")
                elif isinstance(node, ast.Import) and any(a.name.startswith("almat") for a in node.names):
                    out.append(f"{name}:{node.lineno}")
    return sorted(set(out))


def test_no_function_is_longer_than_70_lines():
    long = [f"{where} ({n} lines)" for n, where in function_lengths() if n > MAX_FUNCTION_LINES]
    assert not long, "functions over 70 lines: " + ", ".join(long)


def test_at_most_15_almat_imports_inside_functions():
    inner = inner_almat_imports()
    assert len(inner) <= MAX_INNER_ALMAT_IMPORTS, f"{len(inner)} almat imports inside functions: {inner}"


if __name__ == "__main__":
    total = sum(len(p.read_text().splitlines()) for p in SRC.rglob("*.py"))
    print(f"src/almat: {total} lines")
    print("largest functions:")
    for n, where in function_lengths()[:8]:
        print(f"  {n:4d}  {where}")
    inner = inner_almat_imports()
    print(f"almat imports inside functions: {len(inner)}")
    for where in inner:
        print("  ", where)
