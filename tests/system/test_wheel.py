"""The wheel installs on its own: one import root, ``falq``, and nothing else at the top.

A fresh venv gets the wheel's files (what pip does for a pure wheel); ``import falq`` and
``falq --help`` then run from them, not from this checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("shared", "workers", "producers", "emulator", "gateway", "ops", "cli", "testing", "tests")


@pytest.mark.timeout(300)
def test_the_wheel_installs_into_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                    str(ROOT)], check=True, timeout=240, capture_output=True)
    (wheel,) = dist.glob("falq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "falq/__init__.py" in names and "falq/shared/settings.py" in names and "falq/cli/main.py" in names
    assert "falq/shared/lua/job.lua" in names and "falq/shared/lua/lib.lua" in names  # the Redis scripts
    assert "falq/testing/stack.py" in names  # what make demo and the benchmarks start
    assert not [n for n in names if n.split("/")[0] in FOLDERS]  # no generic top-level packages
    assert {n.split("/")[0] for n in names} == {"falq", wheel.name.split("-py3")[0] + ".dist-info"}
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
