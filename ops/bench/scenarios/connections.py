"""Connections: the HTTP calls and new connections falq makes to fal per job, beside fal-client.

fal's live status stream sends an event only when something changes and a ``: ping``
comment about every 15 s, so a follower whose read timeout is shorter than that reconnects
every few seconds for every request. The emulator runs with those live defaults (15 s
heartbeats) and realistic latencies (5-60 s; quick: 5-15 s). falq: one worker; reference:
fal-client's ``subscribe``-style ``submit`` + ``get`` from one asyncio process
(:mod:`falq.ops.bench.falclient_script`). Both are counted by the emulator, per request: calls
by kind, and the distinct client connections (TCP source ports) that touched it.

Goal: at most one stream connection per request (plus real disconnects: none here).
"""

from __future__ import annotations

from typing import Any

from falq.ops.bench import references as ref
from falq.ops.bench.harness import Harness
from falq.ops.bench.model import REF_FAL_CLIENT, Goal, Row

NAME = "connections"


def _per_request(reqs: list[dict[str, Any]], ids: set[str]) -> dict[str, float]:
    mine = [r for r in reqs if r["request_id"] in ids]
    n = max(1, len(mine))
    calls = sum(sum(r.get("calls", {}).values()) for r in mine)
    streams = sum(r.get("calls", {}).get("stream", 0) for r in mine)
    polls = sum(r.get("calls", {}).get("status", 0) for r in mine)
    conns = sum(r.get("connections", 0) for r in mine)
    return {"calls": calls / n, "streams": streams / n, "polls": polls / n, "connections": conns / n,
            "requests": float(len(mine))}


def run(h: Harness) -> list[Row]:
    n = h.size("connections.jobs", 20, 100)
    latency = "uniform:5,15" if h.quick else "uniform:5,60"
    emulator = {"latency": latency, "stream_heartbeat_s": 15.0, "log_steps": 5, "concurrency": 0}
    note = f"{n} jobs, latency {latency.split(':')[1].replace(',', '-')} s, 15 s heartbeats" + (
        " (quick: scaled down)" if h.quick else "")

    h.reset(**emulator)
    falq = h.falq()
    ids = h.enqueue(n, "connections", lane="interactive")
    h.start_falq_workers(1, max(50, n), wait=False)
    h.wait_until(lambda: h.completed() >= n, 200, 0.5, f"{n} falq jobs")
    recs = [r for r in falq.store.get_many(ids) if r is not None]
    reqs = h.stack.emu.requests()["requests"]
    ours = _per_request(reqs, {r.request_id for r in recs if r.request_id})

    h.reset(**emulator)
    script = ref.fal_client_run(h, n, n, timeout=400)
    reqs = h.stack.emu.requests()["requests"]
    theirs = _per_request(reqs, {r["request_id"] for r in script["results"]})
    return [
        Row(NAME, "stream connections per job", "conn/job", ours["streams"], theirs["streams"], REF_FAL_CLIENT,
            Goal("falq", "<=", 1.0), note + "; reference polls, it opens no stream"),
        Row(NAME, "HTTP calls to fal per job", "calls/job", ours["calls"], theirs["calls"], REF_FAL_CLIENT, None,
            f"falq: submit + stream + result; fal-client: submit + {theirs['polls']:.0f} status polls + result"),
        Row(NAME, "new connections per job", "conn/job", ours["connections"], theirs["connections"],
            REF_FAL_CLIENT, None, "distinct client connections that touched each request"),
    ]
