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


# Libraries imported inside the functions that use them, and why: everything else is imported at the top of
# the module. (Seconds: `python -c 'import torch, LIB'` minus `import torch`, best of 3, on the 2-core CI machine.)
IMPORTED_WHERE_USED = {
    "transformers": "about 0.6 s: lesson 2's `import lora101.lora` and `lora101 --help` do without it",
    "peft": "about 4 s",
    "bitsandbytes": "about 2.7 s, and a notice on a CPU-only machine",
    "accelerate": "only training on several processes needs it",
    "datasets": "about 0.9 s, only a fine-tune's data needs it",
    "matplotlib": "chooses its backend when imported: a plot imports it where it draws",
    "IPython": "only in a notebook",
    "ipywidgets": "only in a notebook",
    "nbgrader": "the instructor's extra (about 2.8 s): the lessons and `lora101 --help` run without it",
    "nbconvert": "comes with nbgrader",
    "nbformat": "comes with nbgrader",
    "traitlets": "comes with nbgrader's configuration",
    "sqlalchemy": "comes with nbgrader's gradebook",
    "jupyter_client": "comes with nbgrader",
}


def _function_imports(tree: ast.AST):
    """(import node, the nodes around it) for every import inside a function."""

    def walk(node, around, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, around
            yield from walk(child, [*around, child], inside)

    yield from walk(tree, [], False)


def test_imports_sit_at_the_top_unless_a_reason_is_given():
    """An import inside a function is one of IMPORTED_WHERE_USED, or one whose failure is handled (an optional
    or platform module, in a ``try``), or carries its reason in a comment on its line."""
    unexplained = []
    for path in _sources():
        source = path.read_text()
        lines = source.splitlines()
        for node, around in _function_imports(ast.parse(source, filename=str(path))):
            name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if (
                (name or "").split(".")[0] in IMPORTED_WHERE_USED
                or any(isinstance(n, ast.Try) for n in around)
                or "#" in lines[node.lineno - 1]
            ):
                continue
            unexplained.append(
                f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {lines[node.lineno - 1].strip()}"
            )
    assert not unexplained, "move to the module's top, or say why not:\n" + "\n".join(unexplained)
