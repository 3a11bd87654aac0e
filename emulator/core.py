"""The emulated fal queue: submit, schedule under a per-key concurrency cap, run, finish.

Everything is event-driven on the server's asyncio loop: a request waiting in a queue
costs nothing until a slot frees up, an in-progress request is one task sleeping through
its sampled latency (appending log lines on the way), and images are rendered in a
thread pool. Failures finish ``COMPLETED`` with ``error``/``error_type``, as fal does;
that includes a moderated prompt (``content_policy_violation``, result 422) and a request
dropped unbilled because no runner started it within ``X-Fal-Request-Timeout``.

Results expire as fal documents (see :meth:`Emulator.result_expired`), and a successful
result carries ``x-fal-billable-units``. A cancel removes a queued request; a running one
stops, or (``cancel_ignored_share``, half by default) goes on and completes, billed, as an
app without a cancel handler does on fal. A request dropped at its start timeout answers 504
with ``X-Fal-Request-Timeout-Type: user`` on status and stream as on its result
(``start_timeout_status``); ``X-Fal-Request-Start-Timeout`` wins over the deprecated
``X-Fal-Request-Timeout``. Fault options: ``result_5xx_with_id`` / ``result_5xx_first`` (a
500 naming the request on the result of one that succeeded) and ``submit_outage_s`` (an edge
outage on submit, see :mod:`falq.emulator.faults`). ``X-Fal-Queue-Priority: low`` requests wait
behind every normal request of the key (:class:`~falq.emulator.state.KeyQueue`).

Example::

    emu = Emulator(EmulatorConfig(latency="0"))
    rec = emu.submit("fal-ai/qwen-image-2/text-to-image", b'{"prompt":"x"}', "key", {}, None,
                     "http://127.0.0.1:8790")      # inside the running loop
    await emu.wait_change(rec, 1.0)
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import json
import math
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from falq.emulator import webhooks
from falq.emulator.config import EmulatorConfig
from falq.emulator.faults import FaultInjector
from falq.emulator.outputs import OutputMaker
from falq.emulator.platform import Ledger
from falq.emulator.render import Renderer
from falq.emulator.state import COMPLETED, IN_PROGRESS, IN_QUEUE, Client, KeyQueue, RequestRecord, Stats
from falq.emulator.storage import FileStore
from falq.shared.errors import InvalidInput
from falq.shared.fal.endpoints import validate_input

LOCKED_DETAIL = "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
CANCELLED_BODY = {"detail": "Request was cancelled", "error_type": "client_cancelled"}
DISCONNECTED_BODY = {"detail": "Runner disconnected", "error_type": "runner_disconnected"}
TIMEOUT_BODY = {"detail": "Request timed out before it started", "error_type": "request_timeout"}
#: The result of a request that succeeded, under the ``result_5xx_*`` fault (fal-ai/fal#694).
RESULT_500_BODY = {"detail": "Internal Server Error"}
START_TIMEOUT_HEADERS = {"X-Fal-Request-Timeout-Type": "user"}
EXPIRED_BODY = {"detail": "Request result not found or expired"}
VALIDATION_ERROR_TYPE = "validation_error"
MODERATION_ERROR_TYPE = "content_policy_violation"
RECORDED_HEADER_PREFIXES = ("x-falq-", "x-fal-")
# fal: "If the result is 10 KB or larger, fal keeps it for 6 minutes". Whether fal means
# 10,000 or 10,240 bytes, and whether it measures the JSON as sent, is not documented; we
# take the JSON body as the emulator sends it and 10 KiB.
LARGE_RESULT_BYTES = 10 * 1024


def moderation_body(prompt: Any) -> dict[str, Any]:
    """fal's 422 body for content the checker flagged (shape from fal's error reference).

    The category is fixed: the emulator has no checker, and ``sexual`` is the category the
    reference shows; clients must not depend on it.
    """
    return {
        "detail": [
            {
                "loc": ["body", "prompt"],
                "msg": "The content was flagged by a content checker.",
                "type": MODERATION_ERROR_TYPE,
                "url": "https://docs.fal.ai/errors#content_policy_violation",
                "input": prompt,
                "categories": ["sexual"],
            }
        ]
    }


def _prompt_of(data: Any) -> str | None:
    prompt = data.get("prompt") if isinstance(data, dict) else None
    return prompt if isinstance(prompt, str) else None


def key_hash(key: str) -> str:
    """A short non-reversible id of an API key, safe to show."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _log_entry(message: str, level: str = "INFO", after: str | None = None) -> dict[str, str]:
    """A fal log entry stamped now, at microsecond precision and strictly after ``after``.

    Clients deduplicate a moving window of logs by (timestamp, message), so two entries of
    one request must never share a timestamp; ``timespec`` keeps the format fixed (plain
    ``isoformat`` drops the fraction when it happens to be zero).
    """
    now = datetime.now(UTC)
    if after is not None:
        previous = datetime.fromisoformat(after)
        if now <= previous:
            now = previous + timedelta(microseconds=1)
    stamp = now.isoformat(timespec="microseconds")
    return {"message": message, "level": level, "source": "USER", "timestamp": stamp}


def _detail_from_invalid(exc: InvalidInput) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors:
        loc: list[str | int] = ["body"]
        for part in err.field.split(".") if err.field and err.field != "input" else []:
            loc.append(int(part) if part.isdigit() else part)
        kind = "missing" if err.message == "is required" else "value_error"
        out.append({"loc": loc, "msg": err.message, "type": kind})
    return out


class Emulator:
    """The queue engine behind the HTTP routes. Create it once per server.

    Must be used from one asyncio loop (the server's); ``config`` may be replaced at any
    time through :meth:`set_config`.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.faults = FaultInjector(self.config)
        self.renderer = Renderer(self.config.render_cache_size, self.config.render_cache_mb * 2**20)
        self.files = FileStore()
        self.signer = webhooks.WebhookSigner()
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emulator-render")
        self.rng = random.Random()
        self.outputs = OutputMaker(self.files, self.renderer, self.executor)
        self._http: httpx.AsyncClient | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.generation = 0
        #: Until when (unix time) submits meet the edge outage of ``submit_outage_s``.
        self.outage_until = time.time() + self.config.submit_outage_s if self.config.submit_outage_s else 0.0
        self._clear()

    def _clear(self) -> None:
        self.records: dict[str, RequestRecord] = {}
        self.order: list[RequestRecord] = []
        self._times: list[float] = []
        self.queues: dict[str, KeyQueue] = {}
        self.stats = Stats()
        #: What this emulator billed (the platform API's billing events, :mod:`falq.emulator.platform`).
        self.ledger = Ledger()
        self.running_cancels = 0  # cancels of running requests so far (cancel_ignored_share)

    # --- configuration ------------------------------------------------------------------

    def set_config(self, config: EmulatorConfig) -> None:
        """Swap the config; reschedules every key (the concurrency cap may have grown)."""
        old = self.config
        self.config = config
        self.faults.configure(config, reseed=config.fault_seed != old.fault_seed)
        if config.submit_outage_s != old.submit_outage_s:
            self.outage_until = time.time() + config.submit_outage_s if config.submit_outage_s else 0.0
        self.renderer.cache_size = config.render_cache_size
        self.renderer.cache_bytes = config.render_cache_mb * 2**20
        for kh in list(self.queues):
            self._schedule(kh)

    def reset(self) -> None:
        """Forget every request, file and counter; running requests are abandoned."""
        self.generation += 1
        for rec in self.records.values():
            if rec.task is not None and not rec.task.done():
                rec.task.cancel()
            if rec.timeout_handle is not None:
                rec.timeout_handle.cancel()
        self._clear()
        self.outage_until = 0.0
        self.files.clear()
        self.renderer.clear()
        self.faults.configure(self.config, reseed=True)

    async def aclose(self) -> None:
        self.reset()
        for task in list(self._background):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # --- submit --------------------------------------------------------------------------

    def submit(
        self,
        endpoint: str,
        body: bytes,
        key: str,
        headers: dict[str, str],
        webhook_url: str | None,
        base_url: str,
    ) -> RequestRecord:
        """Accept a submission (validation happens later, as on fal) and queue it.

        Refusals that create no request (locked key, submit-time moderation) are the
        caller's job: see :meth:`submit_refusal`.
        """
        rid = str(uuid.uuid4())
        rec = RequestRecord.new(rid, endpoint, key_hash(key))
        rec.key_suffix = key[-4:] if len(key) >= 8 else ""
        rec.generation = self.generation
        rec.base_url = self.config.public_url or base_url
        rec.webhook_url = webhook_url
        rec.headers = {k: v for k, v in headers.items() if k.startswith(RECORDED_HEADER_PREFIXES)}
        rec.priority = "low" if headers.get("x-fal-queue-priority", "").strip().lower() == "low" else "normal"
        try:
            rec.input = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            rec.input = {"_raw": body[:1000].decode("utf-8", "replace")}
            rec.parse_error = {"detail": [{"loc": ["body"], "msg": "Body is not valid JSON", "type": "json_invalid"}]}
        # fal: X-Fal-Request-Start-Timeout is the new name, the deprecated X-Fal-Request-Timeout is
        # honoured, and the new one wins when both are sent.
        timeout = headers.get("x-fal-request-start-timeout") or headers.get("x-fal-request-timeout")
        with contextlib.suppress(ValueError):
            rec.start_timeout_s = float(timeout) if timeout else None
        rec.store_io = headers.get("x-fal-store-io", "").strip().lower() not in ("0", "false")
        rec.sync_mode = isinstance(rec.input, dict) and rec.input.get("sync_mode") is True
        rec.inject_error = self.faults.draw_completed_error()
        prompt = _prompt_of(rec.input)
        marked = prompt is not None and self.config.moderation_marker in prompt
        rec.moderated = marked or self.faults.draw_moderation()
        self.records[rid] = rec
        self.order.append(rec)
        self._times.append(rec.submitted_at)
        queue = self.queue_of(rec)
        queue.push(rec)
        if rec.start_timeout_s is not None and rec.start_timeout_s > 0:
            loop = asyncio.get_running_loop()
            rec.timeout_handle = loop.call_later(rec.start_timeout_s, self._start_timeout, rec)
        self._schedule(rec.key_hash)
        return rec

    def submit_refusal(self, key: str, body: bytes) -> tuple[int, dict[str, Any]] | None:
        """The answer to a submit refused before any request exists, or None to accept it.

        A locked key gets ``locked_status`` (403 live, 402 legacy) with fal's lock text; a
        prompt with ``moderation_submit_marker`` gets the moderation 422. Neither carries a
        request id, and neither is billed.
        """
        cfg = self.config
        if key in cfg.locked_keys:
            self.stats.rejected_submits["locked"] += 1
            return cfg.locked_status, {"detail": LOCKED_DETAIL}
        if cfg.moderation_submit_marker.encode() in body:  # cheap pre-check before parsing
            try:
                prompt = _prompt_of(json.loads(body))
            except (ValueError, UnicodeDecodeError):
                prompt = None
            if prompt is not None and cfg.moderation_submit_marker in prompt:
                self.stats.rejected_submits["moderated"] += 1
                self.stats.moderations["submit"] += 1
                return 422, moderation_body(prompt)
        return None

    def note_call(self, rid: str | None, kind: str, client: Client | None) -> None:
        """Connection accounting: one HTTP call of ``kind`` on request ``rid`` from ``client``.

        ``client`` is the ASGI ``scope["client"]`` (host, port); uvicorn gives one per TCP
        connection, so the distinct tuples count connections. Faulted calls count too (a
        client's retries are calls it made); calls on unknown ids (404s, refused submits)
        only count towards the global connection set.
        """
        if client is not None:
            self.stats.clients.add(client)
        rec = self.records.get(rid) if rid else None
        if rec is None:
            return
        rec.calls[kind] += 1
        if client is not None:
            rec.clients.add(client)

    def queue_of(self, rec: RequestRecord) -> KeyQueue:
        q = self.queues.get(rec.key_hash)
        if q is None:
            q = self.queues[rec.key_hash] = KeyQueue()
        return q

    def urls(self, rec: RequestRecord) -> dict[str, str]:
        base = f"{rec.base_url}/{rec.app}/requests/{rec.id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    def log_window(self, rec: RequestRecord) -> list[dict[str, str]]:
        """The logs a polled status shows: the most recent ``status_logs_window`` entries.

        fal's polled status returns a moving window of recent logs, not the whole list
        (fal-ai/fal ``cli/api.py``, commit ``11e50141``); its size there is not documented,
        10 is our guess. 0 returns every entry (the emulator's old behaviour).
        """
        window = self.config.status_logs_window
        return list(rec.logs[-window:] if window else rec.logs)

    def status_body(self, rec: RequestRecord, with_logs: bool, window: bool = True) -> dict[str, Any]:
        """The status JSON as fal sends it (``queue_position`` only while IN_QUEUE).

        ``window=False`` puts every log entry in (the legacy stream's frames).
        """
        body: dict[str, Any] = {"status": rec.state, "request_id": rec.id, **self.urls(rec)}
        logs = (self.log_window(rec) if window else list(rec.logs)) if with_logs else None
        body["logs"] = logs if rec.state != IN_QUEUE else None
        if rec.state == IN_QUEUE:
            body["queue_position"] = self.queue_of(rec).position(rec)
        elif rec.state == COMPLETED:
            body["metrics"] = {"inference_time": rec.inference_time} if rec.inference_time is not None else {}
            if rec.error is not None:
                body["error"] = rec.error
                body["error_type"] = rec.error_type
        return body

    # --- scheduling ----------------------------------------------------------------------

    def _schedule(self, kh: str) -> None:
        queue = self.queues.get(kh)
        if queue is None:
            return
        limit = self.config.concurrency
        while limit == 0 or queue.in_progress < limit:
            rec = queue.pop()
            if rec is None:
                return
            self._start(rec, queue)

    def _start(self, rec: RequestRecord, queue: KeyQueue) -> None:
        if rec.timeout_handle is not None:
            rec.timeout_handle.cancel()
            rec.timeout_handle = None
        rec.state = IN_PROGRESS
        rec.started_at = time.time()
        self.stats.started(queue)
        rec.task = asyncio.get_running_loop().create_task(self._run(rec, queue))
        rec.notify()

    def _start_timeout(self, rec: RequestRecord) -> None:
        if rec.state != IN_QUEUE or rec.generation != self.generation:
            return
        self.queue_of(rec).remove(rec)
        rec.timeout_handle = None
        rec.start_timed_out = True
        self._complete(rec, 504, TIMEOUT_BODY, "Request timed out", "request_timeout", dict(START_TIMEOUT_HEADERS))

    def start_timeout_answer(self, rec: RequestRecord) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        """The 504 a status call or stream gets for a request dropped at its start timeout
        (``start_timeout_status="504"``), else None (answer as usual)."""
        if rec.start_timed_out and self.config.start_timeout_status == "504":
            return 504, dict(TIMEOUT_BODY), dict(START_TIMEOUT_HEADERS)
        return None

    def submit_outage(self) -> bool:
        """Whether a submit now meets the edge outage of ``submit_outage_s``."""
        return self.outage_until > 0 and time.time() < self.outage_until

    def result_fault(self, rec: RequestRecord) -> bool:
        """Whether this result GET of a request that succeeded answers the 500 naming it."""
        cfg = self.config
        if rec.result_status != 200 or "result" not in cfg.fault_calls:
            return False
        rec.result_gets += 1
        hit = rec.result_gets <= cfg.result_5xx_first or (
            cfg.result_5xx_with_id > 0 and self.faults.rng.random() < cfg.result_5xx_with_id)
        if hit:
            self.stats.faults["result_5xx_with_id"] += 1
        return hit

    async def _run(self, rec: RequestRecord, queue: KeyQueue) -> None:
        t0 = time.monotonic()
        try:
            await self._execute(rec, t0)
        except asyncio.CancelledError:
            if not rec.cancelled or rec.generation != self.generation:
                raise
            rec.inference_time = time.monotonic() - t0
            self._complete(rec, 499, CANCELLED_BODY, "Request was cancelled", "client_cancelled")
        except Exception as exc:  # a bug or an unreadable input: fail the request, not the server
            rec.inference_time = time.monotonic() - t0
            body = {"detail": f"Internal error: {type(exc).__name__}: {exc}", "error_type": "internal_error"}
            self._complete(rec, 500, body, "Internal error", "internal_error")
        finally:
            if rec.generation == self.generation:
                self.stats.finished(queue)
                self._schedule(rec.key_hash)

    async def _execute(self, rec: RequestRecord, t0: float) -> None:
        if rec.parse_error is not None:  # body was not JSON
            await asyncio.sleep(0.01)
            self._fail_validation(rec, rec.parse_error)
            return
        try:
            parsed = validate_input(rec.endpoint, rec.input)
        except InvalidInput as exc:
            await asyncio.sleep(0.01)
            self._fail_validation(rec, {"detail": _detail_from_invalid(exc)})
            return
        latency = self.config.latency_dist().sample(self.rng)
        self._log(rec, f"Starting {rec.endpoint} (emulated)")
        if rec.inject_error:
            await asyncio.sleep(latency / 2)
            rec.inference_time = time.monotonic() - t0
            self._complete(rec, 503, DISCONNECTED_BODY, "Runner disconnected", "runner_disconnected")
            return
        steps = self.config.log_steps
        for i in range(steps):
            await asyncio.sleep(latency / (steps + 1))
            self._log(rec, f"step {i + 1}/{steps}")
        seed = parsed.seed if parsed.seed is not None else self.rng.randint(0, 2**31 - 1)
        rec.seed = seed
        if rec.moderated:
            # fal's checker usually judges the generated image, so the request runs its
            # full time and is then refused; nothing is rendered or billed.
            remaining = latency - (time.monotonic() - t0)
            if remaining > 0:
                await asyncio.sleep(remaining)
            rec.inference_time = round(time.monotonic() - t0, 4)
            self.stats.moderations["completed"] += 1
            self._complete(rec, 422, moderation_body(parsed.prompt), "Invalid status code: 422", MODERATION_ERROR_TYPE)
            return
        tiny = self.config.tiny_max_px if self.config.tiny_images else 0
        output, notes = await self.outputs.make(parsed, rec.endpoint, rec.base_url, seed=seed, tiny_max_px=tiny,
                                                small=self.config.small_images)  # fmt: skip
        for note in notes:
            self._log(rec, note, "WARN")
        remaining = latency - (time.monotonic() - t0)
        if remaining > 0:
            await asyncio.sleep(remaining)
        rec.inference_time = round(time.monotonic() - t0, 4)
        self._complete(rec, 200, output, None, None)

    def _fail_validation(self, rec: RequestRecord, body: dict[str, Any]) -> None:
        rec.inference_time = 0.01
        self._complete(rec, 422, body, "Invalid status code: 422", VALIDATION_ERROR_TYPE)

    def _log(self, rec: RequestRecord, message: str, level: str = "INFO") -> None:
        rec.logs.append(_log_entry(message, level, rec.logs[-1]["timestamp"] if rec.logs else None))
        rec.notify()

    # --- completion, cancel, result --------------------------------------------------------

    def _complete(
        self,
        rec: RequestRecord,
        code: int,
        body: Any,
        error: str | None,
        error_type: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        rec.state = COMPLETED
        rec.completed_at = time.time()
        rec.result_status, rec.result_body = code, body
        rec.error, rec.error_type = error, error_type
        rec.result_headers = dict(headers or {})
        rec.result_size = len(json.dumps(body, separators=(",", ":")))
        if error_type:
            rec.result_headers["X-Fal-Error-Type"] = error_type
        if code == 200:
            # fal reports what it billed in this header on inference answers (seen in
            # public code that logs it); for these endpoints a unit is one image.
            images = body.get("images") if isinstance(body, dict) else None
            units = len(images) if isinstance(images, list) else 1
            rec.result_headers["x-fal-billable-units"] = str(units)
            self.ledger.bill(rec, units, self.config)
        rec.notify()
        if rec.webhook_url:
            ok = code == 200
            err = None if ok else f"Invalid status code: {code}"
            payload = webhooks.payload(rec.id, ok, body, err)
            self._spawn(self._deliver_webhook(rec, payload))

    async def _deliver_webhook(self, rec: RequestRecord, payload: dict[str, Any]) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient()
        cfg = self.config
        assert rec.webhook_url is not None
        rec.webhook_history = await webhooks.deliver(
            self._http,
            self.signer,
            rec.webhook_url,
            rec.id,
            cfg.webhook_user_id,
            payload,
            attempts=cfg.webhook_attempts,
            first_delay_s=cfg.webhook_retry_delay_s,
            timeout_s=cfg.webhook_timeout_s,
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def cancel(self, rec: RequestRecord) -> tuple[int, dict[str, Any]]:
        """fal's cancel: 202 CANCELLATION_REQUESTED while pending, else 400 ALREADY_COMPLETED."""
        if rec.state == COMPLETED:
            return 400, {"status": "ALREADY_COMPLETED"}
        if rec.state == IN_QUEUE:
            self.queue_of(rec).remove(rec)
            if rec.timeout_handle is not None:
                rec.timeout_handle.cancel()
            rec.cancelled = True
            self._complete(rec, 499, CANCELLED_BODY, "Request was cancelled", "client_cancelled")
        elif not rec.cancelled:
            rec.cancelled = True
            share = self.config.cancel_ignored_share
            self.running_cancels += 1
            k = self.running_cancels
            if math.floor(k * share) > math.floor((k - 1) * share):
                # The app has no cancel handler: the request runs on and completes, billed.
                rec.cancel_ignored = True
                self.stats.faults["cancel_ignored"] += 1
            elif rec.task is not None:
                rec.task.cancel()
        return 202, {"status": "CANCELLATION_REQUESTED"}

    def retention_s(self, rec: RequestRecord) -> float:
        """How long ``rec``'s result stays readable after completion, under the current config.

        fal (https://fal.ai/docs/inference-api/queue/result): 1 hour, 6 minutes for results
        of 10 KB or more, or the payload storage period when that is on, which is the
        default (30 days). Opting out (``X-Fal-Store-IO: 0``) or ``sync_mode`` ("not kept in
        request history") gets the short classes.
        """
        cfg = self.config
        if rec.store_io and not rec.sync_mode:
            return cfg.payload_retention_s
        return cfg.result_retention_large_s if rec.result_size >= LARGE_RESULT_BYTES else cfg.result_retention_s

    def result_expired(self, rec: RequestRecord, now: float | None = None) -> bool:
        """Whether the retention of a completed request's result has run out.

        Computed at GET time from the current config, so a test can shrink retention on a
        running emulator and see results expire.
        """
        if rec.completed_at is None:
            return False
        return (time.time() if now is None else now) - rec.completed_at >= self.retention_s(rec)

    def result(self, rec: RequestRecord) -> tuple[int, Any, dict[str, str]]:
        """The result answer: code, body, extra headers (the caller adds x-fal-request-id).

        An expired result answers 404 ``{"detail": "Request result not found or
        expired"}``. Evidence for that exact answer is thin: fal documents the retention
        but not the answer after it; a 404 with a detail is what its queue gives for an
        unknown result, so we assume that. Status keeps answering COMPLETED.
        """
        if rec.state != COMPLETED:
            return 400, {"detail": "Request is still in progress"}, {}
        if self.result_expired(rec):
            return 404, dict(EXPIRED_BODY), {}
        if self.result_fault(rec):
            return 500, dict(RESULT_500_BODY), {}
        return rec.result_status or 500, rec.result_body, rec.result_headers

    async def wait_change(self, rec: RequestRecord, timeout: float) -> None:
        """Return when ``rec`` changes (state, logs, queue position) or after ``timeout`` s."""
        waiters = [asyncio.ensure_future(rec.changed().wait())]
        if rec.state == IN_QUEUE:
            waiters.append(asyncio.ensure_future(self.queue_of(rec).changed.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    # --- introspection -------------------------------------------------------------------

    def introspect(self, since: float | None = None) -> dict[str, Any]:
        start = bisect.bisect_left(self._times, since) if since is not None else 0
        reqs = [r.summary() for r in self.order[start:]]
        per_key = {kh: q.peak for kh, q in self.queues.items()}
        return {
            "now": time.time(),
            "requests": reqs,
            "peak_in_flight": {"overall": self.stats.peak_in_flight, "per_key": per_key},
            "in_flight": {
                "overall": self.stats.in_progress,
                "per_key": {kh: q.in_progress for kh, q in self.queues.items()},
            },
            "queued": {kh: len(q) for kh, q in self.queues.items()},
            "rejected": dict(self.stats.rejected),
            "rejected_submits": dict(self.stats.rejected_submits),
            "faults": dict(self.stats.faults),
            "moderations": dict(self.stats.moderations),
            "connections_total": len(self.stats.clients),
            "counts": dict(self.stats.calls),
            "total_requests": len(self.order),
        }
