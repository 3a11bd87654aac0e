"""falq's alert rules checked and unit-tested by Prometheus' own ``promtool``.

``promtool`` comes with Debian's ``prometheus`` package (``.ci/run`` and ``make test`` install
it on a bare machine). The rules are ops/prometheus/alerts.yml, their unit tests
ops/prometheus/tests/*.yml; tests/system/test_prometheus_scrapes_real_stack.py runs the same rules in
a real Prometheus against a real stack.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
RULE_TESTS = sorted((ROOT / "ops" / "prometheus" / "tests").glob("*.yml"))
CONFIG = ROOT / "ops" / "prometheus.yml"
#: What the issue asks alerts for (issue 18), by the alert that covers it.
REQUIRED = {
    "FalqBacklogNotDraining": "backlog not draining",
    "FalqFailureRateHigh": "failure rate",
    "FalqModerationSpike": "moderation spike",
    "FalqBudgetNearlySpent": "budget 80% spent",
    "FalqAccountPaused": "account locked or paused",
    "FalqFalStalled": "outstanding at the cap with no completions",
    "FalqNoLiveWorkers": "no live workers",
    "FalqMirrorFailing": "mirror failures",
    "FalqArchiveLag": "archive lag",
}


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (.ci/run and the Makefile do)")
    return exe


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for g in groups for rule in g["rules"] if "alert" in rule]


def test_the_rules_pass_promtool_check_rules() -> None:
    out = run("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_the_issue_asks_for_exists_with_severity_and_summary() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert set(REQUIRED) <= set(rules), set(REQUIRED) - set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_the_unit_tests_fire_and_keep_quiet_every_alert() -> None:
    assert RULE_TESTS, "no rule unit tests in ops/prometheus/tests"
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert [(path.parent / f).resolve() for f in doc["rule_files"]] == [RULES], path
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - fires == set(), f"no case fires {names - fires}"
    assert names - quiet == set(), f"no case keeps {names - quiet} quiet"

    out = run("test", "rules", *(str(p) for p in RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAILED" not in out.stdout and out.stdout.count("SUCCESS") == len(RULE_TESTS), out.stdout


def test_prometheus_config_passes_promtool_check_config(tmp_path: Path) -> None:
    # As shipped: syntax (the bearer token file exists only inside compose's Prometheus).
    out = run("check", "config", "--syntax-only", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    # In full, rule files included: the same file beside the rules, with a token file that exists.
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["prometheus/alerts.yml"]
    token = tmp_path / "token"
    token.write_text("not-a-real-token\n")
    text = CONFIG.read_text().replace("/run/secrets/falq_metrics_token", str(token))
    (tmp_path / "prometheus.yml").write_text(text)
    (tmp_path / "prometheus").mkdir()
    shutil.copy(RULES, tmp_path / "prometheus" / "alerts.yml")
    out = run("check", "config", str(tmp_path / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    n_rules = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    assert "1 rule files found" in out.stdout and f"{n_rules} rules found" in out.stdout, out.stdout


def test_a_broken_rule_is_caught(tmp_path: Path) -> None:
    """promtool really reads the rules: an expression that does not parse fails the check."""
    broken = RULES.read_text().replace("expr: falq_archive_lag > 1000", "expr: falq_archive_lag > > 1000")
    assert broken != RULES.read_text()
    (tmp_path / "broken.yml").write_text(broken)
    out = run("check", "rules", str(tmp_path / "broken.yml"))
    assert out.returncode != 0 and "parse error" in (out.stdout + out.stderr), out.stdout + out.stderr
