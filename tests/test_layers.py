"""The package's layers point one way: parsed imports (lazy ones too) have no cycle and no upward edge,
and the runtime loads no heavy library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "csfm_edge"

# Lowest first. A module may import its own layer or lower ones, never a higher one.
LAYERS = [
    ("errors",),
    ("leads", "progress", "environment", "fileio", "metrics"),
    ("config",),
    ("spec",),
    ("profiles", "reference_pipeline"),
    ("model",),
    ("runtime",),
    ("recordings",),
    ("export",),
    ("bench", "serving", "doctor", "gpucheck", "live"),
    ("commands",),
    ("cli", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every csfm_edge module ``path`` imports, at the top or inside functions."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("csfm_edge")}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports (a relative one hides its layer)"
            base = node.module or ""
            if base.startswith("csfm_edge"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt]
                cycles.append(" -> ".join(cycle))
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_point_down_the_layers():
    graph = _graph()
    unknown = sorted({_layer(m) for m in graph} - set(RANK) - {"__init__"})
    assert not unknown, f"modules in no layer: {unknown}; add them to LAYERS"
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
              if _layer(a) != "__init__" and _layer(b) != "__init__" and RANK[_layer(b)] > RANK[_layer(a)]]
    assert not upward, "imports pointing up a layer:\n" + "\n".join(sorted(upward))


def test_runtime_never_imports_model_except_the_reference_backend():
    graph = _graph()
    offenders = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
                 if a.startswith("csfm_edge.runtime") and b.startswith("csfm_edge.model")
                 and a != "csfm_edge.runtime.backends.torch_ref"]
    assert not offenders, offenders


@pytest.mark.parametrize("module", ["csfm_edge.runtime", "csfm_edge.recordings", "csfm_edge.cli"])
def test_fresh_import_loads_no_heavy_library(module):
    heavy = ("torch", "onnx", "openvino", "tensorrt", "tensorrt_rtx_bindings", "pyarrow")
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"import {module} loaded {loaded}"


def test_the_graph_is_read():
    """The parser sees the edges it must judge (a parser that finds nothing would pass everything)."""
    graph = _graph()
    assert "csfm_edge.runtime.session" in graph["csfm_edge.runtime"]
    assert "csfm_edge.model" in graph["csfm_edge.runtime.backends.torch_ref"]  # a lazy import
    assert "csfm_edge.commands" in graph["csfm_edge.cli"]
