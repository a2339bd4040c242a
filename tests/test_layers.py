"""The package's layers are its folders: a module's layer is the first part of its path inside src/fmnist
(`nets/kernels/fused.py` is in nets; a top-level module, `runs.py`, is its own layer). Each module imports
only from its own layer or those below it, never upwards, not even inside a function; the CLI imports only
the API, its own modules, errors and progress, and its peers the servers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "fmnist"
LAYERS = (
    "core",
    "data",
    "runs",
    "nets",
    "training",
    "results",
    "interop",
    "studies",
    "api",
    "serving",
    "cli",
)  # bottom up  # bottom up
OWN_LAYER = {"__init__": "api", "__main__": "cli"}  # the package's own files: `import fmnist` is the API
CLI_MAY_IMPORT = (
    "fmnist.api",
    "fmnist.cli",
    "fmnist.core.errors",
    "fmnist.core.progress",
    "fmnist.core.version",
    "fmnist.serving",
)
MODULES = sorted(PACKAGE.rglob("*.py"))


def name_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """`fmnist.nets.kernels.fused` -> "nets"; `fmnist` -> "api"; `fmnist.__main__` -> "cli"."""
    first = module.split(".")[1] if "." in module else "__init__"
    return OWN_LAYER.get(first, first)


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """The fmnist modules a module imports, anywhere in it: `from fmnist.nets import inference` imports
    fmnist.nets.inference (a module) or the name from fmnist.nets (its __init__)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "fmnist"}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{package}: a relative import (from {'.' * node.level}{node.module or ''})")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fmnist":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                exists = (PACKAGE.parent / (full.replace(".", "/") + ".py")).is_file() or (
                    PACKAGE.parent / full.replace(".", "/")
                ).is_dir()
                found.add(full if exists else node.module)
    return found


def test_every_module_is_in_a_known_layer():
    layers = {layer_of(name_of(path)) for path in MODULES}
    assert layers == set(LAYERS), f"unknown: {layers - set(LAYERS)}; empty: {set(LAYERS) - layers}"


def test_the_tree_is_mostly_folders():
    """At most a few modules beside the subpackages."""
    top = [path.name for path in PACKAGE.glob("*.py")]
    assert len(top) <= 10, top


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_import_runs_up_the_layers(path):
    module = name_of(path)
    level = LAYERS.index(layer_of(module))
    imports = imported_modules(ast.parse(path.read_text()), module)
    upward = {other: layer_of(other) for other in imports if LAYERS.index(layer_of(other)) > level}
    assert not upward, f"{module} ({layer_of(module)}) imports from above: {upward}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "cli").glob("*.py")), ids=lambda path: path.name)
def test_the_cli_goes_through_the_api(path):
    imports = imported_modules(ast.parse(path.read_text()), name_of(path))
    others = {name for name in imports if not name.startswith(CLI_MAY_IMPORT)}
    assert not others, f"cli/{path.name} imports {others}: the CLI parses, calls the API and prints"


def test_the_walker_sees_imports_inside_functions():
    tree = ast.parse(
        "def f():\n    from fmnist import api\n    import fmnist.cli.main\n    from fmnist.nets import kernels\n"
    )
    assert imported_modules(tree, "x") == {"fmnist.api", "fmnist.cli.main", "fmnist.nets.kernels"}
    assert [layer_of(name) for name in ("fmnist", "fmnist.api", "fmnist.nets.kernels.fused")] == ["api", "api", "nets"]


def test_modules_and_functions_stay_readable():
    """No module over 400 lines; no function body over 40 (its signature aside: the formatter writes a long one a
    parameter a line; the command line's argparse tables aside)."""
    for path in MODULES:
        text = path.read_text()
        assert text.count("\n") <= 400, f"{path.name}: {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not (
                path.stem == "flags" and node.name.startswith("add_")
            ):
                length = node.end_lineno - node.body[0].lineno + 1
                assert length <= 40, f"{path.name}: {node.name}'s body is {length} lines"
