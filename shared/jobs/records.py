"""The job record: what falq knows about one job, as stored in Redis.

A job's id is also its Celery task id, so Flower and falq name a job alike. The record
holds everything a person needs to know what happened: the validated input, the state
with a timestamp per state, fal's request ids, every error, fal's metrics and logs tail,
and where the output images live in our bucket.

Example::

    rec = JobRecord.new(endpoint="fal-ai/qwen-image-2/text-to-image",
                        input={"prompt": "a red fox"}, cost_estimate=0.035)
    rec.state      # 'queued'
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

State = Literal["waiting", "queued", "submitting", "in_queue", "in_progress", "mirroring", "completed", "failed",
                "cancelled"]
STATES: tuple[State, ...] = (
    #: A chained job (``falq:JOB_ID#N`` inputs) whose parents have not all completed: no broker
    #: message, no worker slot (falq.shared.batches.chains).
    "waiting",
    "queued",
    "submitting",
    "in_queue",
    "in_progress",
    "mirroring",
    "completed",
    "failed",
    "cancelled",
)
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
#: The state machine: state -> the states :meth:`JobRecord.move` may enter from it (anything
#: else raises :class:`~falq.shared.errors.InvalidTransition`). Read by row:
#:
#: * a new job starts ``queued`` (or ``waiting`` for a chained one, whose release queues it);
#: * an attempt goes ``queued -> submitting -> in_queue -> in_progress -> mirroring -> completed``;
#:   fal may report a request queued again (``in_progress -> in_queue``) and may finish it from
#:   either (``-> mirroring``); a delivery that finds a ``submitting`` record with fal's request
#:   id follows that request, so ``submitting`` leads to whatever fal reports (``in_queue``,
#:   ``in_progress``, ``mirroring``); a request in doubt or a transient failure starts a new
#:   attempt (``-> queued``) from any step of it;
#: * every live state can end ``failed`` or ``cancelled`` (a cancel follows a running request to
#:   its end, so ``in_progress``/``mirroring -> cancelled`` are the ends of a cancelled job fal
#:   completed anyway);
#: * re-entering the same live state is allowed (its timestamp restarts);
#: * a terminal state leads only to a retry (``falq retry``): a new attempt
#:   (:meth:`JobRecord.start_over`), ``failed`` and ``cancelled`` back to ``queued`` (or
#:   ``waiting``, a chained job reopened); or, for a job holding an output fal made and billed,
#:   never a new submission: ``-> mirroring`` when fal's result is kept beside the record, and
#:   ``cancelled -> completed`` for a cancelled job fal finished anyway whose images are mirrored;
#:   ``completed`` is final.
TRANSITIONS: dict[str, frozenset[str]] = {
    "waiting": frozenset({"waiting", "queued", "failed", "cancelled"}),
    "queued": frozenset({"queued", "submitting", "failed", "cancelled"}),
    "submitting": frozenset({"submitting", "queued", "in_queue", "in_progress", "mirroring", "failed", "cancelled"}),
    "in_queue": frozenset({"in_queue", "in_progress", "mirroring", "queued", "failed", "cancelled"}),
    "in_progress": frozenset({"in_progress", "in_queue", "mirroring", "queued", "failed", "cancelled"}),
    "mirroring": frozenset({"mirroring", "completed", "queued", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset({"queued", "waiting", "mirroring"}),
    "cancelled": frozenset({"queued", "waiting", "mirroring", "completed"}),
}
#: States in which a fal request may be outstanding (submitted and not finished).
AT_FAL: frozenset[str] = frozenset({"submitting", "in_queue", "in_progress"})
Lane = Literal["interactive", "bulk"]
LOGS_TAIL = 20
#: Errors a record keeps (:meth:`JobRecord.add_error`).
MAX_ERRORS = 50


def path_to(src: str, dst: str) -> list[str] | None:
    """The shortest list of states :data:`TRANSITIONS` leads through from ``src`` to ``dst``
    (``dst`` last; ``[dst]`` for a direct step), or None when ``dst`` cannot be reached.

    The path passes through no terminal state but ``dst`` itself: a record walked to
    ``completed`` must not carry a ``cancelled`` timestamp (its finish time is its last terminal one)."""
    if dst in TRANSITIONS.get(src, frozenset()):
        return [dst]
    prev: dict[str, str] = {src: src}
    todo = [src]
    while todo:
        nxt: list[str] = []
        for here in todo:
            for there in sorted(TRANSITIONS[here]):
                if there not in prev and (there == dst or there not in TERMINAL):
                    prev[there] = here
                    if there == dst:
                        path = [dst]
                        while prev[path[-1]] != src:
                            path.append(prev[path[-1]])
                        return path[::-1]
                    nxt.append(there)
        todo = nxt
    return None


def new_job_id() -> str:
    return uuid.uuid4().hex


class ErrorInfo(BaseModel):
    """One error in a job's history."""

    model_config = ConfigDict(extra="ignore")

    type: str
    message: str
    retryable: bool
    attempt: int = 0
    at: float = Field(default_factory=time.time)


class Submission(BaseModel):
    """One request fal accepted for this job (each one is billed when it succeeds)."""

    attempt: int
    request_id: str
    submitted_at: float


class StoredImage(BaseModel):
    """One output image as copied into our bucket."""

    index: int
    bucket: str
    key: str
    size: int
    sha256: str
    content_type: str
    width: int
    height: int
    #: Host the image was fetched from (never the full URL, which may carry tokens).
    source_host: str = ""


#: What ``falq status`` and the console say about how fal ended a request falq asked it to cancel
#: (:attr:`JobRecord.fal_outcome`).
FAL_OUTCOME_NOTES = {
    "finished": "fal finished it despite the cancel: billed, output kept and mirrored (`falq retry` completes it "
                "from that output, without paying again)",
    "stopped": "fal stopped it after the cancel: not billed",
    "removed": "fal removed it from its queue before it ran: not billed",
    "unknown": "fal never said how it ended after the cancel: whether it was billed is unknown",
}


class JobRecord(BaseModel):
    """Everything falq records about one job. ``version`` guards concurrent writers."""

    model_config = ConfigDict(extra="ignore")

    id: str
    endpoint: str
    input: dict[str, Any]
    lane: Lane = "interactive"
    state: State = "queued"
    #: Why a non-terminal job is waiting, e.g. ``"budget"``; None when it is not paused.
    paused: str | None = None
    timestamps: dict[str, float] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    version: int = 0

    attempts: int = 0
    #: ``attempts`` when the job was last retried by hand (``falq retry``); the attempt limit
    #: counts from here, while ``errors`` and ``submissions`` keep the whole history.
    retry_from: int = 0
    request_id: str | None = None
    status_url: str | None = None
    response_url: str | None = None
    cancel_url: str | None = None
    submitted_at: float | None = None
    submissions: list[Submission] = Field(default_factory=list)

    errors: list[ErrorInfo] = Field(default_factory=list)
    inference_time: float | None = None
    queue_wait: float | None = None
    logs: list[str] = Field(default_factory=list)
    #: fal's timestamp of each line of ``logs`` (unix time, 0.0 when fal gave none), aligned.
    log_at: list[float] = Field(default_factory=list)
    fal_completed_at: float | None = None
    outputs: list[StoredImage] = Field(default_factory=list)
    seed: int | None = None
    #: The price-table estimate (USD), reserved against the budget at admission.
    cost_estimate: float = 0.0
    #: What fal billed, from ``x-fal-billable-units`` on the result x the unit price; None
    #: when fal did not report units (``cost_source`` then stays ``estimate``).
    cost_billed: float | None = None
    cost_source: Literal["estimate", "fal_billable_units"] = "estimate"
    #: The unit price (USD) ``cost_estimate`` and ``cost_billed`` were computed with.
    unit_price: float | None = None
    #: Where ``unit_price`` came from (:mod:`falq.shared.spend.pricing`): ``fal_pricing_api`` (the
    #: account's price) or ``list_price_fallback`` (the configured list price; the API was unreachable).
    price_source: Literal["fal_pricing_api", "list_price_fallback"] | None = None
    #: fal's ``x-fal-billable-units`` on the result (None when fal sent none); the gateway
    #: returns it on the result of a job submitted through its fal routes.
    billable_units: float | None = None
    #: ``X-Fal-Queue-Priority`` chosen for this job (its batch's or its tenant's); None: the lane's setting.
    priority: Literal["normal", "low"] | None = None
    #: fal's moderation categories when its content checker refused the job (``content_policy``).
    moderation: list[str] | None = None
    #: When fal's output JSON was saved beside the record (fetched once, right after COMPLETED).
    result_saved_at: float | None = None
    #: Where the logs tail stands: [fal timestamp of the newest line, messages seen at it...];
    #: stream events (new lines) and polled windows are deduplicated against it.
    log_cursor: list[str] = Field(default_factory=list)

    #: The tenant that owns the job (falq.shared.tenants.store); ``default`` when none was named.
    tenant: str = "default"
    #: The tenant's S3 folder as the producer saw it when it made the job (``s3_prefix_of``), so
    #: every run of the job writes the same keys; None on a record an older producer made (the
    #: worker reads the tenant's then).
    folder: str | None = None
    #: The batch the job belongs to (every ``falq bulk`` run and ``POST /v1/batches``), if any.
    batch_id: str | None = None
    #: Jobs whose outputs this job's input references (``falq:JOB_ID#N``): it waits until they completed.
    parents: list[str] = Field(default_factory=list)
    #: The ``image_urls`` as given, references included, once they were resolved to the parents'
    #: S3 copies at release (a retry of a chained job resolves them again).
    input_refs: list[str] | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = None
    #: Where fal's webhook shape goes when the job ends (the gateway's ``?fal_webhook=``);
    #: delivered through the same outbox as ``callback_url`` (:mod:`falq.workers.callbacks.sender`).
    fal_webhook: str | None = None
    #: fal request headers a client of the gateway's fal routes sent (priority, start timeout,
    #: store-IO, object lifecycle, no-retry: :data:`falq.gateway.fal.headers.PASSED_ON`), sent
    #: with this job's submit to fal over falq's own defaults.
    fal_headers: dict[str, str] = Field(default_factory=dict)
    cancel_requested: bool = False
    #: When falq asked fal to cancel the job's request (a user's cancel, or the deadline), and
    #: why: the request is then followed until fal says how it ended (a cancel is a request).
    fal_cancel_at: float | None = None
    fal_cancel_why: Literal["cancel", "deadline"] | None = None
    #: How fal ended a request falq asked it to cancel: ``finished`` (fal completed it anyway:
    #: billed, output kept and mirrored), ``stopped`` (fal stopped it: not billed), ``removed``
    #: (taken out of fal's queue before it ran: not billed) or ``unknown`` (fal never said).
    fal_outcome: Literal["finished", "stopped", "removed", "unknown"] | None = None
    #: When the current streak of submit answers that created nothing at fal began (edge
    #: pages, 429s, connections never made): bounded by time, not by the attempt limit.
    refused_since: float | None = None
    #: ``input`` as stored in the record's own ``input`` field (JSON), for a record stored split
    #: (:mod:`falq.shared.jobs.store`); None for one stored whole (created by an older release).
    _input_json: bytes | None = PrivateAttr(default=None)

    @classmethod
    def new(cls, *, endpoint: str, input: dict[str, Any], job_id: str | None = None, **kw: Any) -> JobRecord:
        now = time.time()
        return cls(id=job_id or new_job_id(), endpoint=endpoint, input=input, timestamps={"queued": now},
                   created_at=now, updated_at=now, **kw)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def error(self) -> ErrorInfo | None:
        """The last error, if any."""
        return self.errors[-1] if self.errors else None

    def start_over(self, state: State) -> None:
        """Make the job runnable again as a new attempt, entering ``state`` (``queued``, or
        ``waiting`` for a chained job): what fal knew of the last attempt is forgotten, the
        attempts and errors so far are kept (``retry_from`` marks where the new run began).

        The one reset behind every retry (:meth:`falq.producers.Falq.retry`,
        :meth:`falq.shared.batches.chains.Chains.reopen`).
        """
        self.check_move(state)
        self.retry_from = self.attempts
        self.request_id = self.status_url = self.response_url = self.cancel_url = None
        self.submitted_at = self.fal_completed_at = self.queue_wait = self.inference_time = None
        self.outputs, self.seed, self.paused, self.cancel_requested = [], None, None, False
        self.fal_cancel_at = self.fal_cancel_why = self.fal_outcome = self.refused_since = None
        self.move(state)

    def check_move(self, state: str) -> None:
        """Raise :class:`~falq.shared.errors.InvalidTransition` unless :data:`TRANSITIONS` lets
        the job go from its state to ``state``."""
        if state not in TRANSITIONS.get(self.state, frozenset()):
            from falq.shared.errors import InvalidTransition

            raise InvalidTransition(self.id, self.state, state)

    def move(self, state: State) -> None:
        """Enter ``state`` now (records the timestamp of the state); only along :data:`TRANSITIONS`
        (else :class:`~falq.shared.errors.InvalidTransition`, the record unchanged)."""
        self.check_move(state)
        now = time.time()
        self.state = state
        self.timestamps[state] = now
        self.updated_at = now

    def walk_to(self, state: State) -> None:
        """Move along the shortest path of :data:`TRANSITIONS` to ``state``, each step through
        :meth:`move`: how tests and benchmarks make a record that has been where a worker would
        have taken it (``queued`` to ``completed`` passes every step of an attempt). Workers and
        producers move one step at a time, never with this (tests/unit/test_records.py)."""
        path = path_to(self.state, state)
        if path is None:
            from falq.shared.errors import InvalidTransition

            raise InvalidTransition(self.id, self.state, state)
        for step in path:
            self.move(step)  # type: ignore[arg-type]

    def add_error(self, exc: BaseException, *, retryable: bool | None = None) -> ErrorInfo:
        from falq.shared.errors import FalqError

        kind = exc.kind if isinstance(exc, FalqError) else type(exc).__name__
        retry = retryable if retryable is not None else (isinstance(exc, FalqError) and exc.retryable)
        info = ErrorInfo(type=kind, message=str(exc)[:2000], retryable=retry, attempt=self.attempts)
        errors = [*self.errors, info]
        if len(errors) > MAX_ERRORS:
            # A long run of one kind (a submit outage's edge pages, retried for minutes) must not
            # push the rarer entries out, such as the interrupted submit that explains an attempt:
            # the oldest entry of the new one's kind goes, else the oldest.
            drop = next((i for i, e in enumerate(errors[:-1]) if e.type == info.type), 0)
            del errors[drop]
        self.errors = errors
        return info

    def add_logs(self, lines: list[str], at: list[float] | None = None) -> None:
        """Append lines (with fal's timestamps, if known) and keep the last ``LOGS_TAIL``."""
        if lines:
            stamps = list(at) if at is not None and len(at) == len(lines) else [0.0] * len(lines)
            old = self.log_at if len(self.log_at) == len(self.logs) else [0.0] * len(self.logs)
            self.logs = [*self.logs, *lines][-LOGS_TAIL:]
            self.log_at = [*old, *stamps][-LOGS_TAIL:]

    @property
    def cost(self) -> float:
        """What the job cost as best known: fal's billed amount, else the estimate."""
        return self.cost_billed if self.cost_billed is not None else self.cost_estimate

    @property
    def kept_after_cancel(self) -> bool:
        """Whether the job was cancelled but fal finished its request anyway: billed, its images
        mirrored and kept (a cancel is a request, not an outcome)."""
        return self.state == "cancelled" and self.fal_outcome == "finished" and bool(self.outputs)

    @property
    def has_result(self) -> bool:
        """Whether the job's images are served as its result: it completed, or fal finished it
        after a cancel (:attr:`kept_after_cancel`). The one rule of ``JobHandle.result()``, the
        REST ``result`` and the fal-shaped result route."""
        return self.state == "completed" or self.kept_after_cancel

    def public(self) -> dict[str, Any]:
        """The record as JSON-able data for CLIs, callbacks and the API."""
        data = self.model_dump(mode="json")
        data["error"] = self.error.model_dump(mode="json") if self.error else None
        return data
