"""The package's layering, read from the source (ast): no import cycle among tltf's
modules, no private name imported across modules, and tltf imports at module top
unless a comment on the line says why. See docs/architecture.md."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tltf"


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(imported module, imported name or None, node, inside a function) per import."""
    tree = ast.parse(path.read_text())
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = (
                    name if path.name == "__init__.py" else name.rpartition(".")[0]
                )
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                source = ".".join(p for p in (package, node.module) if p)
            else:
                source = node.module or ""
            targets = [
                (f"{source}.{a.name}", None)
                if f"{source}.{a.name}" in modules
                else (source, a.name)
                for a in node.names
            ]
        else:
            continue
        for target, imported in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target, imported, node, id(node) in in_function


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _, _ in _imports(name, path, modules):
            # A package's __init__ re-exporting its own submodules is not a back-arrow.
            if not (path.name == "__init__.py" and target.startswith(name + ".")):
                edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_tltf_modules():
    assert _cycles(_graph(_modules())) == []


def test_no_private_name_crosses_a_module_boundary():
    modules = _modules()
    crossing = [
        f"{name} imports {target}.{imported}"
        for name, path in modules.items()
        for target, imported, _, _ in _imports(name, path, modules)
        if imported and imported.startswith("_") and not imported.startswith("__")
    ]
    assert crossing == []


def test_tltf_imports_sit_at_module_top_or_say_why():
    modules = _modules()
    unexplained = []
    for name, path in modules.items():
        lines = path.read_text().splitlines()
        for _, _, node, inside in _imports(name, path, modules):
            if inside and "#" not in lines[node.lineno - 1]:
                unexplained.append(f"{path.name}:{node.lineno}")
    assert unexplained == []


def test_the_checks_catch_a_cycle_and_a_private_import(tmp_path):
    # The three checks above must be able to fail: a package with a cycle and a
    # private import is caught.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import _helper\n")
    (package / "b.py").write_text("def _helper():\n    from pkg import a\n")
    modules = _modules(package)
    assert _cycles(_graph(modules)) == [["pkg.a", "pkg.b"]]
    imported = [i for n, p in modules.items() for _, i, _, _ in _imports(n, p, modules)]
    assert "_helper" in imported


@pytest.mark.parametrize(
    "name",
    ["tltf.schedule", "tltf.model", "tltf.data"],
)
def test_moved_names_are_still_importable_from_where_they_were_documented(name):
    import importlib

    module = importlib.import_module(name)
    documented = {
        "tltf.schedule": [
            "set_lr_multipliers",
            "default_loss_and_metrics",
            "raise_on_divergence",
            "stage_progbar",
            "StageProgbarLogger",
            "fine_tune",
            "FineTuneSchedule",
        ],
        "tltf.model": ["load_model", "as_model", "model_info", "ModelInfo"],
        "tltf.data": ["RESIZE_POLICIES", "check_pixel_values", "check_positive_int"],
    }[name]
    assert [n for n in documented if not hasattr(module, n)] == []


@pytest.mark.slow
def test_import_tltf_loads_no_tfds_and_keeps_device_discovery_quiet():
    # tfds is slow to import; tltf imports it (and registers tltf_shapes) only when
    # a tfds source is loaded. Keras imported first (as the keras.io recipe
    # does) prints TensorFlow's import-time lines before tltf can act, but not
    # the device discovery of the first op: on a machine without a GPU, "failed
    # call to cuInit". (tltf imported first prints nothing at all:
    # tests/test_cli_e2e.py, test_bad_config_exits_2_without_traceback.)
    import subprocess
    import sys

    code = (
        "import sys, keras, tltf; keras.ops.ones(2).numpy(); "
        "print('tensorflow_datasets' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert "cuInit" not in out.stderr and "Traceback" not in out.stderr
