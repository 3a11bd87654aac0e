"""How falq's fal client classifies fal's answers (README: "fal, as the live service behaves").

Each answer is served by an ``httpx.MockTransport`` to the same client calls falq makes
(submit, status, result, cancel), and the raised error type is checked side by side for
submit and result. Also: fal's submit headers and log deduplication across moving windows and
stream events. The status stream's reader against a real HTTP server that pings is in
tests/integration/test_falclient_stream.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from falq.shared.errors import (
    FalAccountLocked,
    FalAuthError,
    FalContentPolicy,
    FalError,
    FalIngressError,
    FalRejected,
    FalRequestFailed,
    FalRequestFailedPermanent,
    FalRequestFailedTransient,
    FalResultError,
    FalResultGone,
    FalStartTimeout,
    FalSubmitUncertain,
    FalTransientError,
)
from falq.shared.fal.client import FalClient, LogEntry, Result, submit_headers
from falq.shared.settings import Settings
from falq.workers.steps.follow import fresh_log_lines

pytestmark = pytest.mark.timeout(60)

FAL_KEY = "test-key-1234567890"
QUEUE = "https://queue.example"
ENDPOINT = "fal-ai/qwen-image-2/text-to-image"
STATUS_URL = f"{QUEUE}/fal-ai/qwen-image-2/requests/r-1/status"
RESPONSE_URL = f"{QUEUE}/fal-ai/qwen-image-2/requests/r-1"
CANCEL_URL = f"{QUEUE}/fal-ai/qwen-image-2/requests/r-1/cancel"

LOCKED = "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
BLOCKED = "Prompt blocked by content policy"
NGINX = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
         b"</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
MODERATED = {"detail": [{"loc": ["body", "prompt"], "msg": "The content was flagged by a content checker.",
                         "type": "content_policy_violation", "categories": ["sexual"]}]}
VALIDATION = {"detail": [{"loc": ["body", "num_images"], "msg": "ensure this value is less than or equal to 4",
                          "type": "value_error"}]}
SUBMITTED = {"request_id": "r-1", "status_url": STATUS_URL, "response_url": RESPONSE_URL, "cancel_url": CANCEL_URL}


def settings(**kw: Any) -> Settings:
    return Settings(**{"fal_key": FAL_KEY, "fal_queue_url": QUEUE, **kw})


@dataclass
class Answer:
    """One canned answer. ``raises`` makes the transport raise instead of answering."""

    status: int = 200
    json_body: Any = None
    html: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raises: type[httpx.TransportError] | None = None


def _echo(body: Any, auth: str) -> Any:
    """``body`` with the Authorization header the client sent echoed into every string detail,
    as a careless server or proxy may do."""
    if isinstance(body, dict):
        return {k: (f"{v} (sent {auth})" if k in ("detail", "msg") and isinstance(v, str) else _echo(v, auth))
                for k, v in body.items()}
    if isinstance(body, list):
        return [_echo(v, auth) for v in body]
    return body


def client_for(answer: Answer, echo: bool = False, seen: list[httpx.Request] | None = None) -> FalClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if answer.raises is not None:
            raise answer.raises("boom", request=request)
        auth = request.headers.get("authorization", "")
        if answer.html is not None:
            content = answer.html + (f"<!-- {auth} -->".encode() if echo else b"")
            return httpx.Response(answer.status, content=content,
                                  headers={"content-type": "text/html", **answer.headers})
        body = _echo(answer.json_body, auth) if echo else answer.json_body
        return httpx.Response(answer.status, json=body, headers=answer.headers)

    return FalClient(settings(), http=httpx.Client(transport=httpx.MockTransport(handler)))


def do_submit(fal: FalClient) -> Any:
    return fal.submit(ENDPOINT, {"prompt": "a red fox"})


def do_status(fal: FalClient) -> Any:
    return fal.status(STATUS_URL)


def do_result(fal: FalClient) -> Any:
    return fal.result(RESPONSE_URL)


def do_cancel(fal: FalClient) -> Any:
    return fal.cancel(CANCEL_URL)


CALLS: dict[str, Callable[[FalClient], Any]] = {
    "submit": do_submit, "status": do_status, "result": do_result, "cancel": do_cancel,
}
RID = {"x-fal-request-id": "abc"}

#: (call, case name, answer, expected error type, error types it must NOT be, retryable).
CASES: list[tuple[str, str, Answer, type[Exception], tuple[type[Exception], ...], bool]] = []
for _call in ("submit", "result"):
    CASES += [
        (_call, "403-user-locked", Answer(403, {"detail": LOCKED}), FalAccountLocked, (FalAuthError,), True),
        (_call, "403-prompt-blocked", Answer(403, {"detail": BLOCKED}), FalAuthError, (FalAccountLocked,), False),
        (_call, "401-bad-key", Answer(401, {"detail": "Invalid API key"}), FalAuthError, (FalAccountLocked,), False),
        (_call, "402", Answer(402, {"detail": "Payment required"}), FalAccountLocked, (FalAuthError,), True),
        (_call, "422-moderated", Answer(422, MODERATED), FalContentPolicy, (FalRejected, FalRequestFailed), False),
        (_call, "422-moderated-with-rid", Answer(422, MODERATED, headers=RID), FalContentPolicy,
         (FalRejected, FalRequestFailed), False),
    ]
for _call in ("submit", "status", "result", "cancel"):
    for _code in (502, 503, 504):
        CASES.append((_call, f"{_code}-nginx", Answer(_code, html=NGINX), FalIngressError,
                      (FalSubmitUncertain, FalRequestFailed), True))
CASES += [
    ("submit", "422-validation", Answer(422, VALIDATION), FalRejected, (FalContentPolicy,), False),
    ("submit", "500-json-no-rid", Answer(500, {"detail": "Internal Server Error"}), FalSubmitUncertain,
     (FalTransientError,), False),
    ("submit", "503-json-with-rid", Answer(503, {"detail": "Service Unavailable"}, headers=RID), FalSubmitUncertain,
     (FalTransientError,), False),
    ("submit", "502-html-with-rid", Answer(502, html=NGINX, headers=RID), FalSubmitUncertain,
     (FalTransientError,), False),
    ("submit", "429", Answer(429, {"detail": "Too many requests"}, headers={"retry-after": "3"}), FalTransientError,
     (FalSubmitUncertain, FalIngressError), True),
    ("submit", "408", Answer(408, {"detail": "Request timeout"}), FalTransientError, (FalSubmitUncertain,), True),
    ("submit", "409", Answer(409, {"detail": "Conflict"}), FalTransientError, (FalSubmitUncertain,), True),
    ("submit", "connect-error", Answer(raises=httpx.ConnectError), FalTransientError, (FalSubmitUncertain,), True),
    ("submit", "read-error", Answer(raises=httpx.ReadError), FalSubmitUncertain, (FalTransientError,), False),
    ("submit", "remote-protocol-error", Answer(raises=httpx.RemoteProtocolError), FalSubmitUncertain,
     (FalTransientError,), False),
    ("result", "422-validation-with-rid", Answer(422, VALIDATION, headers=RID), FalRequestFailedPermanent,
     (FalContentPolicy, FalTransientError), False),
    ("result", "504-start-timeout", Answer(504, {"detail": "Request timed out"},
                                           headers={**RID, "X-Fal-Request-Timeout-Type": "user"}),
     FalStartTimeout, (FalTransientError, FalRequestFailed), False),
    ("result", "404-with-rid", Answer(404, {"detail": "Request not found"}, headers=RID), FalResultGone,
     (FalRejected, FalRequestFailed), False),
    ("result", "500-runner-disconnected-with-rid",
     Answer(500, {"detail": "Runner disconnected", "error_type": "runner_disconnected"}, headers=RID),
     FalRequestFailedTransient, (FalTransientError,), True),
    ("result", "500-json-no-rid", Answer(500, {"detail": "Internal Server Error"}), FalTransientError,
     (FalRequestFailed,), True),
    ("status", "429", Answer(429, {"detail": "Too many requests"}), FalTransientError, (FalIngressError,), True),
    ("cancel", "500-json-no-rid", Answer(500, {"detail": "oops"}), FalTransientError, (FalRequestFailed,), True),
]
# Section 11: exactly fal-client's ingress test (no request id AND nginx's page); a start timeout
# on every call; a bare 5xx on a result names no outcome of the request (fetch it again).
PLAIN_502 = b"<html><body>Bad Gateway</body></html>"
START_TIMEOUT = Answer(504, {"detail": "Request timed out"}, headers={**RID, "X-Fal-Request-Timeout-Type": "user"})
CASES += [
    ("submit", "502-plain-page-no-rid", Answer(502, html=PLAIN_502), FalSubmitUncertain,
     (FalIngressError, FalTransientError), False),
    ("submit", "503-json-no-rid-no-nginx", Answer(503, {"detail": "upstream unavailable"}), FalSubmitUncertain,
     (FalIngressError, FalTransientError), False),
    ("status", "502-plain-page-no-rid", Answer(502, html=PLAIN_502), FalTransientError, (FalIngressError,), True),
    ("submit", "504-start-timeout", START_TIMEOUT, FalStartTimeout, (FalTransientError, FalSubmitUncertain), False),
    ("status", "504-start-timeout", START_TIMEOUT, FalStartTimeout, (FalTransientError, FalIngressError), False),
    ("status", "504-start-timeout-no-rid", Answer(504, {"detail": "Request timed out"},
                                                  headers={"X-Fal-Request-Timeout-Type": "user"}),
     FalStartTimeout, (FalTransientError, FalIngressError), False),
    ("result", "500-json-with-rid", Answer(500, {"detail": "Internal Server Error"}, headers=RID), FalResultError,
     (FalRequestFailed,), True),
    ("result", "503-json-with-rid", Answer(503, {"detail": "Service Unavailable"}, headers=RID), FalResultError,
     (FalRequestFailed,), True),
    ("result", "502-nginx-with-rid", Answer(502, html=NGINX, headers=RID), FalResultError,
     (FalRequestFailed, FalIngressError), True),
    ("result", "500-internal-error-type-with-rid",
     Answer(500, {"detail": "boom", "error_type": "internal_error"}, headers=RID), FalRequestFailedTransient,
     (FalResultError,), True),
    ("result", "500-error-type-header-with-rid",
     Answer(500, {"detail": "boom"}, headers={**RID, "x-fal-error-type": "runner_server_error"}),
     FalRequestFailedTransient, (FalResultError,), True),
]


@pytest.mark.parametrize("echo", [False, True], ids=["plain", "echoes-auth"])
@pytest.mark.parametrize(("call", "answer", "expected", "not_types", "retryable"),
                         [pytest.param(c, a, e, n, r, id=f"{c}-{name}") for c, name, a, e, n, r in CASES])
def test_answer_classification(call: str, answer: Answer, expected: type[Exception],
                               not_types: tuple[type[Exception], ...], retryable: bool, echo: bool) -> None:
    fal = client_for(answer, echo=echo)
    with pytest.raises(FalError) as info:
        CALLS[call](fal)
    exc = info.value
    assert isinstance(exc, expected), f"{type(exc).__name__}: {exc}"
    for wrong in not_types:
        assert not isinstance(exc, wrong), f"{type(exc).__name__} is also a {wrong.__name__}: {exc}"
    assert exc.retryable is retryable
    assert FAL_KEY not in str(exc) and FAL_KEY not in repr(exc.args)
    detail = getattr(exc, "detail", None)
    assert detail is None or FAL_KEY not in str(detail)


def test_echoed_key_is_really_sent_and_masked() -> None:
    """The echo cases above are meaningful: the client sends the key, and the server's text reaches the message."""
    seen: list[httpx.Request] = []
    fal = client_for(Answer(403, {"detail": BLOCKED}), echo=True, seen=seen)
    with pytest.raises(FalAuthError) as info:
        do_submit(fal)
    assert seen[0].headers["authorization"] == f"Key {FAL_KEY}"
    assert BLOCKED in str(info.value) and "[REDACTED]" in str(info.value)


def test_content_policy_details() -> None:
    for call in (do_submit, do_result):
        with pytest.raises(FalContentPolicy) as info:
            call(client_for(Answer(422, MODERATED, headers=RID)))
        assert info.value.categories == ["sexual"] and info.value.field == "prompt"
        assert info.value.kind == "content_policy"


def test_submit_uncertain_request_id() -> None:
    with pytest.raises(FalSubmitUncertain) as no_rid:
        do_submit(client_for(Answer(500, {"detail": "Internal Server Error"})))
    assert no_rid.value.request_id is None
    with pytest.raises(FalSubmitUncertain) as with_rid:
        do_submit(client_for(Answer(503, {"detail": "Service Unavailable"}, headers=RID)))
    assert with_rid.value.request_id == "abc"
    with pytest.raises(FalSubmitUncertain) as lost:
        do_submit(client_for(Answer(raises=httpx.ReadError)))
    assert lost.value.request_id is None


def test_retry_after_and_reasons() -> None:
    with pytest.raises(FalTransientError) as limited:
        do_submit(client_for(Answer(429, {"detail": "slow down"}, headers={"retry-after": "3"})))
    assert limited.value.retry_after == 3.0 and limited.value.reason == "http_429"
    with pytest.raises(FalTransientError) as refused:
        do_submit(client_for(Answer(raises=httpx.ConnectError)))
    assert refused.value.reason == "connect"
    with pytest.raises(FalAccountLocked) as locked:
        do_submit(client_for(Answer(403, {"detail": LOCKED})))
    assert locked.value.reason == "account_locked" and "...7890" in str(locked.value)


def test_good_answers() -> None:
    sub = do_submit(client_for(Answer(200, {**SUBMITTED, "queue_position": 2})))
    assert (sub.request_id, sub.status_url, sub.queue_position) == ("r-1", STATUS_URL, 2)
    out = do_result(client_for(Answer(200, {"images": [], "seed": 1}, headers={"x-fal-billable-units": "2"})))
    assert isinstance(out, Result) and out.billable_units == 2.0 and out.output == {"images": [], "seed": 1}
    assert json.loads(out.raw) == {"images": [], "seed": 1}
    plain = do_result(client_for(Answer(200, {"images": [], "seed": 1}, headers=RID)))
    assert plain.billable_units is None
    st = do_status(client_for(Answer(200, {"status": "COMPLETED", "error": "boom",
                                           "error_type": "content_policy_violation"})))
    assert st.done and st.error_type == "content_policy_violation"
    assert do_cancel(client_for(Answer(202, {"status": "CANCELLATION_REQUESTED"}))) == "CANCELLATION_REQUESTED"


# --- submit headers -------------------------------------------------------------------------------


def test_submit_headers_defaults_by_lane() -> None:
    s = settings(fal_media_expiry_s=None, fal_start_timeout_s=None, fal_store_io=True, fal_no_retry=False,
                 fal_priority_interactive="normal", fal_priority_bulk="low")
    assert submit_headers(s, "interactive") == {"X-Fal-Queue-Priority": "normal"}
    assert submit_headers(s, "bulk") == {"X-Fal-Queue-Priority": "low"}


def test_by_default_both_lanes_submit_normal_with_fal_s_start_timeout() -> None:
    """``low`` waits behind every customer's normal requests on the endpoint (protocol §11.3):
    it is an explicit choice, never the default. Time in fal's queue is bounded unbilled by the
    start timeout, under both header names (§11.5)."""
    s = settings()
    for lane in ("interactive", "bulk"):
        got = submit_headers(s, lane)
        assert got["X-Fal-Queue-Priority"] == "normal"
        assert float(got["X-Fal-Request-Start-Timeout"]) == float(got["X-Fal-Request-Timeout"]) == 900.0


def test_submit_headers_all_options() -> None:
    s = settings(fal_media_expiry_s=3600, fal_start_timeout_s=30, fal_store_io=False, fal_no_retry=True,
                 fal_priority_interactive="low", fal_priority_bulk="normal")
    got = submit_headers(s, "interactive")
    assert got["X-Fal-Queue-Priority"] == "low" and submit_headers(s, "bulk")["X-Fal-Queue-Priority"] == "normal"
    # both names: the new one (fal: it wins) and the deprecated one fal-client sends
    assert float(got["X-Fal-Request-Start-Timeout"]) == float(got["X-Fal-Request-Timeout"]) == 30.0
    assert json.loads(got["X-Fal-Object-Lifecycle-Preference"]) == {"expiration_duration_seconds": 3600}
    assert got["X-Fal-Store-IO"] == "0" and got["x-fal-no-retry"] == "1"
    assert set(got) == {"X-Fal-Queue-Priority", "X-Fal-Request-Start-Timeout", "X-Fal-Request-Timeout",
                        "X-Fal-Object-Lifecycle-Preference", "X-Fal-Store-IO", "x-fal-no-retry"}


def test_start_timeout_is_on_by_default_under_both_names() -> None:
    s = Settings()
    assert s.fal_start_timeout_s == 900.0
    got = submit_headers(s, "interactive")
    assert got["X-Fal-Request-Start-Timeout"] == got["X-Fal-Request-Timeout"] == "900.0"


def test_start_timeout_on_the_status_stream_is_not_transient() -> None:
    fal = client_for(START_TIMEOUT)
    with pytest.raises(FalStartTimeout) as info:
        list(fal.stream_status(STATUS_URL))
    assert "unbilled" in str(info.value) and not info.value.retryable


def test_submit_sends_the_headers() -> None:
    seen: list[httpx.Request] = []
    s = settings(fal_media_expiry_s=600, fal_store_io=False, fal_priority_bulk="low")
    fal = client_for(Answer(200, SUBMITTED), seen=seen)
    fal.submit(ENDPOINT, {"prompt": "x"}, headers=submit_headers(s, "bulk"))
    sent = seen[0].headers
    assert sent["x-fal-queue-priority"] == "low" and sent["x-fal-store-io"] == "0"
    assert json.loads(sent["x-fal-object-lifecycle-preference"]) == {"expiration_duration_seconds": 600}
    assert sent["authorization"] == f"Key {FAL_KEY}" and str(seen[0].url) == f"{QUEUE}/{ENDPOINT}"


# --- log deduplication ----------------------------------------------------------------------------


class LogReader:
    """Feeds answers through ``fresh_log_lines`` the way the follower does (cursor + tail)."""

    def __init__(self) -> None:
        self.cursor: list[str] = []
        self.lines: list[str] = []

    def feed(self, entries: list[LogEntry]) -> list[str]:
        fresh, self.cursor = fresh_log_lines(entries, self.cursor, list(self.lines))
        self.lines.extend(fresh)
        return fresh


def _log(i: int, base: float = 1_700_000_000.0) -> LogEntry:
    return LogEntry(base + i * 0.25, f"step {i}")


def test_polled_moving_window_gives_each_line_once_in_order() -> None:
    all_entries = [_log(i) for i in range(23)]
    reader = LogReader()
    # A window of 5 recent entries, polled while the request logs 0..3 new lines between polls.
    end = 0
    for grow in (1, 3, 0, 2, 4, 1, 3, 3, 0, 2, 4):
        end = min(len(all_entries), end + grow)
        reader.feed(all_entries[max(0, end - 5):end])
    reader.feed(all_entries[-5:])
    # Some entries scrolled out of the window before a poll (grow 4 with a window of 5 never loses any).
    assert reader.lines == [e.message for e in all_entries]


def test_repeated_window_gives_nothing_new() -> None:
    reader = LogReader()
    window = [_log(i) for i in range(5)]
    assert reader.feed(window) == [e.message for e in window]
    assert reader.feed(window) == []
    assert reader.feed(window[2:]) == []


def test_stream_new_entries_then_reconnect_repeating_the_window() -> None:
    reader = LogReader()
    entries = [_log(i) for i in range(12)]
    for start in range(0, 9, 3):  # stream events: new entries only
        assert reader.feed(entries[start:start + 3]) == [e.message for e in entries[start:start + 3]]
    # Reconnect: the first event carries the recent window again (some old, some new).
    assert reader.feed(entries[4:10]) == ["step 9"]
    assert reader.feed(entries[10:]) == ["step 10", "step 11"]
    assert reader.lines == [e.message for e in entries]


def test_identical_messages_at_distinct_timestamps_are_kept() -> None:
    reader = LogReader()
    a, b, c = LogEntry(10.0, "loading"), LogEntry(11.0, "loading"), LogEntry(12.0, "loading")
    assert reader.feed([a]) == ["loading"]
    assert reader.feed([a, b]) == ["loading"]
    assert reader.feed([b, c]) == ["loading"]
    assert reader.lines == ["loading"] * 3


def test_several_messages_at_one_timestamp_across_windows() -> None:
    reader = LogReader()
    assert reader.feed([LogEntry(5.0, "x"), LogEntry(5.0, "y")]) == ["x", "y"]
    assert reader.feed([LogEntry(5.0, "y"), LogEntry(5.0, "z")]) == ["z"]
    assert reader.feed([LogEntry(5.0, "z"), LogEntry(6.0, "x")]) == ["x"]
    assert reader.lines == ["x", "y", "z", "x"]


def test_entries_without_timestamps() -> None:
    reader = LogReader()
    assert reader.feed([LogEntry(0.0, "a"), LogEntry(0.0, "b")]) == ["a", "b"]
    assert reader.feed([LogEntry(0.0, "b"), LogEntry(0.0, "c")]) == ["c"]
    assert reader.feed([LogEntry(0.0, "a"), LogEntry(0.0, "b"), LogEntry(0.0, "c")]) == []
    assert reader.lines == ["a", "b", "c"]


def test_cursor_round_trips_through_strings() -> None:
    """The cursor is stored in the record as strings: a saved cursor must still dedupe."""
    entries = [LogEntry(1_700_000_000.123456, "a"), LogEntry(1_700_000_000.654321, "b")]
    fresh, cursor = fresh_log_lines(entries, [], [])
    assert fresh == ["a", "b"] and all(isinstance(x, str) for x in cursor)
    saved = json.loads(json.dumps(cursor))
    assert fresh_log_lines([*entries, LogEntry(1_700_000_001.0, "c")], saved, [])[0] == ["c"]
