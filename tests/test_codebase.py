"""Rules of the code base that a review would otherwise have to catch (docs/architecture.md)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = [p for d in ("snnkern", "kernels") for p in sorted((ROOT / d).rglob("*.py"))]
MAX_LINES = 80


def _functions(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_library_function_over_80_lines(path):
    long = [f"{name} (line {line}): {n} lines" for name, line, n in _functions(path) if n > MAX_LINES]
    assert not long, f"{path.relative_to(ROOT)}: split these: {long}"


def _imports(path):
    """The modules ``path`` imports (relative imports resolved against its package)."""
    pkg = path.relative_to(ROOT).with_suffix("").parts[:-1]
    pkg = ("snnkern", "kernels") if pkg[:1] == ("kernels",) else pkg
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(pkg[:len(pkg) - node.level + 1]) if node.level else []
            yield ".".join(base + ([node.module] if node.module else []))


def _banned(folder, prefixes):
    for path in sorted((ROOT / folder).rglob("*.py")):
        for mod in _imports(path):
            assert not mod.startswith(prefixes), f"{path.relative_to(ROOT)} imports {mod}"


def test_the_kernels_do_not_plan():
    """``kernels/`` takes arrays and static arguments: it imports neither the planner, nor the
    settings, nor the snnax API (dependencies point snn -> plan -> kernels)."""
    _banned("kernels", ("snnkern.plan", "snnkern.settings", "snnkern.snn"))


def test_the_planner_does_not_import_the_api():
    _banned("snnkern/plan", ("snnkern.snn", "snnkern.nir", "snnkern.demo"))
