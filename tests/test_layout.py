"""The package layout is the architecture: no import cycles (in the package or among the
benchmark scripts), and each layer imports only the layers below it.

Imports are read from the source (``ast``), at every nesting level: a function-level
import closes a cycle as surely as a module-level one, it only delays it.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "contrastive_kernels"
BENCHMARKS = ROOT / "benchmarks"


def _module_name(path: pathlib.Path, root: pathlib.Path, prefix: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([prefix] + parts) if prefix else ".".join(parts)


def _imports(path: pathlib.Path, module: str, is_package: bool) -> set[str]:
    """Every module named by an import statement of the file, made absolute."""
    found = set()
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            anchor = base[:len(base) - node.level + 1] if node.level else []
            target = ".".join(anchor + ([node.module] if node.module else []))
            found.add(target)
            # ``from . import x`` / ``from .pkg import mod`` may name modules too.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _graph(root: pathlib.Path, prefix: str) -> dict[str, set[str]]:
    files = {_module_name(p, root, prefix): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = _imports(path, name, path.name == "__init__.py")
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None. A package's ``__init__`` importing its own
    submodules is not a cycle unless a submodule imports the package back."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _without_parent_links(graph):
    """Drop the edge from a submodule to a package that contains it: importing
    ``contrastive_kernels._C_cpu`` as ``from .. import _C_cpu`` runs the package's
    ``__init__`` first, which is an order of initialization, not a cycle of the layout."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_the_package_has_no_import_cycle():
    assert _cycle(_without_parent_links(_graph(PACKAGE, "contrastive_kernels"))) is None


def test_the_benchmark_scripts_have_no_import_cycle():
    graph = _graph(BENCHMARKS, "")
    assert "plot" in graph and "summarize" in graph
    assert _cycle(graph) is None


def test_cycle_detection_can_fail():
    """The check above is not vacuous: the old triton_engine <-> triton_pairwise shape."""
    assert _cycle({"a": {"b"}, "b": {"a"}, "c": set()}) in (["a", "b", "a"], ["b", "a", "b"])


# Which layers each layer may import (besides itself and the package's plain helpers).
_HELPERS = {"contrastive_kernels._validate", "contrastive_kernels.reference",
            "contrastive_kernels._build_info"}
_ALLOWED = {
    "backends": {"backends"},
    "engines": {"engines"},
    "losses": {"losses", "engines"},
    "distributed": {"distributed", "losses", "engines"},
    "integrations": {"integrations", "<top>"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or parts[1] in _ALLOWED else "<top>"


@pytest.mark.parametrize("layer", sorted(_ALLOWED))
def test_each_layer_imports_only_the_layers_below(layer):
    graph = _graph(PACKAGE, "contrastive_kernels")
    bad = []
    for module, deps in graph.items():
        if module == "contrastive_kernels" or _layer(module) != layer:
            continue
        for dep in deps - _HELPERS - {"contrastive_kernels"}:
            if _layer(dep) not in _ALLOWED[layer]:
                bad.append(f"{module} imports {dep}")
    assert not bad, bad


def test_library_code_never_imports_the_proof_tooling():
    graph = _graph(PACKAGE, "contrastive_kernels")
    users = sorted(m for m, deps in graph.items() if not m.startswith("contrastive_kernels.proof")
                   and any(d.startswith("contrastive_kernels.proof") for d in deps))
    assert users == []
