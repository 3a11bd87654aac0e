"""The soak's Redis audit (falq.ops.soak.audit_keys) against a real redis-server: a per-job key
without a TTL is a problem, one with a TTL is not, and one that expired between SCAN and TTL
(TTL answers -2) is neither counted nor reported as a key without a TTL."""

from __future__ import annotations

import uuid

import redis

from falq.ops.soak import audit_keys, tally_ttl


def _blank() -> dict[str, object]:
    return {"count": 1, "type": "", "ttl": 0, "no_ttl": 0, "max_ttl": 0, "keys": ["k"]}


def test_a_key_gone_between_scan_and_ttl_is_not_a_key_without_ttl() -> None:
    info = _blank()
    tally_ttl(info, "none", -2)
    assert info["no_ttl"] == 0 and info["ttl"] == 0 and info["count"] == 0


def test_minus_one_is_a_key_without_ttl() -> None:
    info = _blank()
    tally_ttl(info, "string", -1)
    assert info["no_ttl"] == 1 and info["type"] == "string"


def test_audit_reports_only_per_job_keys_without_ttl(r: redis.Redis) -> None:
    with_ttl, without = uuid.uuid4().hex, uuid.uuid4().hex
    r.set(f"falq:seen:{with_ttl}", "1", ex=600)
    r.set(f"falq:seen:{without}", "1")
    _, problems = audit_keys(r, "falq", 3600)
    assert problems == ["1 sampled falq:seen:{id} keys (of 2) have no TTL"], problems
    r.delete(f"falq:seen:{without}")
    _, problems = audit_keys(r, "falq", 3600)
    assert problems == [], problems
