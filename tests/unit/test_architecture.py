"""The tree is the architecture: one import root, layers that only point down, no cycles,
and a wheel that installs on its own.

The layers are declared once, in ``pyproject.toml`` (``[tool.importlinter]``), and checked
here with import-linter; the cycle check needs no configuration. That the wheel installs on
its own is checked in ``tests/system/test_wheel.py`` (it builds one, which takes a while).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("shared", "workers", "producers", "emulator", "gateway", "ops", "cli", "testing")


def test_import_contract_holds() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "broken" not in out.stdout.split("Contracts:")[-1].replace("0 broken", "")


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    adj = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in sorted(adj):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles_between_modules() -> None:
    # Every import counts, including those inside functions and under TYPE_CHECKING: a
    # cycle hidden in a function is still a cycle a reader has to untangle.
    assert _cycles(grimp.build_graph("falq")) == []


def test_cycle_check_can_fail() -> None:
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b"]]


def test_code_imports_only_through_the_falq_root() -> None:
    bare = []
    for folder in (*FOLDERS, "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                bare += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert bare == []


def test_every_test_file_is_in_a_tier() -> None:
    # tests/unit (no servers), tests/integration (a real Redis, in-process servers), tests/system
    # (the stack, worker processes, browsers...), tests/chaos; support code in tests/support.
    tiers = {"unit", "integration", "system", "chaos"}
    stray = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                   if "node_modules" not in p.parts and p.relative_to(ROOT / "tests").parts[0] not in tiers)
    assert stray == [], "put each test file in tests/unit, tests/integration or tests/system"
    assert sorted(p.name for p in (ROOT / "tests").glob("*.py")) == ["__init__.py", "conftest.py"]
