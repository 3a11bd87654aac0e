"""docker-compose.yml is kept correct by parsing it (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def _setting_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            names.update(str(c) for c in alias.choices if str(c).isupper())
        names.add(f"FALQ_{name.upper()}")
    return names


def test_services_and_persistence() -> None:
    services = _compose()["services"]
    assert {"redis", "s3", "worker", "flower", "emulator"} <= services.keys()
    redis_cmd = services["redis"]["command"]
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert services["emulator"]["profiles"] == ["dev"]
    assert "profiles" not in services["worker"]  # workers scale with --scale worker=N
    assert "container_name" not in services["worker"]


def test_every_referenced_file_exists() -> None:
    for name, svc in _compose()["services"].items():
        build = svc.get("build")
        if build:
            dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), (name, dockerfile)
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (ROOT / src).exists(), (name, src)
    dockerfile = (ROOT / "ops" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src


def test_every_command_is_a_falq_command() -> None:
    from producers.cli import cli

    for name, svc in _compose()["services"].items():
        if "build" in svc:
            command = svc["command"]
            assert command[0] in cli.commands, (name, command)


def test_every_falq_environment_variable_is_a_setting() -> None:
    known = _setting_env_names()
    for name, svc in _compose()["services"].items():
        if "build" not in svc:
            continue
        for var in svc.get("environment", {}):
            assert var in known, f"{name}: {var} is not a falq setting"
    assert {"FAL_KEY", "FALQ_REDIS_URL", "FALQ_S3_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY"} <= known


def test_no_secret_is_hard_coded() -> None:
    # Secrets come from the operator's .env; a missing one stops compose with a message.
    text = (ROOT / "docker-compose.yml").read_text()
    for var in re.findall(r"\$\{((?:REDIS_PASSWORD|S3_SECRET_KEY|FALQ_FLOWER_PASSWORD)[^}]*)\}", text):
        assert ":?" in var, var
    for name, svc in _compose()["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if any(w in var for w in ("PASSWORD", "SECRET", "FAL_KEY")):
                assert str(value).startswith("${"), (name, var)
