"""docker-compose.yml is kept correct by parsing it (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from falq.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def _setting_env_names() -> set[str]:
    from falq.gateway.config import GatewaySettings

    names = {f"FALQ_{name.upper()}" for name in GatewaySettings.model_fields}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            names.update(str(c) for c in alias.choices if str(c).isupper())
        names.add(f"FALQ_{name.upper()}")
    return names


def test_services_and_persistence() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"redis", "s3", "postgres", "migrate", "worker", "gateway", "flower", "emulator", "metrics", "prometheus",
            "grafana"} <= services.keys()
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert {"redis-data", "s3-data", "postgres-data"} <= compose["volumes"].keys()
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


def test_the_image_copies_every_folder_of_the_falq_package() -> None:
    copied = {line.split()[1] for line in (ROOT / "ops" / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")}
    linked = {p.name for p in (ROOT / "falq").iterdir() if p.is_symlink()}
    assert linked == {"shared", "workers", "producers", "emulator", "gateway", "ops", "cli", "testing"}
    assert {"falq", *linked} <= copied, sorted({"falq", *linked} - copied)


def test_every_command_is_a_falq_command() -> None:
    import click

    from falq.cli.main import cli

    group = click.Context(cli, info_name="falq")
    for name, svc in _compose()["services"].items():
        if "build" in svc:
            command = svc["command"]
            sub = cli.get_command(group, command[0])
            assert sub is not None, (name, command)
            # The options parse (without running anything): a renamed option fails here.
            sub.make_context(command[0], list(command[1:]), parent=group)


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
    secrets = ("REDIS_PASSWORD|S3_SECRET_KEY|POSTGRES_PASSWORD|FALQ_FLOWER_PASSWORD|FALQ_METRICS_TOKEN|"
               "GRAFANA_ADMIN_PASSWORD")
    # ($${VAR} is the container's own variable, expanded inside it: not compose interpolation.)
    for var in re.findall(rf"(?<!\$)\$\{{((?:{secrets})[^}}]*)\}}", text):
        assert ":?" in var, var
    for name, svc in _compose()["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if any(w in var for w in ("PASSWORD", "SECRET", "FAL_KEY", "TOKEN")):
                assert str(value).startswith("${"), (name, var)


# --- operations: Prometheus, Grafana, the exporter ---------------------------------------------


def _exporter_metric_names() -> set[str]:
    """Every sample name `falq metrics` can emit, from a snapshot with every figure present."""
    from falq.ops.exporter import counters, gauges, histograms
    from falq.shared.jobs.records import STATES
    from falq.shared.metrics import HISTOGRAMS, Histogram, Snapshot

    kinds = ["finished|completed|e", "transition|a|b", "retry|r", "failure|r", "waits|r", "wait_s|r", "spend|e"]
    snap = Snapshot(taken_at=0.0, states=dict.fromkeys(STATES, 1), counters=dict.fromkeys(kinds, 1.0),
                    histograms={h: {"e": Histogram()} for h in HISTOGRAMS}, minutes={},
                    queue_depth={"bulk": 1}, unacked=0, limiter_slots={"k": 1}, outstanding_cap=10,
                    spend_today=1.0, spend_source="estimate", budget_daily=5.0, paused_keys={"k": 0},
                    waiting={"budget": 0}, archive_lag=0)
    names = {"falq_redis_up"}
    for family in [*gauges(snap), *counters(snap), *histograms(snap)]:
        names.update(s.name for s in family.samples)
    return names


def _flower_metric_names() -> set[str]:
    import flower.events

    source = Path(flower.events.__file__).read_text()
    base = set(re.findall(r"['\"](flower_[a-z_]+)['\"]", source))
    return base | {f"{n}_{suffix}" for n in base for suffix in ("bucket", "sum", "count")}


def test_monitoring_services_are_wired() -> None:
    services = _compose()["services"]
    assert {"metrics", "prometheus", "grafana"} <= services.keys()
    # Listening inside the container on all interfaces, published on the host's loopback only.
    assert "--address=0.0.0.0" in services["flower"]["command"]
    assert services["metrics"]["command"][:3] == ["metrics", "--address", "0.0.0.0"]
    for name in ("flower", "prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in services[name]["ports"]), name
    assert "ports" not in services["metrics"]  # only Prometheus, on the compose network, scrapes it


def test_prometheus_scrapes_flower_and_the_exporter_with_its_token() -> None:
    compose = _compose()
    services = compose["services"]
    prom = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert set(jobs) == {"flower", "falq"}
    for job in jobs.values():
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert host in services, target
            assert port in " ".join(map(str, services[host]["command"])), target
    auth = jobs["falq"]["authorization"]
    assert auth["type"] == "Bearer"
    secret = auth["credentials_file"].removeprefix("/run/secrets/")
    assert secret in services["prometheus"]["secrets"]
    assert compose["secrets"][secret]["environment"] == "FALQ_METRICS_TOKEN"
    assert "FALQ_METRICS_TOKEN" in _setting_env_names()


def test_prometheus_loads_the_alert_rules_the_compose_file_mounts() -> None:
    """ops/prometheus.yml's rule_files resolve, inside the container, to the mounted rules file."""
    import posixpath

    prom = _compose()["services"]["prometheus"]
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    container_config = config_flag.split("=", 1)[1]
    mounts = {}
    for vol in prom["volumes"]:
        src, dst = vol.split(":")[:2]
        if src.startswith("."):
            assert (ROOT / src).is_file(), src
            mounts[dst] = (ROOT / src).resolve()
    config_file = ROOT / "ops" / "prometheus.yml"
    assert mounts[container_config] == config_file.resolve()
    rule_files = yaml.safe_load(config_file.read_text()).get("rule_files") or []
    assert rule_files, "ops/prometheus.yml loads no rule files"
    for entry in rule_files:
        # Prometheus resolves a relative rule file against the config file's directory.
        in_container = posixpath.normpath(posixpath.join(posixpath.dirname(container_config), entry))
        in_repo = (config_file.parent / entry).resolve()
        assert in_repo.is_file(), in_repo
        assert mounts.get(in_container) == in_repo, f"{entry}: {in_container} is not mounted from {in_repo}"
        rules = yaml.safe_load(in_repo.read_text())
        assert any("alert" in r for g in rules["groups"] for r in g["rules"]), in_repo


def test_grafana_provisioning_and_dashboard_are_consistent() -> None:
    services = _compose()["services"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("."))
    provisioning = ROOT / "ops/grafana/provisioning"
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards/falq.yml").read_text())["providers"][0]
    assert mounts["./ops/grafana/dashboards"] == provider["options"]["path"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "ops/grafana/dashboards" / Path(home).relative_to(provider["options"]["path"])).is_file()

    import json

    dashboard = json.loads((ROOT / "ops/grafana/dashboards/falq.json").read_text())
    known = _exporter_metric_names() | _flower_metric_names()
    rule_groups = yaml.safe_load((ROOT / "ops/prometheus/alerts.yml").read_text())["groups"]
    recorded = {rule["record"] for g in rule_groups for rule in g["rules"] if "record" in rule}
    used: set[str] = set()
    titles = []
    for panel in dashboard["panels"]:
        titles.append(panel["title"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(re.findall(r"\b((?:falq|flower)_[a-z_]+)", expr))
            # Series the alert rules record (falq:...) and Prometheus' own ALERTS, from ops/prometheus.
            derived = set(re.findall(r"\b(falq:[a-z0-9_:]+)", expr)) | set(re.findall(r"\bALERTS\b", expr))
            assert names or derived, expr
            assert derived <= recorded | {"ALERTS"}, (panel["title"], derived - recorded)
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert names <= known, (panel["title"], names - known)
            used |= names
    # What the issue asks the dashboard to show.
    for metric in ("falq_jobs_finished_total", "falq_jobs", "falq_queue_depth", "falq_fal_outstanding",
                   "falq_fal_outstanding_cap", "falq_retries_total", "falq_spend_today_dollars",
                   "falq_fal_queue_wait_seconds_bucket", "falq_fal_inference_seconds_bucket",
                   "falq_mirror_seconds_bucket", "falq_job_duration_seconds_bucket", "falq_waits_total",
                   "flower_events_total", "flower_task_runtime_seconds_bucket"):
        assert metric in used, metric
    assert len(titles) == len(set(titles))


def test_every_required_variable_is_in_env_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")}
    assert {"FALQ_METRICS_TOKEN", "GRAFANA_ADMIN_PASSWORD"} <= required
    assert required <= example, required - example


# --- the whole product: pinned images, one catalogue, a start order that waits -----------------


def test_every_image_is_pinned() -> None:
    for name, svc in _compose()["services"].items():
        if "image" in svc:
            image = svc["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest" and "/" not in tag, (name, image)


def test_one_catalogue_url_for_every_falq_service() -> None:
    services = _compose()["services"]
    falq = {name: svc for name, svc in services.items() if "build" in svc and "dev" not in svc.get("profiles", [])}
    urls = {name: (svc.get("environment") or {}).get("FALQ_DATABASE_URL") for name, svc in falq.items()}
    assert set(urls) >= {"migrate", "worker", "gateway", "flower", "metrics"}
    assert len(set(urls.values())) == 1, urls
    [url] = set(urls.values())
    assert url.startswith("postgresql://") and "@postgres:5432/" in url
    assert services["migrate"]["command"] == ["db", "upgrade"]


def test_workers_and_gateway_wait_for_healthy_services_and_the_migration() -> None:
    services = _compose()["services"]
    for name in ("worker", "gateway"):
        deps = services[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}, name
        assert deps["redis"] == {"condition": "service_healthy"}, name
        assert deps["s3"] == {"condition": "service_healthy"}, name
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"].get("restart", "no") == "no"
    # every service another waits on as healthy has a healthcheck
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items() if isinstance(svc.get("depends_on"), dict) else []:
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], (name, dep)
    assert services["gateway"]["command"][0] == "api" and "healthcheck" in services["gateway"]


def test_the_media_hosts_default_is_falqs() -> None:
    from falq.shared.settings import DEFAULT_MEDIA_HOSTS

    env = _compose()["x-falq-env"]
    assert env["FALQ_MEDIA_HOSTS"] == "${FALQ_MEDIA_HOSTS:-" + DEFAULT_MEDIA_HOSTS + "}"
