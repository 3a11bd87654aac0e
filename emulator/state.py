"""In-memory state: request records, per-key FIFO queues with O(log n) positions, counters.

Nothing here awaits or touches the network; :mod:`falq.emulator.core` drives it from the event
loop. Queue positions are answered from Fenwick trees over per-key tickets, so a status
call stays cheap with tens of thousands of requests queued behind one key.

Each record also keeps the connection accounting a benchmark needs (HTTP calls by kind,
distinct client connections), filled in by :class:`falq.emulator.faults.FaultMiddleware`.

Example::

    >>> q = KeyQueue()
    >>> a, b = RequestRecord.new("a", "fal-ai/qwen-image-2/edit", "k"), RequestRecord.new("b", "x", "k")
    >>> q.push(a); q.push(b)
    >>> q.position(b)
    1
    >>> q.pop() is a, q.position(b)
    (True, 0)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

Client = tuple[str, int]  # ASGI scope["client"]: (host, port), one per TCP connection

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"


@dataclass(eq=False)
class RequestRecord:
    """One accepted submission and everything later learnt about it."""

    id: str
    endpoint: str
    key_hash: str
    key_suffix: str = ""
    input: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    priority: str = "normal"
    start_timeout_s: float | None = None
    webhook_url: str | None = None
    base_url: str = ""
    generation: int = 0
    state: str = IN_QUEUE
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    logs: list[dict[str, str]] = field(default_factory=list)
    # outcome
    result_status: int | None = None
    result_body: Any = None
    result_headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    cancelled: bool = False
    #: The request was cancelled while running and its app ignored that: it completes, billed.
    cancel_ignored: bool = False
    #: fal dropped it unbilled: no runner started it within its start timeout.
    start_timed_out: bool = False
    result_gets: int = 0  # result GETs of a successful request (the result_5xx_first fault)
    inference_time: float | None = None
    seed: int | None = None
    inject_error: bool = False
    moderated: bool = False
    store_io: bool = True  # False when the submit sent X-Fal-Store-IO: 0
    sync_mode: bool = False
    result_size: int = 0  # bytes of the JSON result body, for the retention class
    parse_error: Any = None
    calls: Counter[str] = field(default_factory=Counter)
    clients: set[Client] = field(default_factory=set)
    webhook_history: list[dict[str, Any]] = field(default_factory=list)
    # scheduling internals
    ticket: int = 0
    removed: bool = False
    task: asyncio.Task[None] | None = None
    timeout_handle: asyncio.TimerHandle | None = None
    _changed: asyncio.Event | None = None

    @classmethod
    def new(cls, request_id: str, endpoint: str, key_hash: str) -> RequestRecord:
        return cls(id=request_id, endpoint=endpoint, key_hash=key_hash)

    @property
    def app(self) -> str:
        return "/".join(self.endpoint.split("/")[:2])

    def changed(self) -> asyncio.Event:
        """An event set at the next change of this request (created on demand)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def summary(self) -> dict[str, Any]:
        """The introspection view (no key material beyond a hash and a 4-char suffix)."""
        return {
            "request_id": self.id,
            "endpoint": self.endpoint,
            "key": self.key_hash,
            "key_suffix": self.key_suffix,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "state": self.state,
            "priority": self.priority,
            "start_timeout_s": self.start_timeout_s,
            "input": self.input,
            "headers": self.headers,
            "webhook_url": self.webhook_url,
            "webhook_deliveries": self.webhook_history,
            "result_status": self.result_status,
            "error": self.error,
            "error_type": self.error_type,
            "cancelled": self.cancelled,
            "cancel_ignored": self.cancel_ignored,
            "start_timed_out": self.start_timed_out,
            #: What fal bills for it: x-fal-billable-units of a successful result, else 0.
            "billable_units": float(self.result_headers.get("x-fal-billable-units", 0) or 0),
            "inference_time": self.inference_time,
            "seed": self.seed,
            "log_count": len(self.logs),
            "moderated": self.moderated,
            "calls": dict(self.calls),
            "connections": len(self.clients),
        }


class _Fenwick:
    """Counts live tickets; ``prefix(i)`` = live tickets < i. Grows by doubling."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.tree = [0] * (size + 1)
        self.total = 0

    def add(self, ticket: int, delta: int) -> None:
        while ticket >= self.size:
            self._grow()
        i = ticket + 1
        while i <= self.size:
            self.tree[i] += delta
            i += i & -i
        self.total += delta

    def prefix(self, ticket: int) -> int:
        i, s = min(ticket, self.size), 0
        while i > 0:
            s += self.tree[i]
            i -= i & -i
        return s

    def _grow(self) -> None:
        old = [self.prefix(i + 1) - self.prefix(i) for i in range(self.size)]
        self.size *= 2
        self.tree = [0] * (self.size + 1)
        self.total = 0
        for t, v in enumerate(old):
            if v:
                self.add(t, v)


class KeyQueue:
    """One key's waiting requests: ``normal`` priority first, then ``low``, FIFO in each.

    A ``low`` request waits behind every ``normal`` request of the key, including normal
    ones submitted after it (fal: "Low waits behind every normal request of the account").
    """

    def __init__(self) -> None:
        self._deques: dict[str, deque[RequestRecord]] = {"normal": deque(), "low": deque()}
        self._bits = {"normal": _Fenwick(), "low": _Fenwick()}
        self._next = {"normal": 0, "low": 0}
        self.in_progress = 0
        self.peak = 0
        self.changed = asyncio.Event()

    def push(self, rec: RequestRecord) -> None:
        prio = "low" if rec.priority == "low" else "normal"
        rec.ticket = self._next[prio]
        self._next[prio] += 1
        self._deques[prio].append(rec)
        self._bits[prio].add(rec.ticket, 1)

    def __len__(self) -> int:
        return self._bits["normal"].total + self._bits["low"].total

    def position(self, rec: RequestRecord) -> int:
        """Number of this key's requests ahead of ``rec``."""
        if rec.priority == "low":
            return self._bits["normal"].total + self._bits["low"].prefix(rec.ticket)
        return self._bits["normal"].prefix(rec.ticket)

    def remove(self, rec: RequestRecord) -> None:
        """Take ``rec`` out (cancel, timeout); lazily dropped from the deque later."""
        if not rec.removed:
            rec.removed = True
            self._bits["low" if rec.priority == "low" else "normal"].add(rec.ticket, -1)
            self.touch()

    def pop(self) -> RequestRecord | None:
        """The next request to start, or None."""
        for prio in ("normal", "low"):
            dq = self._deques[prio]
            while dq:
                rec = dq.popleft()
                if not rec.removed:
                    rec.removed = True
                    self._bits[prio].add(rec.ticket, -1)
                    self.touch()
                    return rec
        return None

    def touch(self) -> None:
        """Wake everyone watching this queue's positions (SSE streams)."""
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class Stats:
    """Counters for ``GET /_emulator/requests``."""

    calls: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_submits: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    moderations: Counter[str] = field(default_factory=Counter)  # "submit" / "completed"
    clients: set[Client] = field(default_factory=set)  # distinct connections on queue calls
    in_progress: int = 0
    peak_in_flight: int = 0

    def started(self, queue: KeyQueue) -> None:
        self.in_progress += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_progress)
        queue.in_progress += 1
        queue.peak = max(queue.peak, queue.in_progress)

    def finished(self, queue: KeyQueue) -> None:
        self.in_progress -= 1
        queue.in_progress -= 1
