"""The job state machine (falq.shared.jobs.records.TRANSITIONS) as JobRecord.move() enforces it: every
allowed transition is accepted, every other pair of states is refused with InvalidTransition and
leaves the record as it was; and the retry paths (start_over) follow the table too."""

from __future__ import annotations

import itertools

import pytest

from falq.shared.errors import InvalidTransition, PermanentError
from falq.shared.jobs.records import STATES, TERMINAL, TRANSITIONS, JobRecord


def _record_in(state: str) -> JobRecord:
    rec = JobRecord.new(endpoint="fal-ai/qwen-image-2/text-to-image", input={"prompt": "p"})
    rec.state = state  # type: ignore[assignment]  # placed directly: the table is what is under test
    return rec


def test_the_table_names_every_state_and_only_states() -> None:
    assert set(TRANSITIONS) == set(STATES)
    for src, dests in TRANSITIONS.items():
        assert dests <= set(STATES), src


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(STATES, STATES)))
def test_move_accepts_exactly_the_table(src: str, dst: str) -> None:
    rec = _record_in(src)
    before = rec.model_dump()
    if dst in TRANSITIONS[src]:  # type: ignore[index]
        rec.move(dst)  # type: ignore[arg-type]
        assert rec.state == dst and dst in rec.timestamps
    else:
        with pytest.raises(InvalidTransition) as info:
            rec.move(dst)  # type: ignore[arg-type]
        assert isinstance(info.value, PermanentError)
        assert info.value.src == src and info.value.dst == dst
        assert f"{src} -> {dst}" in str(info.value)
        assert rec.model_dump() == before


def test_terminal_states_lead_only_to_a_retry() -> None:
    # A new attempt, or the output fal already made (and billed) taken up again: never a state
    # in which a new submission to fal could be on its way.
    for state in TERMINAL:
        assert TRANSITIONS[state] <= {"queued", "waiting", "mirroring", "completed"}  # type: ignore[index]
    assert TRANSITIONS["completed"] == frozenset()
    assert "completed" not in TRANSITIONS["failed"]


def test_every_state_is_reachable_from_a_new_job_and_every_live_one_can_end() -> None:
    seen, todo = {"queued", "waiting"}, ["queued", "waiting"]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:  # type: ignore[index]
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(STATES)
    for state in set(STATES) - TERMINAL:
        assert "cancelled" in TRANSITIONS[state] and "failed" in TRANSITIONS[state]  # type: ignore[index]


def test_a_cancelled_job_that_fal_completed_can_be_retried() -> None:
    # Cancel follows a running request to its end (the job ends cancelled, its output mirrored);
    # a retry of it is a new attempt.
    rec = _record_in("in_progress")
    rec.move("mirroring")
    rec.move("cancelled")
    rec.start_over("queued")
    assert rec.state == "queued"


def test_a_completed_job_is_never_reopened() -> None:
    rec = _record_in("completed")
    with pytest.raises(InvalidTransition):
        rec.start_over("queued")
    assert rec.state == "completed"


def test_workers_and_producers_move_one_step_at_a_time() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    users = [str(p.relative_to(root)) for folder in ("shared", "workers", "producers", "gateway", "cli")
             for p in (root / folder).rglob("*.py") if ".walk_to(" in p.read_text(encoding="utf-8")]
    assert users == [], f"walk_to is for tests and benchmarks that fabricate records: {users}"


def test_a_flood_of_one_error_kind_keeps_the_rarer_entries() -> None:
    from falq.shared.errors import FalIngressError, RetryableError
    from falq.shared.jobs.records import MAX_ERRORS
    from falq.workers.steps.submit import SubmitInterrupted

    rec = JobRecord.new(endpoint="fal-ai/qwen-image-2/text-to-image", input={"prompt": "p"})
    rec.add_error(RetryableError("a blip"))
    rec.add_error(SubmitInterrupted("attempt 1: the worker stopped during submit"))
    for i in range(MAX_ERRORS + 10):  # a submit outage: fal's edge answers page after page
        rec.add_error(FalIngressError(f"edge page {i}"))
    kinds = [e.type for e in rec.errors]
    assert len(rec.errors) == MAX_ERRORS
    assert kinds[:2] == [RetryableError.kind, SubmitInterrupted.kind]  # what explains an attempt stays
    assert rec.errors[-1].message == f"edge page {MAX_ERRORS + 9}"  # the newest is last
    assert [e.message for e in rec.errors[2:]] == [f"edge page {i}" for i in range(12, MAX_ERRORS + 10)]
