"""The package's architecture, checked: a vLLM-free core, a runtime apart from the tools, no import circles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vllm_selfspec

PACKAGE_DIR = Path(vllm_selfspec.__file__).parent
RUNTIME = ("vllm_selfspec", "vllm_selfspec.compat", "vllm_selfspec.core", "vllm_selfspec.glue")
"""What every vLLM process loads through the plugin entry point."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}


def _imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its body, lazily or not."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES and name != module}
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _is_runtime(module: str) -> bool:
    return module == "vllm_selfspec" or any(module == r or module.startswith(r + ".") for r in RUNTIME[1:])


def test_the_import_graph_sees_the_package():
    assert "vllm_selfspec.glue.config" in GRAPH["vllm_selfspec.glue.patches"]
    assert "vllm_selfspec.tools.bench.report" in GRAPH["vllm_selfspec.tools.bench.command"]


def test_no_import_circles():
    visiting, done, cycles = [], set(), []

    def visit(module):
        if module in visiting:
            cycles.append(visiting[visiting.index(module):] + [module])
            return
        if module in done:
            return
        visiting.append(module)
        for imported in sorted(GRAPH[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)
    assert not cycles, " ; ".join(" -> ".join(cycle) for cycle in cycles)


def test_runtime_and_tools_stand_apart():
    tools = {m for m in MODULES if m.startswith("vllm_selfspec.tools")}
    runtime = set(MODULES) - tools
    assert all(_is_runtime(m) for m in runtime), sorted(m for m in runtime if not _is_runtime(m))
    leaks = {m: sorted(GRAPH[m] & tools) for m in runtime if GRAPH[m] & tools}
    assert not leaks, f"runtime modules import tools: {leaks}"


def test_core_imports_neither_vllm_nor_torch():
    core = sorted(m for m in MODULES if m.startswith("vllm_selfspec.core"))
    probe = "; ".join(f"import {m}" for m in core) + (
        "; import sys; print(sorted(n for n in ('vllm', 'torch') if n in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"importing the core loaded {result.stdout.strip()}"
    assert len(core) > 5
