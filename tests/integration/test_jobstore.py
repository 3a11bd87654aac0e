"""shared.jobstore in this process, against a real redis-server: create, CAS save, results, TTLs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from falq.shared.errors import JobNotFound
from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import CancelAsked, Conflict, JobStore

ENDPOINT = "fal-ai/qwen-image-2/text-to-image"
PREFIX = "falqtest"
TTL_S = 3600


@pytest.fixture
def r(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def store(r: redis.Redis) -> JobStore:
    return JobStore(r, prefix=PREFIX, ttl_s=TTL_S)


def _rec(prompt: str = "a red fox") -> JobRecord:
    return JobRecord.new(endpoint=ENDPOINT, input={"prompt": prompt})


def _members(r: redis.Redis, key: str) -> set[str]:
    return {m.decode() for m in r.zrange(key, 0, -1)}


# --- create ---------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_create_with_same_idempotency_key_returns_the_first_job(store: JobStore, r: redis.Redis) -> None:
    first, created = store.create(_rec("one"), idempotency_key="order-17")
    assert created and first.version == 1

    again, created_again = store.create(_rec("two"), idempotency_key="order-17")

    assert not created_again
    assert again.id == first.id and again.input == {"prompt": "one"}
    assert _members(r, f"{PREFIX}:state:queued") == {first.id}
    assert _members(r, f"{PREFIX}:created") == {first.id}
    assert len(list(r.scan_iter(f"{PREFIX}:job:*"))) == 1  # the loser left no record behind
    other, created_other = store.create(_rec("three"), idempotency_key="order-18")
    assert created_other and other.id != first.id


@pytest.mark.timeout(10)
def test_idempotency_key_of_a_gone_job_creates_a_new_one(store: JobStore, r: redis.Redis) -> None:
    first, _ = store.create(_rec("one"), idempotency_key="k")
    r.delete(store.job_key(first.id))  # expired or deleted

    second, created = store.create(_rec("two"), idempotency_key="k")

    assert created and second.id != first.id
    assert r.get(store.idem_key("k")) == second.id.encode()
    assert store.get(second.id).input == {"prompt": "two"}


@pytest.mark.timeout(10)
def test_create_of_an_existing_id_does_not_overwrite_it(store: JobStore) -> None:
    rec, _ = store.create(_rec("original"))
    store.update(rec.id, lambda x: x.move("submitting"))
    replay = JobRecord.new(endpoint=ENDPOINT, input={"prompt": "replayed"}, job_id=rec.id)

    store.create(replay)

    stored = store.get(rec.id)
    assert stored.state == "submitting" and stored.input == {"prompt": "original"} and stored.version == 2


# --- compare-and-set ------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_save_of_a_stale_copy_raises_conflict_and_writes_nothing(store: JobStore, r: redis.Redis) -> None:
    rec, _ = store.create(_rec())
    worker, producer = store.get(rec.id), store.get(rec.id)
    worker.move("submitting")
    worker.attempts = 1
    store.save(worker)
    assert worker.version == 2

    producer.move("cancelled")
    with pytest.raises(Conflict):
        store.save(producer)

    assert producer.version == 1  # left as read, so a reload-and-reapply starts clean
    stored = store.get(rec.id)
    assert stored.state == "submitting" and stored.attempts == 1 and stored.version == 2
    assert _members(r, f"{PREFIX}:state:cancelled") == set()
    assert _members(r, f"{PREFIX}:state:submitting") == {rec.id}
    assert _members(r, f"{PREFIX}:state:queued") == set()
    assert r.ttl(store.job_key(rec.id)) == -1


@pytest.mark.timeout(10)
def test_concurrent_updates_all_apply_through_cas_retries(store: JobStore) -> None:
    rec, _ = store.create(_rec())
    writers, rounds = 8, 10
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def bump(r: JobRecord) -> None:
        r.metadata["n"] = int(r.metadata.get("n", 0)) + 1

    def writer() -> None:
        try:
            start.wait()
            for _ in range(rounds):
                store.update(rec.id, bump, tries=500)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(8)

    assert not errors, errors
    stored = store.get(rec.id)
    assert stored.metadata["n"] == writers * rounds  # no lost update
    assert stored.version == 1 + writers * rounds


@pytest.mark.timeout(10)
def test_save_of_a_deleted_record_raises_job_not_found(store: JobStore, r: redis.Redis) -> None:
    rec, _ = store.create(_rec())
    copy = store.get(rec.id)
    r.delete(store.job_key(rec.id))

    copy.walk_to("in_queue")
    with pytest.raises(JobNotFound):
        store.save(copy)
    assert not r.exists(store.job_key(rec.id))  # not resurrected
    with pytest.raises(JobNotFound):
        store.get(rec.id)


# --- fal's output kept beside the record ----------------------------------------------------


@pytest.mark.timeout(10)
def test_save_load_and_drop_result(store: JobStore, r: redis.Redis) -> None:
    rec, _ = store.create(_rec())
    raw = b'{"images":[{"url":"https://fal.media/x.png"}],"seed":3}'
    assert store.load_result(rec.id) is None

    store.save_result(rec.id, raw)

    assert store.load_result(rec.id) == raw
    store.update(rec.id, lambda x: x.walk_to("mirroring"))  # a record save keeps the result
    assert store.load_result(rec.id) == raw
    assert store.get(rec.id).state == "mirroring"
    failed = store.get(rec.id)
    failed.move("failed")
    store.save(failed)  # a failed job keeps fal's result: `falq retry` mirrors it without paying again
    assert store.load_result(rec.id) == raw
    done = store.get(rec.id)
    done.walk_to("completed")  # as a retry that mirrors the kept result does
    store.save(done, drop_result=True)  # the images are in S3: the result goes in the same save
    assert store.load_result(rec.id) is None
    assert store.get(rec.id).state == "completed"  # the record itself stays


@pytest.mark.timeout(10)
def test_a_split_record_drops_its_input_field_and_the_result_in_one_terminal_save(
        store: JobStore, r: redis.Redis) -> None:
    rec, _ = store.create(_rec())
    store.save_result(rec.id, b'{"images":[]}')
    cur = store.get(rec.id)
    assert r.hexists(store.job_key(rec.id), "input")  # stored split while it runs
    cur.walk_to("completed")
    store.save(cur, drop_result=True)
    assert not r.hexists(store.job_key(rec.id), "input") and not r.hexists(store.job_key(rec.id), "result")
    assert store.get(rec.id).input == rec.input


@pytest.mark.timeout(10)
def test_save_result_of_a_missing_record_raises_and_leaves_no_orphan(store: JobStore, r: redis.Redis) -> None:
    with pytest.raises(JobNotFound):
        store.save_result("no-such-job", b"{}")
    assert not r.exists(store.job_key("no-such-job"))


# --- expiry ---------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_terminal_records_expire_and_non_terminal_ones_never(store: JobStore, r: redis.Redis) -> None:
    rec, _ = store.create(_rec(), idempotency_key="ttl-key")
    key, idem = store.job_key(rec.id), store.idem_key("ttl-key")
    assert r.ttl(key) == -1 and r.ttl(idem) == -1
    for state in ("submitting", "in_queue", "in_progress", "mirroring"):
        store.update(rec.id, lambda x, s=state: x.move(s))  # type: ignore[misc]
        assert r.ttl(key) == -1, state

    store.update(rec.id, lambda x: x.move("failed"))

    assert 0 < r.ttl(key) <= TTL_S
    assert 0 < r.ttl(idem) <= TTL_S  # the key expires with its job
    # A retried job (failed -> queued; completed is final) must not keep the expiry it had as a terminal one.
    store.update(rec.id, lambda x: x.move("queued"))
    assert r.ttl(key) == -1 and r.ttl(idem) == -1


@pytest.mark.timeout(10)
def test_terminal_record_is_gone_after_its_ttl(r: redis.Redis) -> None:
    store = JobStore(r, prefix=PREFIX, ttl_s=1)
    rec, _ = store.create(_rec())
    store.update(rec.id, lambda x: x.move("failed"))
    assert store.exists(rec.id)

    time.sleep(1.5)

    assert not store.exists(rec.id)
    with pytest.raises(JobNotFound):
        store.get(rec.id)
    assert store.find("failed") == []  # the dangling index entry is pruned on the way
    assert _members(r, f"{PREFIX}:state:failed") == set()


@pytest.mark.timeout(10)
def test_restore_takes_only_a_finished_job(store: JobStore, r: redis.Redis) -> None:
    # Only terminal records carry a TTL, so a save persists a record only when it leaves a
    # terminal state: a restored (expiring) record must be a terminal one.
    live = _rec()
    with pytest.raises(ValueError, match="finished job"):
        store.restore(live, ttl_s=60)
    assert not store.exists(live.id)
    done = _rec()
    done.walk_to("failed")
    assert store.restore(done, ttl_s=60) == 1
    assert 0 < r.ttl(store.job_key(done.id)) <= 60
    store.update(done.id, lambda x: x.start_over("queued"))  # the retry: the record is live again
    assert r.ttl(store.job_key(done.id)) == -1


# --- a save whose reply was lost -------------------------------------------------------------


class _ReplyDropper:
    """A TCP proxy to Redis that, once armed, closes the connection instead of passing on the
    reply to the next command naming ``marker``: the command ran, its answer never arrived
    (what a Redis restart or failover does to a client mid-call)."""

    def __init__(self, upstream: str, marker: bytes) -> None:
        import socket

        host, port = upstream.rsplit("//", 1)[1].split("/")[0].split(":")
        self.upstream = (host, int(port))
        self.marker = marker
        self.armed = False
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: object, server: object) -> None:
        import socket

        assert isinstance(client, socket.socket) and isinstance(server, socket.socket)
        try:
            while True:
                data = client.recv(1 << 16)
                if not data:
                    return
                drop = self.armed and self.marker in data
                server.sendall(data)
                reply = server.recv(1 << 16)  # redis-py sends one command and reads its reply
                if drop:
                    self.armed = False
                    self.dropped += 1
                    return
                client.sendall(reply)
        except OSError:
            return
        finally:
            client.close()
            server.close()


@pytest.mark.timeout(20)
def test_a_save_resent_after_its_reply_was_lost_is_not_a_conflict(redis_server: str) -> None:
    """redis-py re-sends a command whose connection dropped before the reply; a save the
    server already applied must answer "saved", or the caller's change is applied twice
    (the chaos run's "1 submission > 0 attempts": an attempt given back twice)."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    store = JobStore(client, prefix=PREFIX, ttl_s=TTL_S)
    rec, _ = store.create(_rec())
    proxy = _ReplyDropper(redis_server, marker=b"EVALSHA")
    via_proxy = redis.Redis(host="127.0.0.1", port=proxy.port, retry_on_error=[redis.ConnectionError],
                            retry=redis.retry.Retry(redis.backoff.NoBackoff(), retries=3))
    flaky = JobStore(via_proxy, prefix=PREFIX, ttl_s=TTL_S)
    warm, _ = store.create(_rec("loads the save script into Redis"))
    flaky.save(warm)  # EVALSHA answered NOSCRIPT, SCRIPT LOAD, EVALSHA: the script is in
    rec = flaky.get(rec.id)
    rec.attempts += 1
    proxy.armed = True
    flaky.save(rec)  # the first EVALSHA runs, its reply is dropped, redis-py sends it again
    assert proxy.dropped == 1
    saved = store.get(rec.id)
    assert saved.attempts == 1 and saved.version == rec.version == 2
    # A real concurrent change is still a conflict.
    other = store.get(rec.id)
    other.attempts += 5
    store.save(other)
    rec.attempts += 1
    with pytest.raises(Conflict):
        flaky.save(rec)
    via_proxy.close()
    client.close()


# --- the record split: the input written once, older releases' whole records ------------------


def _input_writes(r: redis.Redis, job_key: str, act: Callable[[], None]) -> list[str]:
    """The HSETs of ``job_key``'s ``input`` field while ``act`` runs, as Redis's MONITOR saw
    them (commands run inside scripts included)."""
    seen: list[str] = []
    ready = threading.Event()

    def watch() -> None:
        with r.monitor() as m:
            ready.set()
            for cmd in m.listen():
                line = cmd["command"]
                if line == "ECHO monitor-done":
                    return
                if line.startswith(f"HSET {job_key} ") and " input {" in line:
                    seen.append(line)

    t = threading.Thread(target=watch)
    t.start()
    ready.wait(5)
    time.sleep(0.1)
    act()
    r.echo("monitor-done")
    t.join(5)
    return seen


@pytest.mark.timeout(20)
def test_the_input_is_written_once_and_again_only_when_it_changes(store: JobStore, r: redis.Redis) -> None:
    rec = _rec("a fox in the snow")
    key = store.job_key(rec.id)
    running: dict[str, bytes | None] = {}

    def walk() -> None:
        made, _ = store.create(rec)
        for state in ("submitting", "in_queue", "in_progress", "mirroring"):
            cur = store.get(made.id)
            cur.move(state)  # type: ignore[arg-type]
            store.save(cur)
        cur = store.get(made.id)
        cur.input["image_urls"] = ["https://example.com/a.png"]  # what a chain's release does
        store.save(cur)
        running["doc"], running["input"] = r.hmget(key, "doc", "input")
        cur = store.get(made.id)
        cur.move("completed")
        store.save(cur)

    writes = _input_writes(r, key, walk)
    assert len(writes) == 2, writes  # the create, and the one save that changed it
    assert "input" not in json.loads(running["doc"] or b"")  # the other saves write only the rest
    assert json.loads(running["input"] or b"") == {"prompt": "a fox in the snow",
                                                   "image_urls": ["https://example.com/a.png"]}
    # The terminal save writes it whole, the form a finished record is kept in.
    assert not r.hexists(key, "input")
    final = store.get(rec.id)
    assert final.state == "completed" and final.version == 7
    assert JobRecord.model_validate_json(r.hget(key, "doc") or b"").input == final.input == {
        "prompt": "a fox in the snow", "image_urls": ["https://example.com/a.png"]}
    final.metadata["seen"] = "yes"  # a later save of the finished record (a note, a callback)
    store.save(final)
    assert not r.hexists(key, "input") and store.get(rec.id).input == final.input  # still whole


@pytest.mark.timeout(10)
def test_a_record_an_older_release_stored_whole_is_read_and_saved_whole(store: JobStore, r: redis.Redis) -> None:
    made, _ = store.create(_rec("made before the upgrade"))
    key = store.job_key(made.id)
    # The hash as the previous release wrote it: the whole record in doc, no input field.
    whole = JobRecord.model_validate_json(
        json.dumps({**json.loads(r.hget(key, "doc") or b""), "input": made.input}))
    r.hdel(key, "input")
    r.hset(key, "doc", whole.model_dump_json())

    rec = store.get(made.id)
    assert rec.input == {"prompt": "made before the upgrade"}
    rec.move("submitting")
    rec.input["seed"] = 7
    store.save(rec)

    assert not r.hexists(key, "input")  # kept whole, as the older release reads it
    as_old_release_reads_it = JobRecord.model_validate_json(r.hget(key, "doc") or b"")
    assert as_old_release_reads_it.state == "submitting"
    assert as_old_release_reads_it.input == {"prompt": "made before the upgrade", "seed": 7}
    assert store.get(made.id).input == as_old_release_reads_it.input
    assert store.get_many([made.id])[0] == store.get(made.id)


@pytest.mark.timeout(20)
def test_a_finished_split_record_takes_no_more_memory_than_a_whole_one(store: JobStore, r: redis.Redis) -> None:
    """Issue 24's bound: Redis memory per finished job not above what the whole record took
    (a split record kept one hash field more: up to about 150 bytes more, by allocation sizes)."""
    split, whole = 0, 0
    for i in range(50):
        made, _ = store.create(JobRecord.new(endpoint=ENDPOINT, input={
            "prompt": f"a red fox in the snow at dawn, cinematic light, {i}", "image_size": "square_hd", "seed": i}))
        for state in ("submitting", "in_queue", "in_progress", "mirroring", "completed"):
            cur = store.get(made.id)
            cur.move(state)  # type: ignore[arg-type]
            store.save(cur)
        key = store.job_key(made.id)
        split += int(r.memory_usage(key) or 0)
        finished = store.get(made.id)
        r.hdel(key, "input")
        r.hset(key, "doc", finished.model_dump_json())  # the same record as an older release stored it
        whole += int(r.memory_usage(key) or 0)
    assert 0 < split <= whole, (split / 50, whole / 50)


def test_the_crash_streak_lives_on_the_record_and_never_makes_one(store: JobStore, r: redis.Redis) -> None:
    """A crashed step counts on the record (read with it by a step's first round trip); the
    count of a job whose record is gone writes nothing (no partial record without a TTL)."""
    from falq.shared.jobs.store import crash_streak

    rec, _ = store.create(_rec())
    assert store.count_crash(rec.id) == 1 and store.count_crash(rec.id) == 2
    pipe = r.pipeline(transaction=False)
    store.get_queued(pipe, rec.id)
    (row,) = pipe.execute()
    assert store.record_of(rec.id, row).id == rec.id and crash_streak(row) == 2
    store.end_crash_streak(rec.id)
    pipe = r.pipeline(transaction=False)
    store.get_queued(pipe, rec.id)
    assert crash_streak(pipe.execute()[0]) == 0
    assert store.count_crash("gone") is None and not r.exists(store.job_key("gone"))


def test_a_save_unless_cancelled_writes_nothing_once_a_cancel_was_asked(store: JobStore, r: redis.Redis) -> None:
    """A job's completing save asks for a cancel in its own script: none asked, it saves as any
    save; one asked, it writes nothing (record, indexes, end-of-job entry) and says so."""
    def mirroring() -> JobRecord:
        rec, _ = store.create(_rec())
        for state in ("submitting", "in_queue", "mirroring"):
            rec.move(state)
        store.save(rec)
        return rec

    plain = mirroring()
    plain.move("completed")
    store.save(plain, unless_cancelled=True)
    assert store.get(plain.id).state == "completed"

    rec = mirroring()
    store.request_cancel(rec.id)
    ended_before = r.xlen(f"{PREFIX}:ended")
    rec.move("completed")
    with pytest.raises(CancelAsked):
        store.save(rec, unless_cancelled=True)
    assert rec.version == 2  # left as read
    stored = store.get(rec.id)
    assert stored.state == "mirroring" and stored.version == 2
    rec = stored
    assert _members(r, f"{PREFIX}:state:completed") == {plain.id}
    assert r.xlen(f"{PREFIX}:ended") == ended_before
    rec.move("cancelled")
    store.save(rec)  # an ordinary save is not stopped by the cancel it writes down
    assert store.get(rec.id).state == "cancelled"
