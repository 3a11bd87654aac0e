"""One CLI framework: every command line in falq is a click command, and the ``falq`` group
registers the very command each module runs as ``python -m ...``.

Checks that every ``falq`` subcommand answers ``--help`` (and ``-h``), that each module's
``python -m`` entry point parses with click and keeps its exit codes, that ``falq --help``
imports none of the subcommands' modules, and that no module imports argparse any more.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest

from falq.cli.main import LAZY, cli, main

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("shared", "workers", "producers", "emulator", "gateway", "ops", "cli")
COMMANDS = sorted(cli.list_commands(click.Context(cli)))

#: Modules with a ``python -m`` entry point, and an option each of them has.
MODULES = {
    "falq.cli": "generate",
    "falq.workers": "--concurrency",
    "falq.emulator": "--latency",
    "falq.ops.bench": "--quick",
    "falq.ops.demo": "--keep",
    "falq.ops.bench_limiter": "--max-outstanding",
    "falq.ops.bench.falclient_script": "--sequential",
}

#: Module ``main(argv)`` functions: each runs its module's click command and returns the exit code.
MAINS = {
    "falq.workers.cli": "command",
    "falq.emulator.server": "command",
    "falq.gateway.server": "command",
    "falq.ops.flower": "command",
    "falq.ops.exporter": "command",
    "falq.ops.demo": "command",
    "falq.ops.bench_limiter": "command",
    "falq.ops.bench.falclient_script": "command",
    "falq.ops.bench.cli": "bench",
}


def test_the_group_lists_every_command() -> None:
    assert {"worker", "emulator", "flower", "metrics", "api", "bench", "generate", "bulk"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: falq {name} ") and "Options:" in out and "-h, --help" in out
    assert main([name, "-h"]) == 0
    assert capsys.readouterr().out == out


@pytest.mark.parametrize("name", sorted(LAZY))
def test_lazy_commands_are_the_modules_own(name: str) -> None:
    module, attr, short = LAZY[name]
    command = getattr(importlib.import_module(module), attr)
    assert isinstance(command, click.Command) and short
    assert cli.get_command(click.Context(cli), name) is command


@pytest.mark.parametrize("module", sorted(MAINS))
def test_module_mains_run_their_command(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    mod = importlib.import_module(module)
    assert isinstance(getattr(mod, MAINS[module]), click.Command)
    assert mod.main(["--help"]) == 0
    assert "Options:" in capsys.readouterr().out
    if module == "falq.ops.flower":  # passes unknown options on to `celery flower`
        assert mod.main(["--port", "not-a-port"]) == 2
        assert "Invalid value for '--port'" in capsys.readouterr().err
        return
    assert mod.main(["--no-such-option"]) == 2  # a usage error, as argparse's was
    assert "No such option" in capsys.readouterr().err


@pytest.mark.parametrize("module", sorted(MODULES))
def test_python_m_entry_points_answer_help(module: str) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("Usage: ") and MODULES[module] in out.stdout
    bad = subprocess.run([sys.executable, "-m", module, "--no-such-option"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "No such option" in bad.stderr


def test_falq_help_imports_no_subcommand_module() -> None:
    code = ("import sys; from falq.cli.main import main; code = main(['--help']); "
            "print(' '.join(sorted(sys.modules)), file=sys.stderr); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Commands:" in out.stdout
    loaded = set(out.stderr.split())
    heavy = {m for m in loaded if m.split(".")[0] in ("celery", "gevent", "uvicorn", "starlette", "boto3", "httpx")}
    heavy |= {m for m in loaded if m.startswith(("falq.workers", "falq.emulator", "falq.gateway", "falq.ops",
                                                 "falq.producers", "falq.cli.bulk", "falq.cli.limits"))}
    assert heavy == set()


def test_no_module_imports_argparse() -> None:
    found = []
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                found += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "argparse"]
    assert found == []

