"""The documentation: every setting described, generated pages current, a strict build, a short README.

The configuration, CLI, REST API, error and Redis-layout pages are generated from the code
(``falq.cli.docsgen``); these tests fail when a setting has no description or a committed page
no longer matches the code, so the docs cannot drift from what falq does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from falq.cli import docsgen
from falq.gateway.config import GatewaySettings
from falq.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_every_setting_has_a_description() -> None:
    for model in (Settings, GatewaySettings):
        for name, field in model.model_fields.items():
            assert (field.description or "").strip(), (
                f"{model.__name__}.{name} has no Field(description=...): the configuration page is generated from it")
    assert docsgen.missing_descriptions() == []


def test_every_setting_is_on_the_configuration_page_under_its_variable() -> None:
    page = (DOCS / "reference" / "configuration.md").read_text()
    for model in (Settings, GatewaySettings):
        for name, field in model.model_fields.items():
            for env in docsgen.env_names(model, name, field):
                assert f"`{env}`" in page, f"{env} ({model.__name__}.{name}) missing from the configuration page"
    # Names the ecosystem owns keep their own spelling.
    assert "`FAL_KEY`" in page and "`AWS_SECRET_ACCESS_KEY`" in page and "`FALQ_FAL_KEY`" not in page


# The pages are made in a fresh process, as `make docs` makes them: help text read in a test
# process could carry what earlier tests in that process imported or set.
def test_generated_reference_pages_are_current() -> None:
    check = subprocess.run([sys.executable, "-m", "falq.cli.docsgen", "--check"], capture_output=True, text=True,
                           cwd=ROOT)
    assert check.returncode == 0, f"{check.stderr}: run `make docs-gen` and commit them"


def test_docsgen_check_fails_on_a_stale_page(tmp_path: Path) -> None:
    made = subprocess.run([sys.executable, "-m", "falq.cli.docsgen", "--dir", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert made.returncode == 0 and sorted(p.name for p in tmp_path.iterdir()) == sorted(docsgen.PAGES), made.stderr
    ok = subprocess.run([sys.executable, "-m", "falq.cli.docsgen", "--check", "--dir", str(tmp_path)],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    page = tmp_path / "configuration.md"
    page.write_text(page.read_text().replace("FALQ_MAX_ATTEMPTS", "FALQ_MAX_TRIES"))
    stale = subprocess.run([sys.executable, "-m", "falq.cli.docsgen", "--check", "--dir", str(tmp_path)],
                           capture_output=True, text=True, cwd=ROOT)
    assert stale.returncode == 1 and "configuration.md" in stale.stderr


def test_cli_reference_covers_every_command() -> None:
    from falq.cli.main import LAZY, cli

    page = (DOCS / "reference" / "cli.md").read_text()
    for name in [*LAZY, *cli.commands]:
        assert f"## `falq {name}`" in page, f"falq {name} missing from the CLI reference"


def test_rest_reference_covers_every_route() -> None:
    from falq.gateway.rest.openapi import build_document

    page = (DOCS / "reference" / "rest-api.md").read_text()
    for path, item in build_document()["paths"].items():
        for method in item:
            assert f"`{method.upper()} {path}`" in page


def test_every_nav_page_exists_and_has_content() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in pages(item)]
        if isinstance(node, dict):
            return [p for value in node.values() for p in pages(value)]
        return []

    listed = pages(config["nav"])
    assert len(listed) >= 30
    for page in listed:
        text = (DOCS / page).read_text()
        # A page that includes a file (pymdownx.snippets: --8<-- "FILE") shows that file's text.
        text = re.sub(r'^--8<-- "([^"]+)"$', lambda m: (ROOT / m.group(1)).read_text(), text, flags=re.M)
        words = len(re.findall(r"\w+", text))
        assert words >= 150, f"{page} has {words} words: real content, not a placeholder"
        assert not re.search(r"\b(TODO|TBD|lorem ipsum)\b", text, re.I), f"{page} holds a placeholder"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         capture_output=True, text=True, cwd=ROOT, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").is_file()


def test_readme_is_short_and_keeps_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    makefile = (ROOT / "Makefile").read_text()
    for command in ("make demo", "make test"):
        assert command in readme
        assert re.search(rf"^{command.split()[1]}:", makefile, re.M)
    # Every link into docs/ names a file that exists.
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
