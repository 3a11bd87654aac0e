"""The one end-of-job event ({p}:ended) against a real redis-server: the terminal save appends one
entry saying who has work; each consumer group reads and acknowledges on its own; the trim keeps
every entry a group still needs; entries an older release wrote to ``{p}:archive`` and
``{p}:chain:done`` are read by the same groups (a rolling upgrade)."""

from __future__ import annotations

import redis

from falq.shared.batches.chains import Chains
from falq.shared.jobs.ended import GroupReader, trim
from falq.shared.jobs.records import JobRecord
from falq.shared.jobs.store import JobStore
from falq.shared.keys import Keys
from falq.shared.settings import Settings

EP = "fal-ai/qwen-image-2/text-to-image"
K = Keys("falq")


def _job(store: JobStore, **kw: object) -> JobRecord:
    rec, _ = store.create(JobRecord.new(endpoint=EP, input={"prompt": "x"}, **kw))  # type: ignore[arg-type]
    return rec


def _entries(r: redis.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange(K.ended)]


def test_the_terminal_save_appends_one_entry_naming_who_has_work(r: redis.Redis) -> None:
    store = JobStore(r, archive=True)
    plain, hooked = _job(store), _job(store, callback_url="https://hooks.example/cb")
    store.update(plain.id, lambda rec: rec.walk_to("in_progress"))
    assert _entries(r) == []  # not terminal: nothing ended
    done = store.update(plain.id, lambda rec: rec.walk_to("completed"))
    ended = store.update(hooked.id, lambda rec: rec.move("failed"))
    assert _entries(r) == [
        {"id": plain.id, "v": str(done.version), "state": "completed", "ar": "1", "cb": "0", "ch": "0"},
        {"id": hooked.id, "v": str(ended.version), "state": "failed", "ar": "1", "cb": "1", "ch": "0"},
    ]
    # A later save of a terminal record is archived again; its callback is not due again.
    again = store.update(hooked.id, lambda rec: rec.metadata.__setitem__("note", "x"))
    assert _entries(r)[-1] == {"id": hooked.id, "v": str(again.version), "state": "failed", "ar": "1", "cb": "0",
                               "ch": "0"}
    # Without the catalogue, a job with no callback and no children appends nothing.
    bare = JobStore(r, archive=False)
    quiet = _job(bare)
    bare.update(quiet.id, lambda rec: rec.move("cancelled"))
    assert len(_entries(r)) == 3


def test_a_parent_with_children_is_marked_and_a_late_link_puts_it_on_again(r: redis.Redis) -> None:
    store = JobStore(r, archive=False)
    parent, late = _job(store), _job(store)
    r.sadd(K.children(parent.id), "child-1")
    store.update(parent.id, lambda rec: rec.walk_to("completed"))
    store.update(late.id, lambda rec: rec.move("failed"))
    assert [(e["id"], e["ch"]) for e in _entries(r)] == [(parent.id, "1")]  # late had no children yet
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    Chains(store, settings).link("child-2", [late.id])
    last = _entries(r)[-1]
    assert (last["id"], last["state"], last["ch"], last["ar"], last["cb"]) == (late.id, "failed", "1", "0", "0")


def test_each_group_reads_on_its_own_and_the_trim_keeps_what_any_still_needs(r: redis.Redis) -> None:
    store = JobStore(r, archive=True)
    ids = [_job(store).id for _ in range(4)]
    for job_id in ids:
        store.update(job_id, lambda rec: rec.walk_to("completed"))
    archivers = GroupReader(r, K, "archivers", "a1")
    callbacks = GroupReader(r, K, "callbacks", "c1")
    # Nothing is trimmed while a group this deployment needs has not even been created: the
    # trim creates it at the stream's start instead.
    assert trim(r, K, ["archivers", "callbacks", "chains"]) == 0
    assert {g["name"].decode() for g in r.xinfo_groups(K.ended)} == {"archivers", "callbacks", "chains"}
    got = archivers.read()
    assert [e.job_id for e in got] == ids and all(e.archive and not e.callback for e in got)
    archivers.ack(got)
    assert trim(r, K, ["archivers", "callbacks", "chains"]) == 0  # callbacks and chains have read nothing
    seen = callbacks.read()
    callbacks.ack(seen[:2])
    chains = GroupReader(r, K, "chains", "h1")
    chains.ack(chains.read())
    assert trim(r, K, ["archivers", "callbacks", "chains"]) == 2  # what all three are past
    assert r.xlen(K.ended) == 2
    # The two the callbacks consumer read and never acknowledged (it died) are taken over.
    other = GroupReader(r, K, "callbacks", "c2", claim_idle_ms=0)
    taken = other.claim_stale()
    assert [e.job_id for e in taken] == ids[2:]
    other.ack(taken)
    assert trim(r, K, ["archivers", "callbacks", "chains"]) == 2 and r.xlen(K.ended) == 0


def test_a_failed_pass_is_read_again_by_its_own_consumer_first(r: redis.Redis) -> None:
    store = JobStore(r, archive=True)
    first = _job(store)
    store.update(first.id, lambda rec: rec.move("failed"))
    reader = GroupReader(r, K, "archivers", "a1")
    assert [e.job_id for e in reader.read()] == [first.id]  # read, then the pass fails: no ack
    second = _job(store)
    store.update(second.id, lambda rec: rec.move("failed"))
    assert [e.job_id for e in reader.read()] == [first.id]  # its own pending entry first
    reader.ack(reader.read())
    assert [e.job_id for e in reader.read()] == [second.id]


def test_entries_an_older_release_wrote_are_read_by_the_same_groups(r: redis.Redis) -> None:
    """A rolling upgrade: saves of the older release still append to ``{p}:archive`` and
    ``{p}:chain:done``; the new consumers drain both beside ``{p}:ended``."""
    store = JobStore(r, archive=True)
    new = _job(store)
    store.update(new.id, lambda rec: rec.walk_to("completed"))
    r.xadd(K.archive, {"id": "old-job", "v": "7"})
    r.xadd(K.chain_done, {"parent": "old-parent", "state": "completed"})
    archivers = GroupReader(r, K, "archivers", "a1", legacy=K.archive)
    got = archivers.read()
    assert {(e.job_id, e.archive) for e in got} == {(new.id, True), ("old-job", True)}
    assert {e.version for e in got if e.job_id == "old-job"} == {"7"}
    archivers.ack(got)
    assert r.xpending(K.archive, "archivers")["pending"] == 0
    chains = GroupReader(r, K, "chains", "h1", legacy=K.chain_done)
    got = chains.read()
    old = [e for e in got if e.job_id == "old-parent"]
    assert len(old) == 1 and old[0].children and old[0].state == "completed"
    chains.ack(got)
    assert r.xlen(K.chain_done) == 0  # that stream had one group: its entries go once handled
