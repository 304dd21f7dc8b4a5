"""The harness's structure, read from its code: each subpackage imports only what its docstring allows, no
module imports form a cycle, and the offline boot path needs nothing but the standard library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "harness"
ALLOWED = {  # subpackage -> the subpackages it may import (its own always)
    "core": set(),
    "sources": {"core"},
    "envs": {"core", "sources"},
    "run": {"core", "sources", "envs"},
    "offline": {"core", "sources", "envs"},
    "bisection": {"core", "sources", "envs", "run", "offline", "report"},
    "report": {"core", "sources", "envs", "run"},
    "container": {"core", "envs"},
    "checks": {"core", "sources", "envs"},
    "cli": {"core", "sources", "envs", "run", "offline", "bisection", "report", "container", "checks"},
}
BOOT_ONLY_STDLIB = ("offline.boot", "core.treehash", "core.fsutil", "core.procs", "core.model", "core.evidence",
                    "core.layout", "sources.extract", "envs.probe_env", "envs.runner_site")


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(HARNESS).with_suffix("").parts): p for p in HARNESS.rglob("*.py")}


def imports(name: str, path: Path) -> set[str]:
    """The harness modules `name` imports (relative imports resolved; `from . import x` names module x)."""
    package = name.split(".")[:-1] if not path.name == "__init__.py" else name.split(".")
    found = set()
    known = modules()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                prefix = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("harness"):
                prefix = node.module.removeprefix("harness").lstrip(".")
            else:
                continue
            for alias in node.names:
                candidate = f"{prefix}.{alias.name}".strip(".")
                found.add(candidate if candidate in known else prefix)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("harness.") for a in node.names if a.name.startswith("harness")}
    return {f for f in found if f}


def test_each_subpackage_imports_only_what_it_may():
    problems = []
    for name, path in modules().items():
        top = name.split(".")[0]
        if top not in ALLOWED:
            continue
        for target in imports(name, path):
            other = target.split(".")[0]
            if other in ALLOWED and other != top and other not in ALLOWED[top]:
                problems.append(f"{name} imports {target}")
    assert problems == []


def test_the_allowed_imports_are_the_ones_the_docstrings_state():
    for package, allowed in ALLOWED.items():
        doc = (HARNESS / package / "__init__.py").read_text()
        assert "May import:" in doc, package
        if "everything in the harness" in doc:
            continue
        for other in allowed:
            assert other in doc.split("May import:")[1], (package, other)


def test_no_module_import_cycle():
    graph = {name: {t for t in imports(name, path) if t in modules()} for name, path in modules().items()}
    seen, stack, cycles = {}, [], []

    def visit(node):
        seen[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, ()):
            if seen.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = "done"

    for node in graph:
        if node not in seen:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("name", BOOT_ONLY_STDLIB)
def test_the_boot_path_is_standard_library_only(name):
    path = modules()[name]
    third_party = set()
    for node in ast.parse(path.read_text()).body:  # module level: a guarded import inside a function is allowed
        if isinstance(node, ast.Import):
            third_party |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            third_party.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert third_party - stdlib == set(), name
    for target in imports(name, path):
        if target in modules() and target != name and target.count(".") >= 1 and not target.endswith("__init__"):
            assert target in BOOT_ONLY_STDLIB or target.split(".")[-1] == "__init__", (name, target)


def test_every_subpackage_init_is_a_docstring_only():
    for init in HARNESS.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr), init
