"""The house has one direction of flow: no module of ccl imports, even lazily inside a
function, a module that imports it back, and each layer imports only the layers below."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "ccl"

# bottom to top; a module may import its own layer and those before it
LAYERS = [
    {"errors", "resources", "registry", "config", "fields", "io", "names", "run_config", "units"},
    {"data", "training", "guards"},
    {"models"},
    {"condense"},
    {"memory"},
    {"strategies"},
    {"replay", "assembly"},
    {"experiment", "checkpoint", "estimate", "logs", "resume"},
    {"runner"},
    {"report", "cells"},
    {"executors"},
    {"compare"},
    {"cli_options", "cli_compare", "cli", "__init__"},
]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name, found = _module(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ccl"):
                found |= {node.module} if node.module != "ccl" else set()  # the package itself: not a layer
                found |= {f"{node.module}.{a.name}" for a in node.names}  # `from ccl.x import y` may be a module
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("ccl")}
        graph[name] = found
    modules = set(graph)
    return {m: {i for i in deps if i in modules and i != m} for m, deps in graph.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_no_module_imports_one_that_imports_it_back():
    graph = _imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_each_layer_imports_only_the_layers_below():
    upward = sorted(f"{m} -> {d}" for m, deps in _imports().items() for d in deps
                    if _layer(d) > _layer(m) and d.split(".")[:2] != m.split(".")[:2])
    assert not upward, upward


def test_the_memory_does_not_know_pad():
    """The memory records the learner's training (`ccl.memory.trajectory`); PAD matches it:
    nothing under ccl/memory imports ccl.condense.pad (issue 37)."""
    graph = _imports()
    assert not sorted(m for m, deps in graph.items() if m.startswith("ccl.memory") and "ccl.condense.pad" in deps)


def test_the_memorys_plain_data_and_buffer_policies_do_not_import_avalanche():
    """The rows, the replay batch, the buffer policies and the store are plain data and
    plain rules: a new policy is one class, written and tested without Avalanche (issue
    45). Of ccl they import only one another and the codec."""
    plain = ("rows", "batch", "buffers", "store", "codec")
    for name in plain:
        tree = ast.parse((PACKAGE / "memory" / f"{name}.py").read_text())
        imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not sorted(m for m in imported if m.split(".")[0] == "avalanche"
                          or m.startswith("ccl") and m not in {f"ccl.memory.{p}" for p in plain}), name


def test_the_runner_re_exports_nothing():
    """Every name ccl.runner imports it uses itself, and no module takes from ccl.runner a
    name it did not define (experiment's names come from ccl.experiment; issue 37)."""
    runner = ast.parse((PACKAGE / "runner.py").read_text())
    imported = {a.asname or a.name for node in runner.body if isinstance(node, ast.ImportFrom)
                for a in node.names}
    used = {n.id for n in ast.walk(runner) if isinstance(n, ast.Name)}
    assert sorted(imported - used - {"annotations"}) == []
    defined = {node.name for node in runner.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for node in runner.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    taken = []
    for folder in ("ccl", "tests", "benchmarks"):
        for path in (PACKAGE.parent / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "ccl.runner":
                    taken += [f"{path.name}: {a.name}" for a in node.names if a.name not in defined]
    assert taken == []
