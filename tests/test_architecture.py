"""The tree is the architecture: one import root, layers that only point down, no cycles,
and a wheel that installs on its own.

The layers are declared once, in ``pyproject.toml`` (``[tool.importlinter]``), and checked
here with import-linter; the cycle check and the wheel test need no configuration.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("shared", "workers", "producers", "emulator", "gateway", "ops", "cli")


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


@pytest.mark.timeout(300)
def test_the_wheel_installs_into_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                    str(ROOT)], check=True, timeout=240, capture_output=True)
    (wheel,) = dist.glob("falq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "falq/__init__.py" in names and "falq/shared/settings.py" in names and "falq/cli/main.py" in names
    assert "falq/shared/lua/job_save.lua" in names and "falq/shared/lua/lib.lua" in names  # the Redis scripts
    assert not [n for n in names if n.split("/")[0] in FOLDERS]  # no generic top-level packages
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)  # what pip does for a pure wheel, without needing pip in the venv
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "falq = falq.cli.main:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()
    # The dependencies come from this test run's environment, but not its editable falq:
    # PYTHONPATH entries get no .pth processing, so only the wheel's falq is importable.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    out = subprocess.run([str(py), "-c", "import falq, sys; from falq import Falq; print(falq.__file__); "
                          "from falq.cli.main import main; sys.argv = ['falq', '--help']; main()"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0].startswith(site)
    assert "Commands:" in out.stdout and "generate" in out.stdout and "bulk" in out.stdout
