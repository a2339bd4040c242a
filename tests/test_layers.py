"""The package's layers: each module imports only from its own layer or those below it, never upwards —
not even inside a function. The table is the design (README, "A tour of the code")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "fmnist"
LAYERS = [  # bottom to top
    ("foundations", {"errors", "version", "files", "threads", "machine", "progress", "batching"}),
    ("data", {"data"}),
    ("storage", {"runs"}),
    ("networks", {"kernels", "norm_passes", "norm_kernels", "seedcnn", "fastcnn", "resnet", "models"}),
    ("inference", {"inference"}),
    ("training", {"recipe", "configs", "training"}),
    ("results", {"evaluate", "figures", "report", "predict", "bench"}),
    ("interop", {"export", "keras_import", "keras_export"}),
    ("engines", {"sweep"}),
    ("api", {"api", "__init__"}),
    ("interfaces", {"cli", "cli_args", "__main__", "serve", "serve_ray"}),
]
LAYER = {module: level for level, (_, modules) in enumerate(LAYERS) for module in modules}


def imported_modules(tree: ast.AST) -> set[str]:
    """fmnist modules a module imports, anywhere in it ("__init__" for the package itself)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "fmnist" or alias.name.startswith("fmnist."):
                    found.add(alias.name.split(".")[1] if "." in alias.name else "__init__")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fmnist":
            if node.module == "fmnist":
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module.split(".")[1])
    return found


def test_every_module_has_a_layer():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules == set(LAYER), f"without a layer: {modules - set(LAYER)}; gone: {set(LAYER) - modules}"


@pytest.mark.parametrize("module", sorted(LAYER))
def test_no_import_runs_up_the_layers(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    upward = {other: LAYERS[LAYER[other]][0] for other in imported_modules(tree)
              if other in LAYER and LAYER[other] > LAYER[module]}
    assert not upward, f"{module} ({LAYERS[LAYER[module]][0]}) imports from above: {upward}"


def test_the_walker_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    from fmnist import api\n    import fmnist.cli\n")
    assert imported_modules(tree) == {"api", "cli"}


def test_modules_and_functions_stay_readable():
    """No module over 400 lines; no function over 40 (the command line's argparse tables aside)."""
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        assert text.count("\n") <= 400, f"{path.name}: {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not (
                    path.stem == "cli_args" and node.name.startswith("add_")):
                length = node.end_lineno - node.lineno + 1
                assert length <= 40, f"{path.name}: {node.name} is {length} lines"
