"""Per-job callbacks that are never lost: the Redis outbox, written with the terminal state.

* unit (a bare redis-server): the save that makes a job with a ``callback_url`` terminal
  appends its end-of-job entry -- that save and no other -- and the sender enters it in
  ``{p}:outbox`` from there, once per outcome; claims are exclusive and lapse; a
  stale claim cannot finish; tries are logged (capped, TTL of the record); redelivery;
* on the stack, with real workers: a receiver failing the first tries gets exactly one
  accepted delivery, every try logged and all with one ``X-Falq-Delivery-Id``; a worker
  SIGKILLed in the middle of a delivery leaves it to another worker -- a per-job callback
  and a gateway ``fal_webhook`` alike (one outbox, one sender); ``falq callbacks
  pending`` shows an undelivered callback and ``falq callbacks redeliver --failed`` sends
  the failed ones again.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis

from falq.shared.callbacks.outbox import LOG_CAP, Outbox
from falq.shared.errors import InvalidInput, JobNotFound
from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import Conflict, JobStore
from falq.shared.settings import Settings, reset_settings
from falq.testing.stack import DevStack
from falq.workers.callbacks.sender import CallbackSender
from tests.conftest import wait_for

T2I = "fal-ai/qwen-image-2/text-to-image"


# --- a receiver ------------------------------------------------------------------------------------


class Receiver:
    """A local HTTP server: answers ``503`` to the first ``fail_first`` POSTs (all while
    ``failing``), holds POSTs while ``hold`` is clear, then answers ``204``."""

    def __init__(self) -> None:
        self.hits: list[tuple[float, dict[str, str], bytes]] = []
        self.fail_first = 0
        self.failing = False
        self.hold = threading.Event()
        self.hold.set()
        self.held = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.hits.append((time.time(), {k.lower(): v for k, v in self.headers.items()}, body))
                if not outer.hold.is_set():
                    outer.held.set()
                    outer.hold.wait(120)
                    return  # the sender is gone by now: answer nothing
                if outer.failing or outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(503)
                else:
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> set[str]:
        return {h["x-falq-delivery-id"] for _, h, _ in self.hits}

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()


# --- unit: the outbox against a redis-server ----------------------------------------------------------


@pytest.fixture
def store(redis_server: str) -> Iterator[JobStore]:
    r = redis.Redis.from_url(redis_server)
    yield JobStore(r, prefix=f"t{uuid.uuid4().hex[:8]}", ttl_s=3600)
    r.close()


def _job(store: JobStore, callback_url: str | None = "https://hooks.example/cb") -> JobRecord:
    rec, _ = store.create(JobRecord.new(endpoint=T2I, input={"prompt": "x"}, callback_url=callback_url))
    return rec


def _score(store: JobStore, job_id: str) -> float | None:
    return store.r.zscore(store.keys.outbox, job_id)


def _ended_for_callbacks(store: JobStore, job_id: str) -> list[dict[bytes, bytes]]:
    """The end-of-job entries of ``job_id`` that carry a callback."""
    return [f for _, f in store.r.xrange(store.keys.ended) if f[b"id"] == job_id.encode() and f[b"cb"] == b"1"]


def _schedule(store: JobStore) -> int:
    """What every worker's sender does with new end-of-job entries (group ``callbacks``)."""
    with httpx.Client() as http:
        return CallbackSender(store, Settings(_env_file=None), http).schedule_ended()  # type: ignore[call-arg]


def _end(store: JobStore, job_id: str) -> None:
    """The job completes and the senders read its end (the outbox entry exists from here on)."""
    store.update(job_id, lambda r: r.walk_to("completed"))
    _schedule(store)


def test_the_terminal_save_is_what_makes_the_callback_pending(store: JobStore) -> None:
    rec = _job(store)
    store.update(rec.id, lambda r: r.walk_to("in_progress"))
    assert _ended_for_callbacks(store, rec.id) == []  # not terminal: no callback yet

    stale = store.get(rec.id)
    store.update(rec.id, lambda r: r.logs.append("a concurrent write"))
    stale.walk_to("completed")
    with pytest.raises(Conflict):
        store.save(stale)
    assert _ended_for_callbacks(store, rec.id) == []  # a save that did not happen appends nothing

    done = store.update(rec.id, lambda r: r.walk_to("completed"))
    [entry] = _ended_for_callbacks(store, rec.id)  # in the save's own script
    assert int(entry[b"v"]) == done.version and entry[b"state"] == b"completed"
    assert _score(store, rec.id) is None  # the sender enters it in the outbox
    assert _schedule(store) == 1
    assert _score(store, rec.id) == pytest.approx(done.updated_at, abs=1.0)
    cb_version, tries = store.r.hmget(store.job_key(rec.id), "cb_version", "cb_tries")
    assert int(cb_version) == done.version and int(tries) == 0
    assert Outbox(store).entry(rec.id).delivery_id == f"{rec.id}:{done.version}"  # type: ignore[union-attr]
    # The entry read again (a sender killed before acknowledging it) enters nothing again.
    store.r.zrem(store.keys.outbox, rec.id)
    assert Outbox(store).schedule(rec.id, str(done.version), time.time()) == 0
    assert _score(store, rec.id) is None

    # Later saves of the terminal record (the callback outcome, fal_webhook ...) enter nothing again.
    store.update(rec.id, lambda r: r.metadata.__setitem__("callback", {"delivered": True}))
    assert len(_ended_for_callbacks(store, rec.id)) == 1
    assert _schedule(store) == 0 and _score(store, rec.id) is None

    # A job without a callback_url is never entered; a deleted record saves nothing.
    plain = _job(store, callback_url=None)
    store.update(plain.id, lambda r: r.move("failed"))
    assert _ended_for_callbacks(store, plain.id) == []
    gone = _job(store)
    doomed = store.get(gone.id)
    store.r.delete(store.job_key(gone.id))
    doomed.move("cancelled")
    with pytest.raises(JobNotFound):
        store.save(doomed)
    assert _ended_for_callbacks(store, gone.id) == []
    _schedule(store)
    assert store.r.zcard(store.keys.outbox) == 0


def test_a_retried_job_that_ends_again_gets_a_new_delivery_id(store: JobStore) -> None:
    rec = _job(store)
    first = store.update(rec.id, lambda r: r.move("failed"))
    _schedule(store)
    outbox = Outbox(store)
    store.r.zadd(store.keys.outbox_failed, {rec.id: time.time()})
    store.r.zrem(store.keys.outbox, rec.id)
    store.update(rec.id, lambda r: r.move("queued"))
    again = store.update(rec.id, lambda r: r.walk_to("completed"))
    assert _schedule(store) == 1
    entry = outbox.entry(rec.id)
    assert entry is not None and entry.delivery_id == f"{rec.id}:{again.version}" != f"{rec.id}:{first.version}"
    assert store.r.zscore(store.keys.outbox_failed, rec.id) is None  # the new outcome is pending, not failed
    assert _score(store, rec.id) is not None


def test_claims_are_exclusive_lapse_and_a_lapsed_claim_cannot_finish(store: JobStore) -> None:
    rec = _job(store)
    _end(store, rec.id)
    outbox = Outbox(store)
    now = time.time() + 1
    [a] = outbox.claim(limit=10, lease_s=30, now=now)
    assert a.job_id == rec.id
    assert outbox.claim(limit=10, lease_s=30, now=now) == []  # a second worker finds nothing due
    assert outbox.claim(limit=10, lease_s=30, now=now + 29) == []
    [b] = outbox.claim(limit=10, lease_s=30, now=now + 31)  # the first claim lapsed (its worker died)
    assert b.token != a.token

    assert outbox.finish(a, "done", attempt={"try": 1, "status_code": 204}) is False  # too late: not applied
    assert _score(store, rec.id) is not None
    assert outbox.finish(b, "retry", attempt={"try": 1, "status_code": 503}, next_at=now + 100) is True
    assert _score(store, rec.id) == pytest.approx(now + 100)
    assert outbox.entry(rec.id).tries == 1  # type: ignore[union-attr]
    assert outbox.claim(limit=10, lease_s=30, now=now + 99) == []
    [c] = outbox.claim(limit=10, lease_s=30, now=now + 100)
    assert outbox.finish(c, "failed", attempt={"try": 2, "status_code": 503}) is True
    assert _score(store, rec.id) is None and store.r.zscore(store.keys.outbox_failed, rec.id) is not None
    assert [v.job_id for v in outbox.failed()] == [rec.id] and outbox.pending() == []

    # every try is logged, the lapsed one too; the log expires with the record
    assert [t["status_code"] for t in outbox.log(rec.id)] == [204, 503, 503]
    assert 0 < store.r.ttl(store.keys.delivery(rec.id)) <= 3600

    delivery_id = outbox.entry(rec.id).delivery_id  # type: ignore[union-attr]
    assert outbox.redeliver(rec.id) is True
    [view] = outbox.pending()
    assert view.job_id == rec.id and view.tries == 0 and view.delivery_id == delivery_id
    assert outbox.failed() == []


def test_the_delivery_log_is_capped_and_entries_of_gone_records_are_pruned(store: JobStore) -> None:
    rec = _job(store)
    _end(store, rec.id)
    outbox = Outbox(store)
    for n in range(LOG_CAP + 5):
        [claim] = outbox.claim(limit=1, lease_s=30, now=time.time() + n)
        outbox.finish(claim, "retry", attempt={"try": n + 1}, next_at=0)
    assert [t["try"] for t in outbox.log(rec.id)] == list(range(6, LOG_CAP + 6))
    store.r.delete(store.job_key(rec.id))
    assert outbox.pending() == [] and _score(store, rec.id) is None


def test_the_sender_marks_a_refused_target_failed_at_once(store: JobStore, receiver: Receiver) -> None:
    import httpx

    from falq.workers.callbacks.sender import CallbackSender

    rec = _job(store, callback_url=receiver.url)
    _end(store, rec.id)
    strict = Settings(_env_file=None, callback_allow_private=False)  # type: ignore[call-arg]
    with httpx.Client() as http:
        sender = CallbackSender(store, strict, http)
        assert sender.deliver_due() == 1
    assert receiver.hits == [] and _score(store, rec.id) is None
    [t] = Outbox(store).log(rec.id)
    assert t["final"] is True and t["status_code"] is None and "non-public address (127.0.0.1)" in t["error"]
    outcome = store.get(rec.id).metadata["callback"]
    assert outcome["status"] == "refused" and outcome["tries"] == 1 and outcome["delivered"] is False


def test_the_sender_gives_up_when_the_retry_window_ends(store: JobStore, receiver: Receiver) -> None:
    import httpx

    from falq.workers.callbacks.sender import CallbackSender

    receiver.failing = True
    rec = _job(store, callback_url=receiver.url)
    _end(store, rec.id)
    settings = Settings(_env_file=None, callback_allow_private=True, callback_retry_for_s=1.5)  # type: ignore[call-arg]
    with httpx.Client() as http:
        sender = CallbackSender(store, settings, http)
        wait_for(lambda: sender.deliver_due() and _score(store, rec.id) is None, 20, 0.05, "the window to end")
    tries = Outbox(store).log(rec.id)
    assert len(tries) >= 2 and all(t["status_code"] == 503 for t in tries)
    assert [t["final"] for t in tries] == [False] * (len(tries) - 1) + [True]
    assert tries[-1]["at"] - tries[0]["at"] <= 1.5 + 0.5  # the last try is at the window's end, not after
    assert store.r.zscore(store.keys.outbox_failed, rec.id) is not None
    outcome = store.get(rec.id).metadata["callback"]
    assert outcome == {**outcome, "delivered": False, "status": 503, "tries": len(tries)}


def test_a_job_with_callback_url_and_fal_webhook_gets_each_once_from_one_entry(store: JobStore,
                                                                           receiver: Receiver) -> None:
    """Both targets ride one outbox entry: the one that got through is not posted again while
    the other is retried; each has its own outcome; the fal target gets fal's shape."""
    import httpx

    from falq.workers.callbacks.sender import CallbackSender

    fal_rx = Receiver()
    try:
        fal_rx.fail_first = 1
        rec, _ = store.create(JobRecord.new(endpoint=T2I, input={"prompt": "x"}, callback_url=receiver.url))
        store.update(rec.id, lambda r: setattr(r, "fal_webhook", fal_rx.url))
        _end(store, rec.id)
        assert _score(store, rec.id) is not None  # a job with only a fal_webhook enters the outbox too
        settings = Settings(_env_file=None, callback_allow_private=True)  # type: ignore[call-arg]
        with httpx.Client() as http:
            sender = CallbackSender(store, settings, http, presign=lambda key: f"https://s3.example/{key}")
            assert sender.deliver_due() == 1
            assert len(receiver.hits) == 1 and len(fal_rx.hits) == 1 and _score(store, rec.id) is not None
            store.r.zadd(store.keys.outbox, {rec.id: 0})  # due again now
            assert sender.deliver_due() == 1
        assert len(receiver.hits) == 1 and len(fal_rx.hits) == 2 and _score(store, rec.id) is None
        body = json.loads(fal_rx.hits[-1][2])
        assert body["request_id"] == rec.id and body["status"] == "OK" and body["error"] is None
        assert json.loads(receiver.hits[0][2])["id"] == rec.id  # falq's record on the callback_url
        assert fal_rx.hits[-1][1]["user-agent"] == "falq-gateway/0.1"
        assert receiver.ids() == fal_rx.ids()  # one idempotency id per outcome, on every target
        tries = Outbox(store).log(rec.id)
        assert [(t["target"], t["status_code"], t["final"]) for t in tries] == [
            ("callback", 204, True), ("fal_webhook", 503, False), ("fal_webhook", 204, True)]
        meta = store.get(rec.id).metadata
        assert meta["callback"]["delivered"] is True and meta["callback"]["tries"] == 1
        assert meta["fal_webhook"]["delivered"] is True and meta["fal_webhook"]["tries"] == 2
    finally:
        fal_rx.close()


def test_admin_validates_redelivery(redis_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from falq.producers import Falq
    from falq.producers.admin import Admin

    tag = f"a{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FALQ_KEY_PREFIX", tag)
    settings = Settings(_env_file=None, redis_url=redis_server, key_prefix=tag)  # type: ignore[call-arg]
    admin = Admin(Falq(settings))
    store = admin.falq.store
    running = _job(store)
    plain = _job(store, callback_url=None)
    store.update(plain.id, lambda r: r.walk_to("completed"))
    with pytest.raises(InvalidInput) as exc:
        admin.redeliver([running.id, plain.id])
    assert [(e.field, e.message) for e in exc.value.errors] == [
        ("job_ids", f"{plain.id}: has no callback_url"),
        ("job_ids", f"{running.id}: has not ended yet (its callback is sent when it does)")]
    with pytest.raises(InvalidInput, match="job_ids: must name at least one job"):
        admin.redeliver([])
    with pytest.raises(JobNotFound):
        admin.redeliver(["nope"])
    with pytest.raises(InvalidInput) as exc:
        admin.callbacks_pending(since="1h", limit=0)
    assert [e.field for e in exc.value.errors] == ["limit", "since"]
    assert store.r.zcard(store.keys.outbox) == 0  # nothing was changed


# --- on the stack, with real workers ---------------------------------------------------------------


def _log(stack: DevStack, job_id: str) -> list[dict[str, Any]]:
    r = redis.Redis.from_url(stack.redis.url)
    try:
        return [json.loads(x) for x in r.lrange(f"falq:delivery:{job_id}", 0, -1)]
    finally:
        r.close()


@pytest.mark.timeout(120)
def test_a_failing_receiver_gets_one_accepted_delivery_and_every_try_is_logged(
        clean_stack: DevStack, receiver: Receiver) -> None:
    from falq.producers import Falq

    receiver.fail_first = 3
    clean_stack.start_worker(concurrency=5)
    falq = Falq(clean_stack.settings())
    rec = falq.generate("call me back", callback_url=receiver.url).wait(60)
    assert rec.state == "completed"
    outcome = wait_for(lambda: falq.job(rec.id).record().metadata.get("callback"), 40, what="the outcome")
    assert outcome["delivered"] is True and outcome["status"] == 204 and outcome["tries"] == 4
    time.sleep(1.5)  # nothing more arrives after the accepted one
    assert len(receiver.hits) == 4
    assert receiver.ids() == {outcome["delivery_id"]} and outcome["delivery_id"].startswith(f"{rec.id}:")
    tries = _log(clean_stack, rec.id)
    assert [t["status_code"] for t in tries] == [503, 503, 503, 204]
    assert [t["try"] for t in tries] == [1, 2, 3, 4]
    assert [t["final"] for t in tries] == [False, False, False, True] and tries[-1]["delivered"] is True
    assert {t["delivery_id"] for t in tries} == {outcome["delivery_id"]}
    assert all(t["next_at"] >= t["at"] for t in tries[:-1])
    for (at, _, _), t in zip(receiver.hits, tries, strict=True):  # each try was logged as it happened
        assert abs(at - t["at"]) < 2


@pytest.mark.timeout(180)
def test_a_worker_killed_during_a_delivery_leaves_it_to_another_worker(
        clean_stack: DevStack, receiver: Receiver) -> None:
    from falq.producers import Falq
    from falq.workers.callbacks.sender import LEASE_S

    receiver.hold.clear()  # the first POST hangs: the worker is killed while it waits
    first = clean_stack.start_worker(concurrency=5)
    falq = Falq(clean_stack.settings())
    rec = falq.generate("do not lose me", callback_url=receiver.url).wait(60)
    assert rec.state == "completed"
    assert receiver.held.wait(30), "the delivery never started"
    killed_at = time.time()
    clean_stack.kill_worker(first)
    receiver.hold.set()
    assert falq.job(rec.id).record().metadata.get("callback") is None  # the dead worker never recorded it

    clean_stack.start_worker(concurrency=5)
    outcome = wait_for(lambda: falq.job(rec.id).record().metadata.get("callback"), LEASE_S + 60,
                       what="the other worker's delivery")
    assert outcome["delivered"] is True and outcome["status"] == 204
    assert len(receiver.hits) == 2 and receiver.ids() == {outcome["delivery_id"]}
    [t] = _log(clean_stack, rec.id)  # the killed worker's try never ended; the second one did
    assert t["status_code"] == 204 and t["final"] is True and t["at"] > killed_at


@pytest.mark.timeout(180)
def test_a_worker_killed_before_delivering_a_gateway_fal_webhook_leaves_it_to_another_worker(
        clean_stack: DevStack, receiver: Receiver) -> None:
    """``?fal_webhook=`` on the gateway goes through the same outbox: the job's terminal save
    enters it; the worker that finished the job is SIGKILLed with the webhook POST in flight;
    another worker delivers fal's payload."""
    import httpx

    from falq.gateway.server import GatewayServer
    from falq.producers import Falq
    from falq.workers.callbacks.sender import LEASE_S

    key = "gw-key-0123456789"
    receiver.hold.clear()  # the first POST hangs: the worker is killed while it waits
    first = clean_stack.start_worker(concurrency=5)
    falq = Falq(clean_stack.settings())
    with GatewayServer(clean_stack.settings(), api_keys=[key],
                       fal_jwks_url=f"{clean_stack.emu.url}/.well-known/jwks.json") as gw:
        resp = httpx.post(f"{gw.url}/{T2I}", params={"fal_webhook": receiver.url}, json={"prompt": "hook me"},
                          headers={"Authorization": f"Key {key}"}, timeout=30)
        assert resp.status_code == 200, resp.text
    job_id = resp.json()["request_id"]  # the gateway is gone too: nothing of it is needed any more
    rec = falq.job(job_id).wait(60)
    assert rec.state == "completed" and rec.fal_webhook == receiver.url and rec.callback_url is None
    assert receiver.held.wait(30), "the delivery never started"
    killed_at = time.time()
    clean_stack.kill_worker(first)
    receiver.hold.set()
    assert falq.job(job_id).record().metadata.get("fal_webhook") is None  # the dead worker never recorded it

    clean_stack.start_worker(concurrency=5)
    outcome = wait_for(lambda: falq.job(job_id).record().metadata.get("fal_webhook"), LEASE_S + 60,
                       what="the other worker's delivery")
    assert outcome["delivered"] is True and outcome["status"] == 204
    assert len(receiver.hits) == 2 and receiver.ids() == {outcome["delivery_id"]}
    body = json.loads(receiver.hits[-1][2])  # fal's webhook shape, presigned S3 URLs that work
    assert body["request_id"] == body["gateway_request_id"] == job_id and body["status"] == "OK"
    assert httpx.get(body["payload"]["images"][0]["url"], timeout=30).status_code == 200
    [t] = _log(clean_stack, job_id)
    assert t["target"] == "fal_webhook" and t["status_code"] == 204 and t["at"] > killed_at


@pytest.mark.timeout(120)
def test_cli_lists_pending_callbacks_and_redelivers_failed_ones(
        clean_stack: DevStack, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from falq.cli.main import main
    from falq.producers import Falq

    for name, value in clean_stack.env().items():
        monkeypatch.setenv(name, value)
    reset_settings()
    receiver.failing = True
    clean_stack.start_worker(concurrency=5, env={"FALQ_CALLBACK_RETRY_FOR_S": "4"})
    falq = Falq(clean_stack.settings())
    rec = falq.generate("nobody home", callback_url=receiver.url).wait(60)
    assert rec.state == "completed"

    def pending(*extra: str) -> list[dict[str, Any]]:
        capsys.readouterr()
        assert main(["callbacks", "pending", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    listed = wait_for(lambda: [v for v in pending() if v["job_id"] == rec.id and v["tries"] >= 1], 10,
                      0.05, "the undelivered callback listed")
    [view] = listed
    assert view["status"] == "pending" and view["last"]["status_code"] == 503 and view["url_host"] == "127.0.0.1"
    assert view["next_at"] > view["last"]["at"] and view["delivery_id"].startswith(f"{rec.id}:")
    capsys.readouterr()
    assert main(["callbacks", "pending"]) == 0
    out = capsys.readouterr().out
    assert rec.id in out and "503 at" in out

    failed = wait_for(lambda: falq.job(rec.id).record().metadata.get("callback"), 20, what="the callback to fail")
    assert failed["delivered"] is False and failed["status"] == 503
    assert pending() == []
    [gave_up] = pending("--failed")
    assert gave_up["job_id"] == rec.id and gave_up["status"] == "failed" and gave_up["tries"] == failed["tries"]
    assert main(["callbacks", "log", rec.id]) == 0 and "503" in capsys.readouterr().out

    receiver.failing = False
    hits_before = len(receiver.hits)
    capsys.readouterr()
    assert main(["callbacks", "redeliver", "--failed"]) == 0
    assert f"{rec.id}: queued again (delivery id {view['delivery_id']})" in capsys.readouterr().out
    wait_for(lambda: falq.job(rec.id).record().metadata["callback"]["delivered"], 20, what="the redelivery")
    assert len(receiver.hits) == hits_before + 1 and receiver.ids() == {view["delivery_id"]}
    assert pending() == [] and pending("--failed") == []
    assert main(["callbacks", "redeliver", "--failed"]) == 0  # nothing left to redeliver
    assert main(["callbacks", "redeliver", rec.id, "--failed"]) == 2
    reset_settings()
