"""Corrupted and foreign messages on the broker queue, and a job record deleted under a running job.

Messages are pushed straight onto the Redis list kombu consumes (the queue's name), in
the envelope kombu's Redis transport writes, or as plain garbage. The worker must drop
each one, never unpickle anything, stay alive, and still run the normal job queued behind
them. A job whose record disappears while it runs is stopped cleanly and not recreated.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from falq.testing.stack import DevStack
from tests.conftest import wait_for

QUEUE = "falq.interactive"


class _Exploit:
    """Unpickling this creates a directory: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def envelope(body: bytes, *, task: str = "falq.job", content_type: str = "application/json",
             encoding: str = "utf-8", task_id: str | None = None, b64: bool = True) -> bytes:
    """A message as kombu's Redis transport stores it (Celery task protocol 2)."""
    tid = task_id or uuid.uuid4().hex
    return json.dumps({
        "body": base64.b64encode(body).decode() if b64 else body.decode("latin-1"),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": {"lang": "py", "task": task, "id": tid, "shadow": None, "eta": None, "expires": None,
                    "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
                    "root_id": tid, "parent_id": None, "argsrepr": "", "kwargsrepr": "", "origin": "test@garbage",
                    "ignore_result": None, "stamped_headers": None, "stamps": {}},
        "properties": {"correlation_id": tid, "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": QUEUE}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    }).encode()


def task_body(args: list[Any], kwargs: dict[str, Any] | None = None) -> bytes:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return json.dumps([args, kwargs or {}, embed]).encode()


def garbage(marker: Path) -> dict[str, bytes]:
    """Every kind of message the worker must survive, by name."""
    unknown_job = uuid.uuid4().hex
    return {
        "random-bytes": os.urandom(512),
        "not-json": b"{{{ this is not json",
        "json-not-celery": json.dumps({"hello": "world", "job": 1}).encode(),
        "json-array": b"[1, 2, 3]",
        "json-null": b"null",
        "envelope-no-headers": json.dumps({"body": "", "content-type": "application/json",
                                           "properties": {"delivery_tag": "x"}}).encode(),
        "pickle": envelope(pickle.dumps(([_Exploit(marker)], {}, {})), content_type="application/x-python-serialize",
                           encoding="binary"),
        "pickle-as-json": envelope(pickle.dumps(_Exploit(marker)), content_type="application/json"),
        "yaml": envelope(b"!!python/object/apply:os.system ['true']", content_type="application/x-yaml"),
        "unknown-job": envelope(task_body([unknown_job], {"lane": "interactive", "endpoint": ""}), task_id=unknown_job),
        "foreign-task": envelope(task_body(["rm -rf /"]), task="celery.contrib.evil.system"),
        "wrong-args": envelope(task_body([], {"nonsense": True})),
        "dict-job-id": envelope(task_body([{"$gt": ""}], {"lane": "interactive"})),
        "bad-base64": envelope(b"%%%not base64%%%", b64=False),
    }


#: Items kombu's own Redis transport cannot decode: each of these alone used to stop the worker.
UNDECODABLE = ("random-bytes", "not-json", "json-not-celery", "json-array", "json-null", "envelope-no-headers",
               "bad-base64")


class LogsSince:
    """The worker log text written after this object was made (log files are shared by the
    session's tests: worker N of every test appends to ``worker-N.log``)."""

    def __init__(self, stack: DevStack) -> None:
        self.stack = stack
        self.offsets = {p: p.stat().st_size for p in stack.workdir.glob("worker-*.log")}

    def __call__(self) -> str:
        parts = []
        for path in sorted(self.stack.workdir.glob("worker-*.log")):
            with path.open("rb") as f:
                f.seek(self.offsets.get(path, 0))
                parts.append(f.read().decode(errors="replace"))
        return "\n".join(parts)


def _queues_drained(r: redis.Redis) -> bool:
    return int(r.llen(QUEUE)) == 0 and int(r.hlen("unacked") or 0) == 0


@pytest.mark.timeout(120)
def test_garbage_on_the_queue_is_dropped_and_the_worker_keeps_working(clean_stack: DevStack, falq: Any,
                                                                      tmp_path: Path) -> None:
    marker = tmp_path / "pickle-was-executed"
    logs = LogsSince(clean_stack)
    worker = clean_stack.start_worker(concurrency=10, loglevel="INFO")
    warm = falq.generate("warm up").wait(60)  # the consumer is up before the garbage arrives
    assert warm.state == "completed"

    r = redis.Redis.from_url(clean_stack.redis.url)
    messages = garbage(marker)
    for message in messages.values():
        r.lpush(QUEUE, message)
    job = falq.generate("behind the garbage")  # queued after every bad message
    rec = job.wait(60)

    assert rec.state == "completed" and rec.attempts == 1, [e.message for e in rec.errors]
    assert worker.poll() is None, logs()[-3000:]
    assert not marker.exists(), "a pickle from the queue was executed"
    # nothing is stuck: the queue is empty and no bad message sits unacked to be redelivered
    wait_for(lambda: _queues_drained(r), 15, what="queue and unacked drained")
    time.sleep(2)  # a redelivered or re-published message would show up again here
    assert _queues_drained(r)
    # the unknown job's message did not create a record
    assert not r.keys("falq:job:*[^0-9a-f]*"), r.keys("falq:job:*")
    assert len(r.keys("falq:job:*")) == 2
    log = logs()
    # undecodable items are dropped by falq's transport (shared/engine/broker.py), each named
    dropped = [line for line in log.splitlines() if "falq.broker: dropped a" in line]
    assert len(dropped) == len(UNDECODABLE), dropped
    assert "Unrecoverable error" not in log and "Connection to broker lost" not in log
    # envelopes Celery refuses: pickle and YAML content, an unregistered task
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert "Refusing to deserialize untrusted content of type yaml" in log
    assert "unregistered task of type 'celery.contrib.evil.system'" in log
    assert "has no record" in log  # the unknown job id was noticed and dropped
    assert "crashed" not in log  # no step hit the task's catch-all
    # and the worker still works after all that
    again = falq.generate("after the garbage").wait(60)
    assert again.state == "completed" and worker.poll() is None
    r.close()


@pytest.mark.timeout(120)
def test_record_deleted_under_a_running_job(clean_stack: DevStack, falq: Any) -> None:
    clean_stack.emu.configure(latency="fixed:4")
    logs = LogsSince(clean_stack)
    worker = clean_stack.start_worker(concurrency=5, loglevel="INFO")
    job = falq.generate("deleted while it runs")
    wait_for(lambda: job.status() == "in_progress", 30, what="job in progress at fal")
    request_id = job.record().request_id
    r = redis.Redis.from_url(clean_stack.redis.url)
    key = f"falq:job:{job.id}"
    assert r.delete(key) == 1

    wait_for(lambda: f"job {job.id} was deleted while it ran" in logs(), 30,
             what="the worker to notice the deletion")
    time.sleep(1)
    assert not r.exists(key), "the deleted record was recreated"
    assert worker.poll() is None
    assert "crashed" not in logs()
    # nobody wants the result any more: the request was cancelled at fal, not left to be billed
    fal_side = {x["request_id"]: x for x in clean_stack.emu.requests()["requests"]}[request_id]
    assert fal_side["cancelled"] is True
    wait_for(lambda: _queues_drained(r), 15, what="the deleted job's message acked, not re-published")
    # the next job runs normally
    clean_stack.emu.configure(latency="fixed:0.2")
    rec = falq.generate("the next job").wait(60)
    assert rec.state == "completed"
    r.close()


@pytest.mark.parametrize(
    ("url", "ssl_cert_reqs"),
    [
        ("redis://127.0.0.1:6379/0", None),
        ("rediss://falq:pw@redis.internal:6380/0", "CERT_REQUIRED"),  # TLS on, certificate verified
        ("rediss://falq:pw@redis.internal:6380/0?ssl_cert_reqs=none", "CERT_NONE"),  # the URL decides
        ("rediss://falq:pw@redis.internal:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem", "CERT_REQUIRED"),
    ],
)
def test_hardened_transport_keeps_redis_tls(url: str, ssl_cert_reqs: str | None) -> None:
    """The replaced transport must not turn a rediss:// broker into plain TCP."""
    from falq.shared.engine.broker import Transport
    from falq.shared.engine.celery_app import make_app
    from falq.shared.settings import Settings

    conn = make_app(Settings(_env_file=None, redis_url=url)).connection_for_write()  # type: ignore[call-arg]
    assert isinstance(conn.transport, Transport)
    if ssl_cert_reqs is None:
        assert not conn.ssl
    else:
        assert conn.ssl["ssl_cert_reqs"].name == ssl_cert_reqs
    assert "pw" not in conn.as_uri()
