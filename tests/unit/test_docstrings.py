"""The examples in falq's docstrings run, and they import the way users must: through ``falq``.

Every module whose source holds a ``>>>`` example is run with :mod:`doctest`; no example or
code block names a layer folder as a top-level package (``from shared.settings ...``, which
the architecture test forbids in code), and no module points a reader at the team kit's
files (``shared/reference/...``, ``../shared/seeds``), which are not part of the repository.
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("shared", "workers", "producers", "emulator", "gateway", "ops", "cli", "testing")
SOURCES = sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    return "falq." + ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


WITH_EXAMPLES = [module_name(p) for p in SOURCES if ">>> " in p.read_text()]


def test_modules_with_examples_are_found() -> None:
    assert "falq.shared.settings" in WITH_EXAMPLES and len(WITH_EXAMPLES) >= 10


@pytest.mark.parametrize("module", WITH_EXAMPLES)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, report=False)
    assert result.attempted > 0, f"{module} has '>>> ' outside a doctest"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {module} fail (run doctest -v)"


BARE = re.compile(rf"^\s*(?:>>> |\.\.\. )?(?:from|import) (?:{'|'.join(FOLDERS)})(?:\.|\s)", re.M)
TEAM_KIT = re.compile(r"shared/reference/|\.\./shared/|fal-queue-protocol\.md|task-queue-peers\.md")


def test_no_example_imports_a_layer_folder_as_a_package() -> None:
    bad = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in SOURCES for m in BARE.finditer(p.read_text())]
    assert bad == []


def test_no_module_cites_the_team_kit() -> None:
    bad = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in SOURCES for m in TEAM_KIT.finditer(p.read_text())]
    assert bad == []
