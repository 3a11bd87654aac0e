"""The administration service (:mod:`falq.producers.admin`) against a private redis-server.

Every rule is tried accepted and rejected (table-driven); a rejected change leaves Redis as
it was. Then the CLI (``falq.cli.main.main``) and the gateway (its ASGI app, in process) are
given the same bad values and must name the same field with the same rule text: they share
one validation, the service's.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from falq.producers import Falq
from falq.producers.admin import Admin
from falq.producers.admin.base import LIMIT_RULE
from falq.producers.admin.jobs import STATE_RULE
from falq.shared.errors import InvalidInput, JobNotFound, PermanentError
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.jobs.records import JobRecord
from falq.shared.limits.fields import (
    BUDGET_RULE,
    BURST_RULE,
    CAP_RULE,
    CAP_TEXT_RULE,
    CAPS_RULE,
    FLAG_RULE,
    NOTHING_RULE,
    OUTSTANDING_RULE,
    RATE_RULE,
    budget_request,
    limits_request,
)
from falq.shared.limits.store import Limiter, read_config, write_config
from falq.shared.settings import Settings, get_settings, reset_settings
from falq.shared.since import SINCE_RULE
from falq.shared.validation import OBJECT_RULE, REQUIRED_RULE

SECRET = "fal-admin-secret-key-0123456789"
EDIT = "fal-ai/qwen-image-2/edit"
PRO_EDIT = "fal-ai/qwen-image-2/pro/edit"
KNOWN = ", ".join(ENDPOINTS)
API_KEY = "admin-test-api-key"


@dataclass
class Env:
    settings: Settings
    r: redis.Redis
    admin: Admin

    def snapshot(self) -> dict[bytes, Any]:
        return {k: self.r.dump(k) for k in self.r.keys(f"{self.settings.key_prefix}:*")}

    def failed_job(self, prompt: str = "doomed") -> JobRecord:
        job_id = self.admin.falq.generate(prompt).id

        def fail(rec: JobRecord) -> None:
            rec.attempts = 1
            rec.add_error(PermanentError("fal said no"))
            rec.move("failed")

        return self.admin.falq.store.update(job_id, fail)


@pytest.fixture
def env(redis_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    tag = f"a{uuid.uuid4().hex[:10]}"
    for name, value in {"FALQ_REDIS_URL": redis_server, "FALQ_KEY_PREFIX": tag,
                        "FALQ_QUEUE_INTERACTIVE": f"{tag}.interactive", "FALQ_QUEUE_BULK": f"{tag}.bulk",
                        "FAL_KEY": SECRET}.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    settings = get_settings()
    r = redis.Redis.from_url(redis_server)
    yield Env(settings, r, Admin(Falq(settings)))
    r.close()
    reset_settings()


class Gateway:
    """The gateway's ASGI app, called in process (httpx's ASGI transport; no server, no lifespan)."""

    def __init__(self, settings: Settings) -> None:
        from falq.gateway.app import create_app
        from falq.gateway.config import GatewaySettings

        self.app = create_app(settings, GatewaySettings(api_keys=API_KEY), dispatch_hooks=False)

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        async def call() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://gw",
                                         headers={"Authorization": f"Key {API_KEY}"}) as c:
                return await c.request(method, path, json=body)

        return asyncio.run(call())

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def put(self, path: str, body: Any) -> httpx.Response:
        return self.request("PUT", path, body)


@pytest.fixture
def client(env: Env) -> Gateway:
    return Gateway(env.settings)


def messages(exc: pytest.ExceptionInfo[InvalidInput]) -> list[str]:
    return [str(e) for e in exc.value.errors]


# --- limits: each rule accepted and rejected -----------------------------------------------------------

# (id, keyword arguments of limits_set, the stored fields when accepted | the "field: rule" errors)
LIMITS: list[tuple[str, dict[str, Any], dict[str, str] | list[str]]] = [
    ("rate-zero", {"rate": 0}, {"rate": "0.0"}),
    ("rate-float", {"rate": 7.5}, {"rate": "7.5"}),
    ("rate-text", {"rate": " 20 "}, {"rate": "20.0"}),
    ("rate-huge-int", {"rate": 10**6}, {"rate": "1000000.0"}),
    ("rate-negative", {"rate": -1}, [f"rate: {RATE_RULE}"]),
    ("rate-tiny-negative", {"rate": -1e-9}, [f"rate: {RATE_RULE}"]),
    ("rate-nan", {"rate": math.nan}, [f"rate: {RATE_RULE}"]),
    ("rate-inf", {"rate": math.inf}, [f"rate: {RATE_RULE}"]),
    ("rate-tiny-positive", {"rate": 1e-300}, [f"rate: {RATE_RULE}"]),
    ("rate-huge", {"rate": 1e7}, [f"rate: {RATE_RULE}"]),
    ("rate-inf-text", {"rate": "inf"}, [f"rate: {RATE_RULE}"]),
    ("rate-overflow-text", {"rate": "1e400"}, [f"rate: {RATE_RULE}"]),
    ("rate-overflow-int", {"rate": 10**400}, [f"rate: {RATE_RULE}"]),
    ("rate-word", {"rate": "fast"}, [f"rate: {RATE_RULE}"]),
    ("rate-underscores", {"rate": "1_000"}, [f"rate: {RATE_RULE}"]),
    ("rate-bool", {"rate": True}, [f"rate: {RATE_RULE}"]),
    ("rate-list", {"rate": [1]}, [f"rate: {RATE_RULE}"]),
    ("burst-one", {"burst": 1}, {"burst": "1"}),
    ("burst-max", {"burst": 1_000_000}, {"burst": "1000000"}),
    ("burst-text", {"burst": "3"}, {"burst": "3"}),
    ("burst-integral-float", {"burst": 4.0}, {"burst": "4"}),
    ("burst-zero", {"burst": 0}, [f"burst: {BURST_RULE}"]),
    ("burst-above-max", {"burst": 1_000_001}, [f"burst: {BURST_RULE}"]),
    ("burst-fraction", {"burst": 1.5}, [f"burst: {BURST_RULE}"]),
    ("burst-fraction-text", {"burst": "1.5"}, [f"burst: {BURST_RULE}"]),
    ("burst-bool", {"burst": True}, [f"burst: {BURST_RULE}"]),
    ("outstanding-zero", {"max_outstanding": 0}, {"max_outstanding": "0"}),
    ("outstanding-max", {"max_outstanding": 1_000_000}, {"max_outstanding": "1000000"}),
    ("outstanding-negative", {"max_outstanding": -1}, [f"max_outstanding: {OUTSTANDING_RULE}"]),
    ("outstanding-above-max", {"max_outstanding": 1_000_001}, [f"max_outstanding: {OUTSTANDING_RULE}"]),
    ("outstanding-word", {"max_outstanding": "many"}, [f"max_outstanding: {OUTSTANDING_RULE}"]),
    ("cap-set", {"endpoint_caps": {PRO_EDIT: 4}}, {"max_outstanding_per_endpoint": json.dumps({PRO_EDIT: 4})}),
    ("cap-zero-and-max", {"endpoint_caps": {PRO_EDIT: 0, EDIT: 1_000_000}},
     {"max_outstanding_per_endpoint": json.dumps({EDIT: 1_000_000, PRO_EDIT: 0}, sort_keys=True)}),
    ("cap-remove", {"endpoint_caps": {PRO_EDIT: None}}, {"max_outstanding_per_endpoint": "{}"}),
    ("cap-text", {"endpoint_caps": [f"{PRO_EDIT}=4", f"{EDIT}=none"]},
     {"max_outstanding_per_endpoint": json.dumps({PRO_EDIT: 4})}),
    ("cap-unknown", {"endpoint_caps": {"nope": 1}},
     [f"max_outstanding_per_endpoint: 'nope': unknown endpoint; known: {KNOWN}"]),
    ("cap-negative", {"endpoint_caps": {EDIT: -1}}, [f"max_outstanding_per_endpoint: '{EDIT}': {CAP_RULE}"]),
    ("cap-above-max", {"endpoint_caps": {EDIT: 1_000_001}},
     [f"max_outstanding_per_endpoint: '{EDIT}': {CAP_RULE}"]),
    ("cap-word", {"endpoint_caps": {EDIT: "four"}}, [f"max_outstanding_per_endpoint: '{EDIT}': {CAP_RULE}"]),
    ("cap-superscript", {"endpoint_caps": [f"{EDIT}=²"]}, [f"max_outstanding_per_endpoint: '{EDIT}': {CAP_RULE}"]),
    ("cap-no-equals", {"endpoint_caps": ["nope"]}, [f"max_outstanding_per_endpoint: 'nope': {CAP_TEXT_RULE}"]),
    ("cap-not-a-map", {"endpoint_caps": 4}, [f"max_outstanding_per_endpoint: {CAPS_RULE}"]),
    ("resume-not-bool", {"resume": "yes"}, [f"resume: {FLAG_RULE}"]),
    ("reset-not-bool", {"reset": 1}, [f"reset: {FLAG_RULE}"]),
    ("nothing", {}, [NOTHING_RULE]),
    ("everything-wrong", {"rate": -1, "burst": 0, "max_outstanding": -1, "endpoint_caps": {"x": 1}},
     [f"rate: {RATE_RULE}", f"burst: {BURST_RULE}", f"max_outstanding: {OUTSTANDING_RULE}",
      f"max_outstanding_per_endpoint: 'x': unknown endpoint; known: {KNOWN}"]),
]


@pytest.mark.parametrize(("kwargs", "expected"), [(k, e) for _, k, e in LIMITS], ids=[i for i, _, _ in LIMITS])
def test_limits_rules(env: Env, kwargs: dict[str, Any], expected: dict[str, str] | list[str]) -> None:
    prefix = env.settings.key_prefix
    write_config(env.r, prefix, {"budget_daily": "5.0"})  # something stored, to see that nothing else is
    before = env.snapshot()
    if isinstance(expected, list):
        with pytest.raises(InvalidInput) as exc:
            env.admin.limits_set(**kwargs)
        assert messages(exc) == expected
        assert env.snapshot() == before  # nothing written
        return
    done = env.admin.limits_set(**kwargs)
    stored = read_config(env.r, prefix)
    assert {k: stored[k] for k in expected} == expected
    assert done.written == expected


# (id, JSON body of PUT /v1/limits, the errors; None: accepted)
LIMITS_BODIES: list[tuple[str, Any, list[str] | None]] = [
    ("array", [1], [OBJECT_RULE]),
    ("null", None, [OBJECT_RULE]),
    ("text", "rate=1", [OBJECT_RULE]),
    ("unknown-field", {"colour": "red", "rate": -1},
     ["colour: unknown field; known: rate, burst, max_outstanding, max_outstanding_per_endpoint, resume, reset",
      f"rate: {RATE_RULE}"]),
    ("caps-as-list", {"max_outstanding_per_endpoint": [f"{EDIT}=1"]}, [f"max_outstanding_per_endpoint: {CAPS_RULE}"]),
    ("nulls-change-nothing", {"rate": None, "resume": None}, [NOTHING_RULE]),
    ("empty", {}, [NOTHING_RULE]),
    ("resume-false-only", {"resume": False}, [NOTHING_RULE]),
    ("resume", {"resume": True}, None),
    ("full", {"rate": 7.5, "burst": 2, "max_outstanding": 9, "max_outstanding_per_endpoint": {PRO_EDIT: 4},
              "reset": False}, None),
]


@pytest.mark.parametrize(("body", "expected"), [(b, e) for _, b, e in LIMITS_BODIES],
                         ids=[i for i, _, _ in LIMITS_BODIES])
def test_limits_body_shape(body: Any, expected: list[str] | None) -> None:
    if expected is None:
        limits_request(body)
        return
    with pytest.raises(InvalidInput) as exc:
        limits_request(body)
    assert messages(exc) == expected


# --- budget ----------------------------------------------------------------------------------------------

BUDGETS: list[tuple[str, Any, str | None]] = [
    ("zero", 0, "0.0"),
    ("dollars", 12.5, "12.5"),
    ("text", "50", "50.0"),
    ("max", 1e12, "1000000000000.0"),
    ("clear", None, "none"),
    ("negative", -3, None),
    ("above-max", 1e12 + 1e6, None),
    ("above-max-text", "1e13", None),
    ("nan", math.nan, None),
    ("inf", "inf", None),
    ("word", "lots", None),
    ("bool", False, None),
]


@pytest.mark.parametrize(("usd", "stored"), [(u, s) for _, u, s in BUDGETS], ids=[i for i, _, _ in BUDGETS])
def test_budget_rules(env: Env, usd: Any, stored: str | None) -> None:
    before = env.snapshot()
    if stored is None:
        with pytest.raises(InvalidInput) as exc:
            env.admin.budget_set(usd)
        assert messages(exc) == [f"budget_usd: {BUDGET_RULE}"]
        assert env.snapshot() == before
        return
    view = env.admin.budget_set(usd)
    assert read_config(env.r, env.settings.key_prefix)["budget_daily"] == stored
    assert view.budget_usd == (None if usd is None else float(usd))
    assert view.remaining_usd == (None if usd is None else float(usd))
    assert (view.spent_usd, view.jobs_paused) == (0, 0)


@pytest.mark.parametrize(("body", "expected"), [
    ({}, [f"budget_usd: {REQUIRED_RULE}"]),
    ({"budget_usd": -1, "cap": 3}, ["cap: unknown field; known: budget_usd", f"budget_usd: {BUDGET_RULE}"]),
    ([50], [OBJECT_RULE]),
    ({"budget_usd": None}, None),
    ({"budget_usd": 5}, None),
])
def test_budget_body_shape(body: Any, expected: list[str] | None) -> None:
    if expected is None:
        budget_request(body)
        return
    with pytest.raises(InvalidInput) as exc:
        budget_request(body)
    assert messages(exc) == expected


# --- jobs, dead letters, retry, cancel ----------------------------------------------------------------------

JOBS: list[tuple[str, dict[str, Any], list[str] | None]] = [
    ("defaults", {}, None),
    ("state", {"state": "failed"}, None),
    ("since-duration", {"since": "1h"}, None),
    ("since-iso", {"since": "2020-01-01"}, None),
    ("since-epoch", {"since": "0"}, None),
    ("limit-text", {"limit": "7"}, None),
    ("limit-max", {"limit": 100_000}, None),
    ("state-unknown", {"state": "bogus"}, [f"state: {STATE_RULE}"]),
    ("since-word", {"since": "yesterday-ish"}, [f"since: {SINCE_RULE}"]),
    ("since-blank", {"since": " "}, [f"since: {SINCE_RULE}"]),
    ("since-infinite", {"since": "1e400"}, [f"since: {SINCE_RULE}"]),
    ("since-nan", {"since": "nan"}, [f"since: {SINCE_RULE}"]),
    ("limit-zero", {"limit": 0}, [f"limit: {LIMIT_RULE}"]),
    ("limit-above-max", {"limit": "100001"}, [f"limit: {LIMIT_RULE}"]),
    ("limit-word", {"limit": "some"}, [f"limit: {LIMIT_RULE}"]),
    ("all-wrong", {"state": "x", "since": "x", "limit": "x"},
     [f"state: {STATE_RULE}", f"since: {SINCE_RULE}", f"limit: {LIMIT_RULE}"]),
]


@pytest.mark.parametrize(("kwargs", "expected"), [(k, e) for _, k, e in JOBS], ids=[i for i, _, _ in JOBS])
def test_jobs_rules(env: Env, kwargs: dict[str, Any], expected: list[str] | None) -> None:
    if expected is None:
        assert env.admin.jobs(**kwargs) == []
        return
    with pytest.raises(InvalidInput) as exc:
        env.admin.jobs(**kwargs)
    assert messages(exc) == expected


def test_retry_rules_and_outcomes(env: Env) -> None:
    with pytest.raises(InvalidInput) as exc:
        env.admin.retry([])
    assert messages(exc) == ["job_ids: must name at least one job"]
    for bad in ("whenever", "", "inf"):
        with pytest.raises(InvalidInput) as exc:
            env.admin.retry_failed(bad)
        assert messages(exc) == [f"since: {SINCE_RULE}"]

    dead = env.failed_job()
    alive = env.admin.falq.generate("still queued")
    before = env.snapshot()
    with pytest.raises(JobNotFound):
        env.admin.retry([dead.id, "no-such-job"])
    assert env.snapshot() == before  # nothing changed
    assert [d.id for d in env.admin.dead_letters(since="1h")] == [dead.id]
    assert env.admin.dead_letters()[0].errors[0].message == "fal said no"

    out = env.admin.retry([dead.id, dead.id, alive.id])
    assert [(o.record.id, o.retried, o.record.state) for o in out] == \
        [(dead.id, True, "queued"), (alive.id, False, "queued")]
    assert out[0].record.retry_from == 1 and [e.message for e in out[0].record.errors] == ["fal said no"]
    assert env.admin.retry([dead.id])[0].retried is False  # queued now: nothing to retry
    assert env.admin.dead_letters() == []

    again = env.failed_job("again")
    assert [o.record.id for o in env.admin.retry_failed("2099-01-01")] == []
    assert [(o.record.id, o.retried) for o in env.admin.retry_failed("1h")] == [(again.id, True)]
    assert env.admin.retry_failed() == []


def test_cancel_outcomes(env: Env) -> None:
    queued = env.admin.falq.generate("cancel me")
    done = env.admin.cancel(queued.id)
    assert (done.outcome, done.record.state) == ("cancelled", "cancelled")
    again = env.admin.cancel(queued.id)
    assert (again.outcome, again.record.state) == ("final", "cancelled")
    dead = env.failed_job()
    assert env.admin.cancel(dead.id).outcome == "final"
    assert not env.admin.falq.store.cancel_requested(dead.id)  # an ended job is left as it was
    leased = env.admin.falq.generate("a worker has it")
    env.r.set(env.admin.falq.store.keys.lease(leased.id), "worker-1")
    held = env.admin.cancel(leased.id)
    assert (held.outcome, held.record.state, held.record.cancel_requested) == ("requested", "queued", True)
    with pytest.raises(JobNotFound):
        env.admin.cancel("no-such-job")


def test_limits_show_set_reset_resume(env: Env) -> None:
    view = env.admin.limits_show()
    assert set(view.sources.values()) == {"unseeded (this shell's FALQ_* default)"}
    assert [k.suffix for k in view.keys] == [env.settings.key_suffix()] and SECRET not in json.dumps(view.as_json())
    env.admin.limits_set(endpoint_caps={EDIT: 3, PRO_EDIT: 4}, rate=5)
    env.admin.limits_set(endpoint_caps=[f"{EDIT}=none"])
    view = env.admin.limits_show()
    assert view.config["max_outstanding_per_endpoint"] == {PRO_EDIT: 4} and view.config["rate"] == 5.0
    assert view.sources["rate"] == "redis"
    # reset forgets everything first; the fields given are then written on top of the defaults
    done = env.admin.limits_set(reset=True, burst=3)
    assert read_config(env.r, env.settings.key_prefix) == {"burst": "3"}
    assert done.reset and done.view.config["max_outstanding_per_endpoint"] == {}
    lim = Limiter(env.r, env.settings)
    lim.pause("User is locked", 60)
    assert env.admin.limits_set(resume=True).resumed == [env.settings.key_suffix()]
    assert env.admin.limits_set(resume=True).resumed == []
    write_config(env.r, env.settings.key_prefix, {"rate": "junk", "max_outstanding_per_endpoint": "["})
    broken = env.admin.limits_show().config
    assert broken["rate"] is None and broken["max_outstanding_per_endpoint"] == {}


# --- one validation: the CLI and the gateway give the same answer ---------------------------------------------

# (id, CLI argv, gateway method, path, JSON body)
SAME: list[tuple[str, list[str], str, str, Any]] = [
    ("rate-negative", ["limits", "set", "--rate", "-1"], "PUT", "/v1/limits", {"rate": -1}),
    ("rate-word", ["limits", "set", "--rate", "fast"], "PUT", "/v1/limits", {"rate": "fast"}),
    ("rate-inf", ["limits", "set", "--rate", "inf"], "PUT", "/v1/limits", {"rate": "inf"}),
    ("burst-zero", ["limits", "set", "--burst", "0"], "PUT", "/v1/limits", {"burst": 0}),
    ("burst-fraction", ["limits", "set", "--burst", "1.5"], "PUT", "/v1/limits", {"burst": 1.5}),
    ("burst-too-big", ["limits", "set", "--burst", "1000001"], "PUT", "/v1/limits", {"burst": 1_000_001}),
    ("outstanding", ["limits", "set", "--max-outstanding", "-1"], "PUT", "/v1/limits", {"max_outstanding": -1}),
    ("cap-unknown", ["limits", "set", "--endpoint-cap", "nope=1"], "PUT", "/v1/limits",
     {"max_outstanding_per_endpoint": {"nope": 1}}),
    ("cap-negative", ["limits", "set", "--endpoint-cap", f"{EDIT}=-1"], "PUT", "/v1/limits",
     {"max_outstanding_per_endpoint": {EDIT: -1}}),
    ("cap-word", ["limits", "set", "--endpoint-cap", f"{EDIT}=four"], "PUT", "/v1/limits",
     {"max_outstanding_per_endpoint": {EDIT: "four"}}),
    ("nothing", ["limits", "set"], "PUT", "/v1/limits", {}),
    ("several", ["limits", "set", "--rate", "-2", "--burst", "0", "--endpoint-cap", "x=1"], "PUT", "/v1/limits",
     {"rate": -2, "burst": 0, "max_outstanding_per_endpoint": {"x": 1}}),
    ("budget-negative", ["budget", "--set", "-3"], "PUT", "/v1/budget", {"budget_usd": -3}),
    ("budget-too-big", ["budget", "--set", "1e13"], "PUT", "/v1/budget", {"budget_usd": 1e13}),
    ("budget-word", ["budget", "--set", "lots"], "PUT", "/v1/budget", {"budget_usd": "lots"}),
    ("retry-since", ["retry", "--failed", "--since", "whenever"], "POST", "/v1/retry-failed?since=whenever", None),
    ("retry-since-blank", ["retry", "--failed", "--since", ""], "POST", "/v1/retry-failed?since=", None),
]


@pytest.mark.parametrize(("argv", "method", "path", "body"), [s[1:] for s in SAME], ids=[s[0] for s in SAME])
def test_cli_and_gateway_give_the_same_answer(env: Env, client: Gateway, capsys: pytest.CaptureFixture[str],
                                              argv: list[str], method: str, path: str, body: Any) -> None:
    from falq.cli.main import main

    before = env.snapshot()
    capsys.readouterr()
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    doc = json.loads(out)["error"]
    assert doc["type"] == "invalid_input"
    cli = [(e["field"], e["message"]) for e in doc["errors"]]
    # the human form is the same lines
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {f}: {m}" if f else f"error: {m}" for f, m in cli]

    resp = client.request(method, path, body)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    root = "query" if "?" in path else "body"
    assert all(d["loc"][0] == root and d["type"] == "value_error" for d in detail)
    gateway = [(".".join(str(p) for p in d["loc"][1:]), d["msg"]) for d in detail]
    assert gateway == cli
    assert env.snapshot() == before


def test_cli_and_gateway_agree_on_good_values(env: Env, client: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    from falq.cli.main import main

    capsys.readouterr()
    assert main(["limits", "set", "--rate", "7.5", "--burst", "2", "--max-outstanding", "9",
                 "--endpoint-cap", f"{PRO_EDIT}=4", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    gw = client.get("/v1/limits").json()
    assert {f: item["value"] for f, item in cli["config"].items()} == gw["config"] == {
        "rate": 7.5, "burst": 2, "max_outstanding": 9, "budget_daily": None,
        "max_outstanding_per_endpoint": {PRO_EDIT: 4}}
    assert client.put("/v1/limits", {"max_outstanding_per_endpoint": {PRO_EDIT: None}}).status_code == 200
    assert main(["limits", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["max_outstanding_per_endpoint"] == {"value": {}, "source": "redis"}
    assert main(["budget", "--set", "12.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == client.get("/v1/budget").json()
    assert client.put("/v1/budget", {"budget_usd": None}).json()["budget_usd"] is None
    assert main(["budget"]) == 0 and "daily budget: none" in capsys.readouterr().out
    code = main(["budget", "--set", "1", "--clear"])
    assert code == 2 and capsys.readouterr().err.strip() == "error: give --set or --clear, not both"
