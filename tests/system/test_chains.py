"""Chains with real workers: a job whose edit input is another job's output (``falq:JOB_ID#N``).

One stack of this module's own with an append-only Redis, so a Redis restart keeps the records,
the children sets and the chain:done stream (as a production Redis with AOF does).
"""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from falq.shared.errors import InvalidInput
from falq.shared.settings import reset_settings
from falq.testing.stack import DevStack
from tests.conftest import BASELINE_EMULATOR, emulator_submissions, wait_for

EDIT = "fal-ai/qwen-image-2/edit"
FAST = {"FALQ_CHAIN_SWEEP_S": "1", "FALQ_CHAIN_CLAIM_IDLE_S": "2"}


@pytest.fixture(scope="module")
def aof_stack() -> Iterator[DevStack]:
    with DevStack(aof=True) as st:
        yield st


@pytest.fixture
def chain_stack(aof_stack: DevStack) -> Iterator[DevStack]:
    r = redis.Redis.from_url(aof_stack.redis.url)
    r.flushall()
    r.close()
    aof_stack.emu.reset()
    aof_stack.emu.configure(**{**BASELINE_EMULATOR, "tiny_images": True, "latency": "fixed:0.2"})
    aof_stack.extra_env.clear()
    aof_stack.extra_env.update(FAST)
    reset_settings()
    yield aof_stack
    aof_stack.stop_workers(kill=True)
    reset_settings()


def _falq(st: DevStack) -> Any:
    from falq.producers import Falq

    return Falq(st.settings())


def _final(falq: Any, job_id: str, timeout: float = 60) -> Any:
    return wait_for(lambda: (r := falq.store.get(job_id)).terminal and r, timeout=timeout, what=f"job {job_id} ends")


def _state(falq: Any, job_id: str) -> str:
    return str(falq.store.get(job_id).state)


def test_child_runs_on_the_parents_s3_copy(chain_stack: DevStack) -> None:
    falq = _falq(chain_stack)
    chain_stack.start_worker(concurrency=20)
    parent = falq.generate("a red fox in the snow", seed=3)
    child = falq.submit(EDIT, {"prompt": "make it autumn", "image_urls": [f"falq:{parent.id}#0"]})
    rec = child.record()
    assert rec.state in ("waiting", "queued", "submitting", "in_queue", "in_progress", "mirroring", "completed")
    assert rec.parents == [parent.id]
    done = _final(falq, child.id)
    assert done.state == "completed", done.errors
    p = falq.store.get(parent.id)
    assert p.state == "completed"
    # The child's input is a presigned URL of the parent's S3 copy; its original reference is kept.
    assert done.input_refs == [f"falq:{parent.id}#0"]
    [url] = done.input["image_urls"]
    assert p.outputs[0].key.split("/")[-1] in url and url.startswith(chain_stack.s3.url)
    # The emulator received exactly that URL, and it serves the parent's bytes.
    [sub] = emulator_submissions(chain_stack)[child.id]
    assert sub["input"]["image_urls"] == [url]
    body = httpx.get(url, timeout=10).content
    assert hashlib.sha256(body).hexdigest() == p.outputs[0].sha256
    assert done.timestamps["waiting"] <= done.timestamps["queued"]


def test_tree_of_one_generate_twenty_edits_one_edit_each(chain_stack: DevStack) -> None:
    falq = _falq(chain_stack)
    chain_stack.start_worker(concurrency=60)
    root = falq.generate("a lighthouse", seed=1)
    mids = [falq.submit(EDIT, {"prompt": f"variant {i}", "image_urls": [f"falq:{root.id}#0"]}) for i in range(20)]
    leaves = [falq.submit(EDIT, {"prompt": f"leaf {i}", "image_urls": [f"falq:{m.id}#0"]})
              for i, m in enumerate(mids)]
    assert all(_final(falq, j.id, 90).state == "completed" for j in [root, *mids, *leaves])
    subs = emulator_submissions(chain_stack)
    assert all(len(subs[j.id]) == 1 for j in [root, *mids, *leaves])  # never a second submission
    assert falq.chains.depth_of(falq.store.get(leaves[0].id)) == 2


def test_failed_parent_fails_children_and_retry_lets_them_go_on(chain_stack: DevStack) -> None:
    falq = _falq(chain_stack)
    # The parent is refused at submit (nothing created at fal): it fails for good at once.
    parent = falq.generate("a ship [[moderate:submit]]", seed=2)
    child = falq.submit(EDIT, {"prompt": "at night", "image_urls": [f"falq:{parent.id}#0"]})
    grandchild = falq.submit(EDIT, {"prompt": "in fog", "image_urls": [f"falq:{child.id}#0"]})
    chain_stack.start_worker(concurrency=20)
    assert _final(falq, parent.id).state == "failed"
    c = _final(falq, child.id)
    g = _final(falq, grandchild.id)
    assert c.state == "failed" and c.error.type == "parent_failed" and parent.id in c.error.message
    assert "content checker" in c.error.message
    assert g.state == "failed" and g.error.type == "parent_failed" and child.id in g.error.message
    assert child.id not in emulator_submissions(chain_stack)
    # Retrying the parent (fixed prompt via the same job is impossible; the emulator stops refusing)
    chain_stack.emu.configure(moderation_submit_marker="[[never]]")
    from falq.producers.admin import Admin

    [out] = Admin(falq).retry([parent.id])
    assert out.retried
    assert _state(falq, child.id) == "waiting" and _state(falq, grandchild.id) == "waiting"
    assert _final(falq, grandchild.id, 60).state == "completed"
    assert falq.store.get(child.id).state == "completed"


def test_moderated_parent_ends_child_failed_naming_it(chain_stack: DevStack) -> None:
    falq = _falq(chain_stack)
    chain_stack.start_worker(concurrency=20)
    parent = falq.generate("a portrait [[moderate]]", seed=4)
    child = falq.submit(EDIT, {"prompt": "smile", "image_urls": [f"falq:{parent.id}#0"]})
    p = _final(falq, parent.id)
    assert p.state == "failed" and p.moderation is not None
    c = _final(falq, child.id)
    assert c.state == "failed" and c.error.type == "parent_failed"
    assert parent.id in c.error.message and "content checker" in c.error.message
    assert child.id not in emulator_submissions(chain_stack)


def test_cancelled_parent_cancels_waiting_children(chain_stack: DevStack) -> None:
    falq = _falq(chain_stack)
    parent = falq.generate("a castle", seed=5)  # no worker yet: it stays queued
    child = falq.submit(EDIT, {"prompt": "in winter", "image_urls": [f"falq:{parent.id}#0"]})
    assert _state(falq, child.id) == "waiting"
    from falq.producers.admin import Admin

    assert Admin(falq).cancel(parent.id).outcome == "cancelled"
    chain_stack.start_worker(concurrency=10)
    c = _final(falq, child.id)
    assert c.state == "cancelled" and c.error is not None and parent.id in c.error.message
    assert not emulator_submissions(chain_stack)


def test_refused_at_enqueue_missing_parent_other_tenant_bad_index_and_nothing_enqueued(
        chain_stack: DevStack) -> None:
    falq = _falq(chain_stack)
    with pytest.raises(InvalidInput) as exc:
        falq.submit(EDIT, {"prompt": "x", "image_urls": ["falq:nope#0"]})
    assert exc.value.errors[0].field == "image_urls[0]" and "nope" in exc.value.errors[0].message
    with pytest.raises(InvalidInput) as exc:
        falq.submit(EDIT, {"prompt": "x", "image_urls": ["falq:#0"]})
    assert exc.value.errors[0].field.startswith("image_urls[0]") and "falq:JOB_ID#N" in exc.value.errors[0].message
    parent = falq.generate("one image", seed=1)
    with pytest.raises(InvalidInput) as exc:
        falq.submit(EDIT, {"prompt": "x", "image_urls": [f"falq:{parent.id}#1"]})
    assert "N must be below 1" in str(exc.value)
    # Another tenant's job is not visible: refused as missing.
    from falq.producers import Falq
    from falq.shared.tenants.store import Tenant, TenantStore

    TenantStore(falq.redis, prefix=falq.settings.key_prefix).put(Tenant(name="other"))
    other = Falq(chain_stack.settings(), tenant="other")
    with pytest.raises(InvalidInput) as exc:
        other.submit(EDIT, {"prompt": "x", "image_urls": [f"falq:{parent.id}#0"]})
    assert "same tenant" in str(exc.value)
    assert falq.store.counts()["waiting"] == 0 and sum(falq.store.counts().values()) == 1


def test_worker_sigkill_while_children_wait_loses_none(chain_stack: DevStack) -> None:
    falq = _falq(chain_stack)
    chain_stack.emu.configure(latency="fixed:2.0")
    first = chain_stack.start_worker(concurrency=20)
    parents = [falq.generate(f"p{i}", seed=i) for i in range(3)]
    children = [falq.submit(EDIT, {"prompt": f"c{i}", "image_urls": [f"falq:{p.id}#0"]})
                for i, p in enumerate(parents)]
    wait_for(lambda: all(_state(falq, p.id) in ("in_queue", "in_progress") for p in parents), 30,
             what="parents at fal")
    chain_stack.kill_worker(first, signal.SIGKILL)
    assert all(_state(falq, c.id) == "waiting" for c in children)
    chain_stack.emu.configure(latency="fixed:0.2")
    chain_stack.start_worker(concurrency=20)
    assert all(_final(falq, c.id, 90).state == "completed" for c in children)
    subs = emulator_submissions(chain_stack)
    assert all(len(subs[j.id]) == 1 for j in [*parents, *children])


def test_redis_restart_while_children_wait_loses_none(chain_stack: DevStack) -> None:
    falq = _falq(chain_stack)
    chain_stack.emu.configure(latency="fixed:1.5")
    chain_stack.start_worker(concurrency=20)
    parents = [falq.generate(f"r{i}", seed=i) for i in range(3)]
    children = [falq.submit(EDIT, {"prompt": f"rc{i}", "image_urls": [f"falq:{p.id}#0"]})
                for i, p in enumerate(parents)]
    time.sleep(0.5)
    chain_stack.redis.restart()  # SIGKILL; the AOF (appendfsync always) brings everything back
    assert all(_final(falq, c.id, 120).state == "completed" for c in children)
    assert all(falq.store.get(p.id).state == "completed" for p in parents)


def test_release_is_redriven_when_the_stream_entry_is_lost(chain_stack: DevStack) -> None:
    falq = _falq(chain_stack)
    parent = falq.generate("a tree", seed=9)
    chain_stack.start_worker(concurrency=10)
    assert _final(falq, parent.id).state == "completed"
    chain_stack.stop_workers(kill=True)
    # The link of a child whose parent already completed puts the parent on the end-of-job
    # stream again, for the chains group ...
    child = falq.submit(EDIT, {"prompt": "in spring", "image_urls": [f"falq:{parent.id}#0"]})
    again = [f for _, f in falq.redis.xrange(falq.store.keys.ended)
             if f[b"id"] == parent.id.encode() and f[b"ch"] == b"1"]
    assert len(again) == 1 and again[0][b"ar"] == again[0][b"cb"] == b"0"
    # ... and that entry is lost (as in a Redis restart without AOF of the stream).
    falq.redis.delete(falq.store.keys.ended)
    assert _state(falq, child.id) == "waiting"
    time.sleep(1.0)  # the sweep looks at children waiting for a while
    chain_stack.start_worker(concurrency=10)  # its sweep finds the child (FALQ_CHAIN_SWEEP_S=1)
    assert _final(falq, child.id, 60).state == "completed"
