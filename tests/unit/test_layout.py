"""The package's layout rules, checked on its source: functions stay short, the formatter has the last word."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lora101"
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_is_over_60_lines():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(
                        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    assert not long, "split into named steps:\n" + "\n".join(long)


def test_no_formatter_skips():
    tests = sorted(
        p for p in (PACKAGE.parent / "tests").rglob("*.py") if p.resolve() != Path(__file__).resolve()
    )
    skips = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in _sources() + tests
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "# fmt: skip" in line or "# fmt: off" in line
    ]
    assert not skips, "one statement a line, formatted by ruff format, no skips:\n" + "\n".join(skips)


def _lora101_imports(path: Path) -> set[str]:
    """The lora101 modules ``path`` imports (anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lora101"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lora101"))
    return found


def test_the_layers_go_one_way():
    """Nothing outside lora101/cli/ imports the command line; the command line parses and prints."""
    up = [
        f"{path.relative_to(PACKAGE.parent)} imports {sorted(m for m in _lora101_imports(path) if m.startswith('lora101.cli'))}"
        for path in _sources()
        if "cli" not in path.relative_to(PACKAGE).parts[:1]
        and any(m == "lora101.cli" or m.startswith("lora101.cli.") for m in _lora101_imports(path))
    ]
    assert not up, "the package must not import its command line:\n" + "\n".join(up)


def test_no_import_circles_between_subpackages():
    """A subpackage's modules never import a module that imports them back (directly)."""
    modules = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in _sources()
    }
    graph = {
        name: {m for m in _lora101_imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    circles = sorted(
        f"{a} <-> {b}" for a, deps in graph.items() for b in deps if a in graph.get(b, set()) and a < b
    )
    real = [c for c in circles if not _is_package_reexport(c)]
    assert not real, "import circles:\n" + "\n".join(real)


def _is_package_reexport(circle: str) -> bool:
    """A package's ``__init__`` re-exporting its own modules is not a circle."""
    a, b = circle.split(" <-> ")
    return b.startswith(a + ".") or a.startswith(b + ".")
