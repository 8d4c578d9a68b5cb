"""The ensemble core is pure: no Mesos, HTTP or job wiring, and its modules form no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import framework.ensemble
from framework.ensemble import align_columns

PACKAGE = Path(framework.ensemble.__file__).parent
FORBIDDEN = ("pymesos", "addict", "http", "urllib.request", "framework.job", "framework.scheduler",
             "framework.localmesos", "framework.artifacts", "framework.messages", "framework.offers",
             "framework.packing", "executor.runner", "executor.main")


def test_importing_the_core_loads_nothing_of_mesos_http_or_the_job() -> None:
    code = ("import sys, framework.ensemble; "
            "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pymesos', 'addict', 'http', 'urllib', 'framework', 'executor'))))")
    root = Path(framework.__file__).parent.parent
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                            env={"PYTHONPATH": str(root)}).stdout.split()
    assert "framework.ensemble.registry" in loaded  # the probe does see the package's modules
    assert [m for m in loaded if m in FORBIDDEN or m.startswith(tuple(f"{f}." for f in FORBIDDEN))] == []


def internal_imports() -> dict[str, set[str]]:
    """Module -> the framework.ensemble modules it imports (at any depth of its code)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m.startswith("framework.ensemble.") and m != name}
    modules = set(graph)
    return {name: {m for m in deps if m in modules} for name, deps in graph.items()}


def test_no_import_cycles_between_the_core_modules() -> None:
    graph = internal_imports()
    graph.pop("framework.ensemble")  # the package's __init__ only re-exports
    graph.pop("framework.ensemble.methods")  # imports every method module, which import no package __init__
    assert "framework.ensemble.evaluation" not in graph["framework.ensemble.integrator"]
    assert "framework.ensemble.stacking" not in graph["framework.ensemble.combiners"]
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                pytest.fail(f"import cycle: {' -> '.join(trail + [node, dep])}")
            if dep not in state:
                visit(dep, trail + [node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_align_columns_places_columns_by_position() -> None:
    values = np.array([[0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    aligned = align_columns(values, np.array([2, 0]), 3)
    assert aligned.dtype == np.float32 and aligned.tolist() == [[pytest.approx(0.8), 0.0, pytest.approx(0.2)],
                                                                [pytest.approx(0.4), 0.0, pytest.approx(0.6)]]
    padded = align_columns(values, np.array([0, 1]), 3, fill=float(np.finfo(np.float32).min))
    assert padded[:, 2].tolist() == [np.finfo(np.float32).min] * 2
    assert align_columns(values, np.array([0, 1]), 2) is values  # already aligned: no copy
    widened = align_columns(values, np.array([0, 1]), 2, dtype=np.float64)
    assert widened.dtype == np.float64 and np.array_equal(widened, values)
    with pytest.raises(ValueError, match=r"member m: predict_proba of shape \(2, 2\) does not match its 3 classes"):
        align_columns(values, np.array([0, 1, 2]), 3, who="member m: predict_proba")
