"""The rules of the admin service's listings (:mod:`falq.producers.admin.jobs`, :mod:`.callbacks`), without Redis."""

from __future__ import annotations

from typing import Any

import pytest

from falq.producers.admin.base import JOB_IDS_RULE, LIMIT_RULE, at_least_one_id
from falq.producers.admin.callbacks import ONLY_FAILED_RULE, CallbacksQuery
from falq.producers.admin.jobs import STATE_RULE, TEXT_RULE, JobsQuery
from falq.shared.errors import InvalidInput
from falq.shared.since import SINCE_RULE


def messages(model: Any, data: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidInput) as exc:
        model.check(data)
    return [str(e) for e in exc.value.errors]


def test_a_valid_jobs_query() -> None:
    q = JobsQuery.check({"state": "failed", "since": "1700000000", "limit": "20", "text": " fox "})
    assert (q.state, q.since, q.limit, q.text) == ("failed", 1700000000.0, 20, " fox ")
    assert JobsQuery.check({}).limit == 50


@pytest.mark.parametrize(("data", "expected"), [
    ({"state": "bogus"}, [f"state: {STATE_RULE}"]),
    ({"since": " "}, [f"since: {SINCE_RULE}"]),
    ({"limit": 0}, [f"limit: {LIMIT_RULE}"]),
    ({"limit": "100001"}, [f"limit: {LIMIT_RULE}"]),
    ({"limit": "some"}, [f"limit: {LIMIT_RULE}"]),
    ({"text": "  "}, [f"text: {TEXT_RULE}"]),
    ({"text": "x" * 501}, [f"text: {TEXT_RULE}"]),
    ({"text": 5}, [f"text: {TEXT_RULE}"]),
    ({"text": "", "limit": 0, "since": "whenever", "state": "x"},
     [f"state: {STATE_RULE}", f"since: {SINCE_RULE}", f"limit: {LIMIT_RULE}", f"text: {TEXT_RULE}"]),
])
def test_each_jobs_query_rule_names_its_field(data: dict[str, Any], expected: list[str]) -> None:
    assert messages(JobsQuery, data) == expected


def test_a_valid_callbacks_query() -> None:
    assert CallbacksQuery.check({"failed": True, "since": "1700000000", "limit": "5"}).since == 1700000000.0
    q = CallbacksQuery.check({})
    assert (q.failed, q.since, q.limit) == (False, None, 100)


@pytest.mark.parametrize(("data", "expected"), [
    ({"since": "1h"}, [f"since: {ONLY_FAILED_RULE}"]),
    ({"failed": True, "since": "whenever"}, [f"since: {SINCE_RULE}"]),
    ({"limit": 0, "since": "1h"}, [f"limit: {LIMIT_RULE}", f"since: {ONLY_FAILED_RULE}"]),
])
def test_each_callbacks_query_rule_names_its_field(data: dict[str, Any], expected: list[str]) -> None:
    assert messages(CallbacksQuery, data) == expected


def test_job_ids_are_kept_once_in_order_and_at_least_one() -> None:
    assert at_least_one_id(["b", "a", "b"]) == ["b", "a"]
    with pytest.raises(InvalidInput) as exc:
        at_least_one_id([])
    assert [str(e) for e in exc.value.errors] == [f"job_ids: {JOB_IDS_RULE}"]
