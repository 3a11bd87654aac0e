"""A real Prometheus scrapes `falq metrics` and Flower while a real batch with faults runs;
then every PromQL expression of the Grafana dashboard and of the alert rules is run through
Prometheus' HTTP API.

Prometheus is Debian's ``prometheus`` package (``.ci/run`` and ``make test`` install it), run
as our own process on a free port with a temporary data directory, a 1 s scrape and
evaluation interval, and the shipped scrape config (ops/prometheus.yml) pointed at the
test's exporter and Flower. It loads the shipped alert rules too. Whatever service Debian's
package may have started on :9090 is never used.

The run drives the stack through the situations the alerts are about, one phase after the
other, each ended as soon as Prometheus shows it:

1. fal stalled: the outstanding cap is 2, fal takes 4 s, nothing has finished yet;
2. a batch with faults: fal answers 5xx/429 on some calls (ingress errors), fal's content
   checker refuses 5 prompts (``[[moderate]]``), and S3 refuses every PUT until the workers
   have retried the mirror a few times;
3. fal refuses the key (401) for 4 jobs: failures that are not moderation;
4. fal says the account is locked: the key pauses; then the account is "topped up" and
   ``falq limits set --resume`` lets the job finish;
5. the worker stops (Flower sees it go offline, or drops it once its heartbeats stopped) and
   jobs queue up with nobody to run them;
6. a daily budget is set that today's spend has used 90% of.

Each expression must parse (an instant query succeeds) and return at least one series with
a real value (not NaN) somewhere in the run (a range query at 1 s steps over the run).
Expressions that are legitimately empty in this run are listed in ``EMPTY`` with the reason;
an unlisted empty one fails the test, and so does a listed one that is not empty.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from falq.shared.metrics import read_snapshot
from falq.testing.stack import ROOT, TEST_FAL_KEY, DevStack, free_port
from tests.chaos.s3_faults import S3FaultProxy
from tests.conftest import wait_for

TOKEN = "prometheus-test-token-0123456789"
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-pass-0123456789"
FALQ = [sys.executable, "-c", "import sys; from falq.cli.main import main; sys.exit(main())"]
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "falq.json"
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
CONFIG = ROOT / "ops" / "prometheus.yml"
#: Grafana's template variables, as this test substitutes them. ``$__rate_interval`` is the rate
#: window a panel gets; 5m covers the whole run, so every increase of the run is inside it.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "5m", "$interval": "5m", "$__range": "5m"}

#: Expressions that return nothing in this run, and why (each must be empty; the rest must not).
EMPTY: dict[str, str] = {
    "falq_archive_lag > 1000":
        "FalqArchiveLag: a run of 30 jobs never leaves 1000 finished jobs waiting for the SQL "
        "catalogue (falq_archive_lag itself is exported and checked on the dashboard)",
}


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown template variable in {expr!r}"
    return expr


def dashboard_exprs() -> list[str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))  # a collapsed row keeps its panels inside

    doc = json.loads(DASHBOARD.read_text())
    return [substitute(t["expr"]) for p in panels(doc["panels"]) for t in p.get("targets", []) if t.get("expr")]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [" ".join(r["expr"].split()) for g in groups for r in g["rules"]]


def alert_expr(name: str) -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return next(" ".join(r["expr"].split()) for g in groups for r in g["rules"] if r.get("alert") == name)


class Proc:
    """A child process with its log in ``workdir``; stopped (TERM, then KILL) on exit."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], workdir: Path) -> None:
        self.log_path = workdir / f"{name}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_http(self, url: str, what: str, timeout: float = 60) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{what} exited: {self.log_path.read_text()[-3000:]}")
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=timeout, interval=0.2, what=what)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def prometheus_config(tmp: Path, targets: dict[str, str]) -> Path:
    """The shipped ops/prometheus.yml with the test's targets, token file, intervals and rules."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
    config["rule_files"] = [str((CONFIG.parent / f).resolve()) for f in config["rule_files"]]
    token = tmp / "metrics-token"
    token.write_text(TOKEN)
    for job in config["scrape_configs"]:
        hosts = {t.split(":")[0] for t in job["static_configs"][0]["targets"]}
        job["static_configs"] = [{"targets": [targets[h] for h in sorted(hosts)]}]
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prom:
    """Prometheus' HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def api(self, path: str, **params: Any) -> Any:
        resp = self.http.get(f"/api/v1/{path}", params=params)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (path, params, resp.text[:2000])
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]  # type: ignore[no-any-return]

    def has_series(self, expr: str) -> bool:
        return any(not math.isnan(float(s["value"][1])) for s in self.query(expr))

    def wait_series(self, expr: str, what: str, timeout: float = 30) -> None:
        wait_for(lambda: self.has_series(expr), timeout=timeout, interval=0.5, what=f"{what}: {expr}")


@pytest.fixture
def prom_stack(clean_stack: DevStack, tmp_path: Path) -> Iterator[tuple[Prom, S3FaultProxy]]:
    """S3 behind a fault proxy, `falq metrics`, Flower and Prometheus; yields Prometheus' API."""
    from falq.shared.storage.s3 import Storage

    settings = clean_stack.settings()
    Storage(settings).ensure_bucket()
    proxy = S3FaultProxy(settings.s3_endpoint_url, put_failure_rate=0.0, seed=5)
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed: apt-get install prometheus (.ci/run and the Makefile do)")
    env = {**os.environ, **clean_stack.env()}
    ports = {"metrics": free_port(), "flower": free_port(), "prometheus": free_port()}
    procs: list[Proc] = []
    with proxy:
        try:
            exporter = Proc("exporter", [*FALQ, "metrics", "--port", str(ports["metrics"])],
                            {**env, "FALQ_METRICS_TOKEN": TOKEN}, tmp_path)
            procs.append(exporter)
            # Flower drops a worker's series once its heartbeats stopped for --purge_offline_workers
            # (falq: 300 s; here 3 s): the alert sees a worker gone even when Flower missed its
            # worker-offline event (a killed worker sends none; a warm shutdown's can be lost).
            flower = Proc("flower", [*FALQ, "flower", f"--port={ports['flower']}", "--purge_offline_workers=3"],
                          {**env, "FALQ_FLOWER_USER": FLOWER_USER, "FALQ_FLOWER_PASSWORD": FLOWER_PASSWORD},
                          tmp_path)
            procs.append(flower)
            config = prometheus_config(tmp_path, {h: f"127.0.0.1:{p}" for h, p in ports.items()})
            prometheus = Proc("prometheus", [
                exe, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--log.level=warn",
                "--storage.tsdb.retention.time=1h"], dict(os.environ), tmp_path)
            procs.append(prometheus)
            exporter.wait_http(f"http://127.0.0.1:{ports['metrics']}/healthz", "falq metrics")
            prometheus.wait_http(f"http://127.0.0.1:{ports['prometheus']}/-/ready", "prometheus")
            flower.wait_http(f"http://127.0.0.1:{ports['flower']}/healthcheck", "flower")
            prom = Prom(f"http://127.0.0.1:{ports['prometheus']}")
            wait_for(lambda: {t["labels"]["job"]: t["health"] for t in prom.api("targets")["activeTargets"]}
                     == {"falq": "up", "flower": "up"}, timeout=20, interval=0.3, what="both targets up")
            yield prom, proxy
        finally:
            for p in reversed(procs):
                p.stop()


@pytest.mark.timeout(240)
def test_every_dashboard_and_alert_expression_returns_series(clean_stack: DevStack, falq: Any,
                                                             prom_stack: tuple[Prom, S3FaultProxy]) -> None:
    from falq.producers.admin import Admin

    prom, s3 = prom_stack
    settings = clean_stack.settings()
    r = redis.Redis.from_url(settings.redis_url)
    admin = Admin(falq)
    started = time.time()
    clean_stack.start_worker(concurrency=30, env={
        "FALQ_S3_ENDPOINT_URL": s3.url, "FALQ_PAUSE_POLL_S": "0.5", "FALQ_LOCKED_PAUSE_S": "120",
        "FALQ_RETRY_MAX_S": "1"})
    prom.wait_series("sum(flower_worker_online) > 0", "Flower to see the worker")

    # 1. fal stalled: two requests hold both slots of a cap of 2 and fal takes 4 s each.
    admin.limits_set(max_outstanding=2)
    clean_stack.emu.configure(latency="fixed:4")
    stalled = [falq.generate(f"slow {i}", seed=i) for i in range(2)]
    prom.wait_series(alert_expr("FalqFalStalled"), "fal to look stalled")
    clean_stack.emu.configure(latency="uniform:0.3,1.0", fail_5xx=0.08, fail_429=0.04, fault_seed=7)
    admin.limits_set(max_outstanding=100000)

    # 2. The batch: ingress faults at fal, 5 moderated prompts, and S3 down until mirrors retried.
    s3.rate = 1.0
    batch = [falq.generate(f"fox {i}", seed=i, lane="bulk" if i % 3 else "interactive", pro=i == 4)
             for i in range(14)]
    moderated = [falq.generate(f"a beach {i} [[moderate]]", seed=i) for i in range(5)]

    def mirror_retries() -> float:
        return read_snapshot(r, settings).labelled("retry").get(("storage_transient",), 0)

    wait_for(lambda: mirror_retries() >= 8, timeout=60, interval=0.3, what="mirror retries while S3 is down")
    s3.rate = 0.0
    recs = [j.wait(90) for j in stalled + batch]
    assert all(rec.state == "completed" for rec in recs), [(rec.state, rec.errors[-1:]) for rec in recs]
    mods = [j.wait(60) for j in moderated]
    assert all(m.state == "failed" and m.error and m.error.type == "content_policy" for m in mods), mods
    clean_stack.emu.configure(fail_5xx=0.0, fail_429=0.0)

    # 3. fal refuses the key: failures that are not moderation.
    clean_stack.emu.configure(accepted_keys=["someone-elses-key"])
    refused = [falq.generate(f"refused {i}").wait(30) for i in range(4)]
    assert all(rec.state == "failed" and rec.error and rec.error.type == "fal_auth" for rec in refused)
    clean_stack.emu.configure(accepted_keys=None)
    prom.wait_series(alert_expr("FalqFailureRateHigh"), "the failure rate to show")

    # 4. The account is locked: the key pauses; topped up and resumed, the job finishes.
    clean_stack.emu.configure(locked_keys=[TEST_FAL_KEY])
    locked = falq.generate("while locked")
    prom.wait_series(alert_expr("FalqAccountPaused"), "the key to pause")
    clean_stack.emu.configure(locked_keys=[])
    admin.limits_set(resume=True)
    assert locked.wait(30).state == "completed"

    # 5. The worker stops (warm: it says goodbye to Flower) and jobs queue with nobody to run them.
    clean_stack.stop_workers()
    prom.wait_series(alert_expr("FalqNoLiveWorkers"), "Flower to see no worker")
    for i in range(3):
        falq.generate(f"nobody runs this {i}", lane="bulk")
    prom.wait_series(alert_expr("FalqBacklogNotDraining"), "the backlog")

    # 6. A budget that today's spend has used 90% of.
    spent = read_snapshot(r, settings).spend_today
    assert spent > 0
    admin.budget_set(round(spent / 0.9, 6))
    prom.wait_series(alert_expr("FalqBudgetNearlySpent"), "the budget alert")

    # 7. A second host whose worker keeps its own SQLite catalogue: its archiver registers it
    # and stands aside (the stack's worker claimed the shared history), and the split shows.
    from falq.shared.jobs.store import JobStore
    from falq.workers.maintenance.archive import Archiver

    host_b = clean_stack.settings(FALQ_HOST_NAME="host-b", FALQ_DATA_DIR=str(clean_stack.workdir / "host-b"))
    assert not Archiver(JobStore(r, prefix=host_b.key_prefix, archive=True), host_b, None).shares_history(force=True)
    prom.wait_series(alert_expr("FalqCatalogueSplit"), "the catalogue split")
    time.sleep(2)  # two more scrapes: every figure of the last phase is in
    ended = time.time()

    # Every expression: it parses and runs (instant query), and returns data in the run (range).
    exprs = list(dict.fromkeys([*dashboard_exprs(), *rule_exprs()]))
    assert len(exprs) >= 40, len(exprs)
    empty = []
    for expr in exprs:
        prom.query(expr)  # fails on a parse or evaluation error
        series = prom.api("query_range", query=expr, start=started, end=ended, step=1)["result"]
        values = [v for s in series for _, v in s["values"] if not math.isnan(float(v))]
        if not values:
            empty.append(expr)
    unexplained = [e for e in empty if e not in EMPTY]
    assert not unexplained, f"expressions with no data in the run (fix them or list them in EMPTY): {unexplained}"
    stale = [e for e in EMPTY if e not in empty]
    assert not stale, f"listed as empty but returned data (or no longer used): {stale}"

    # Prometheus evaluated every rule without an error, and the alerts of the last phases are on.
    rules = [rule for g in prom.api("rules")["groups"] for rule in g["rules"]]
    assert len(rules) == len(rule_exprs())
    assert all(rule["health"] == "ok" for rule in rules), [(x["name"], x.get("lastError")) for x in rules]
    alerts = {a["labels"]["alertname"]: a["state"] for a in prom.api("alerts")["alerts"]}
    assert alerts.get("FalqBudgetNearlySpent") == "firing", alerts  # no `for`: fires at once
    assert alerts.get("FalqNoLiveWorkers") == "pending", alerts  # `for: 5m`
    assert alerts.get("FalqBacklogNotDraining") == "pending", alerts
    # Secrets never reach Prometheus: no label or value of any series carries one.
    dump = prom.http.get("/federate", params={"match[]": '{job=~"falq|flower"}'}).text
    for secret in (TEST_FAL_KEY, TOKEN, FLOWER_PASSWORD, clean_stack.env()["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in dump
    r.close()
