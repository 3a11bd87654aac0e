"""Emulator configuration: latency, concurrency, keys, fault rates, image knobs.

Every field can be changed at runtime through ``POST /_emulator/config`` (a partial JSON
update, validated as a whole), so one running emulator can serve a whole chaos run.

The defaults follow the live fal service as far as the public evidence goes (see
``shared/reference/fal-queue-protocol.md`` section 10): a locked account is a 403, status
streams stay quiet between changes, polled logs are a moving window, results expire,
outputs have realistic sizes. The behaviours an older emulator had are kept behind named
options (``locked_status=402``, ``stream_mode="legacy"``, ``status_logs_window=0``,
``small_images=True``) for the tests that need them.

Example::

    >>> cfg = EmulatorConfig(latency="uniform:1,3", concurrency=2, fail_429=0.1)
    >>> cfg.updated({"concurrency": 5}).concurrency
    5
    >>> parse_latency("lognormal:0.5,0.3").kind
    'lognormal'
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CallKind = Literal["submit", "status", "stream", "result", "cancel", "file"]
CALL_KINDS: tuple[CallKind, ...] = ("submit", "status", "stream", "result", "cancel", "file")

Rate = float  # documented as a probability in [0, 1]


@dataclass(frozen=True)
class Latency:
    """A parsed latency distribution; :meth:`sample` draws seconds (never negative).

    Forms: ``0``, ``2`` or ``fixed:2``, ``uniform:lo,hi``, ``lognormal:mu,sigma`` (of the
    underlying normal, in log-seconds), ``normal:mean,sd`` (clipped at 0).
    """

    kind: str
    a: float = 0.0
    b: float = 0.0

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "lognormal":
            return rng.lognormvariate(self.a, self.b)
        return max(0.0, rng.gauss(self.a, self.b))


def parse_latency(spec: str) -> Latency:
    """Parse a latency spec string; raise ValueError with the accepted forms when invalid."""
    text = spec.strip().lower()
    kind, _, args = text.partition(":") if ":" in text else ("fixed", "", text)
    forms = "use 0, N, fixed:N, uniform:LO,HI, lognormal:MU,SIGMA or normal:MEAN,SD (seconds)"
    try:
        nums = [float(x) for x in args.split(",")] if args else []
    except ValueError:
        raise ValueError(f"bad latency {spec!r}: {forms}") from None
    want = {"fixed": 1, "uniform": 2, "lognormal": 2, "normal": 2}
    if kind not in want or len(nums) != want[kind] or not all(math.isfinite(n) for n in nums):
        raise ValueError(f"bad latency {spec!r}: {forms}")
    if kind == "fixed" and nums[0] < 0:
        raise ValueError("fixed latency must be >= 0")
    if kind == "uniform" and not 0 <= nums[0] <= nums[1]:
        raise ValueError("uniform latency needs 0 <= LO <= HI")
    if kind in ("lognormal", "normal") and nums[1] < 0:
        raise ValueError(f"{kind} latency needs a non-negative spread")
    return Latency(kind, nums[0], nums[1] if len(nums) > 1 else 0.0)


class EmulatorConfig(BaseModel):
    """Everything that shapes the emulator's behaviour.

    Parameters (all optional):
        latency: inference time distribution (see :func:`parse_latency`), default ``fixed:1``.
        concurrency: max requests IN_PROGRESS per key; 0 means unlimited (fal: 2..40).
        log_steps: "step i/N" log lines appended while a request is IN_PROGRESS (default
            12, so that with the "Starting" line a request logs more than
            ``status_logs_window`` entries and the window is visible).
        accepted_keys: if set, only these keys pass auth (else any non-empty key).
        locked_keys: keys whose submissions are refused as a locked account ("User is
            locked. Reason: Exhausted balance. ..."); no request is created.
        locked_status: the status code of that refusal: 403 as the live service answers
            (default), or 402, what this emulator answered before (legacy).
        moderation_marker: a prompt containing it (default ``[[moderate]]``) runs and then
            finishes COMPLETED with ``error_type`` ``content_policy_violation``; its result
            answers 422 with fal's content-checker body.
        moderation_submit_marker: a prompt containing it (default ``[[moderate:submit]]``)
            is refused at submit with that 422 body; no request is created.
        moderation_rate: per-request rate of that moderation outcome for any prompt, drawn
            at submit from the fault RNG (default 0).
        fail_5xx / fail_429 / drop / slow: per-call fault rates in [0, 1], applied to the
            call kinds in ``fault_calls``; ``slow`` delays the answer by ``slow_s``.
        submit_500_created: per-submit rate of the ambiguous failure: the request IS
            created and runs, but the submit answers 500 ``{"detail": "Internal server
            error"}`` with its ``x-fal-request-id`` (fal may have created the request).
        completed_error: per-request rate of finishing COMPLETED with ``runner_disconnected``.
        cancel_ignored_share: the share of cancels of a *running* request that the app ignores:
            the request goes on and completes, billed (fal's cancel docs: "the model app decides
            how to stop the work"; fal's e2e ``test_app_cancellation``: an app without a cancel
            handler "should just ignore the cancellation"). Whether Qwen-Image-2 honours cancels
            is unknown, so by default half do (0.5). The share is spread deterministically over
            the cancels of running requests (the k-th is ignored when ``floor(k*share)`` grows),
            so the first such cancel is honoured at 0.5 and a run replays. A queued request is
            always removed (nothing billed).
        result_5xx_with_id: per-call rate at which the result GET of a request that succeeded
            answers 500 ``{"detail": "Internal Server Error"}`` **with** ``x-fal-request-id``
            (fal-ai/fal#694; how often the live service does it is not established). A fault
            option, 0 by default; applies when ``result`` is in ``fault_calls``.
        result_5xx_first: the first this many result GETs of every successful request answer
            that 500 (a deterministic form of the same fault; 0 by default).
        submit_outage_s: an edge outage on submit: from the moment this value is set (changed
            to a positive number), every submit for this many seconds answers fal's nginx 502
            page without ``x-fal-request-id``; nothing is created. 0 (default): none. Set it to
            0 and back to start another outage of the same length.
        start_timeout_status: how status calls and the status stream report a request fal
            dropped at its start timeout: ``504`` (default) answers 504 with
            ``X-Fal-Request-Timeout-Type: user`` on them as on the result (the live service may
            answer either way, reference section 11.5); ``completed`` answers COMPLETED with
            ``error_type`` ``request_timeout`` and keeps the 504 for the result only.
        fault_seed: seeds the fault RNG (None: random).
        fault_calls: the call kinds the per-call faults apply to (default: all).
        retry_after_rate: share of injected 429s that carry ``Retry-After: retry_after_s``.
        fail_5xx_codes: status codes drawn for injected 5xx (nginx-style, no x-fal-request-id).
        small_images: render the old flat-colour backgrounds (25-55 KB per 1 MP PNG)
            instead of realistic-size textured ones (about 1.7 MB), for fast tests.
        tiny_images: render at most ``tiny_max_px`` per side (about 1 KB files) for benchmarks.
        render_cache_size: LRU entries of rendered images.
        render_cache_mb: byte bound of that cache in MiB (0: entries only); a realistic
            1 MP PNG is about 1.7 MB, so 128 entries alone could hold over 200 MB.
        stream_mode: ``live`` (default): the status stream sends a ``data:`` event only when
            the state, queue position or logs change, new log entries only, and a ``: ping``
            comment every ``stream_heartbeat_s`` while nothing changes. ``legacy``: a data
            frame at least every ``stream_interval_s``, each with every log entry.
        stream_heartbeat_s: live mode: seconds between ``: ping`` comments (fal: about 15).
        stream_interval_s: legacy mode: a frame at least this often while waiting.
        status_logs_window: polled status with ``logs=1`` returns the most recent this many
            log entries (default 10); 0 returns all of them (legacy).
        result_retention_s: how long a result stays readable after completion when the
            submit opted out of payload storage (``X-Fal-Store-IO: 0``) or used
            ``sync_mode``, for result bodies under 10 KB (fal docs: 1 hour).
        result_retention_large_s: the same for result bodies of 10 KB or more (fal: 6 min).
        payload_retention_s: how long results stay readable otherwise, with fal's payload
            storage on (the default there: 30 days). Expiry is computed at GET time from
            the current config, so shrinking these on a running emulator expires results.
        webhook_*: delivery attempts, first retry delay (doubles), per-attempt timeout, user id.
        upload_cdn_outage: storage ``initiate`` with ``storage_type=fal-cdn-v3`` answers 503
            (an nginx page, no request id) while ``storage_type=gcs`` works: the outage
            fal-client's fallback to ``gcs`` exists for (fault option, default off).
        file_access: the account's default file ACL for ``/files/...`` (fal's "file access
            controls"): ``allow`` (public links, fal's default), ``forbid`` (403 without
            credentials) or ``hide`` (404). ``Authorization: Key`` or a URL signed by
            ``POST /v1/storage/files/sign`` passes.
        public_url: base URL put in returned URLs (default: the Host the client used).
        account_prices: the account's unit price per endpoint (USD per image) that the platform
            API's ``/v1/models/pricing`` answers and that billing uses. Deliberately unlike the list
            prices (0.035 / 0.075): 0.03 standard, 0.065 pro, as an account with a discount sees, so a
            client that bills at the list price is visibly wrong.
        admin_keys: keys accepted as ADMIN keys by ``/v1/models/billing-events`` and
            ``/v1/models/usage`` (default ``falq-emulator-admin``); any other key is a 403 there.
        billing_delay_s: billing events appear this long after the request completed (fal's
            records arrive with a delay; default 0 so tests need not wait).
        platform_down: the platform API answers 503 (nginx page) on every call: a pricing outage.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency: str = "fixed:1"
    concurrency: int = Field(40, ge=0)
    log_steps: int = Field(12, ge=0, le=1000)
    accepted_keys: list[str] | None = None
    locked_keys: list[str] = Field(default_factory=list)
    locked_status: Literal[402, 403] = 403
    moderation_marker: str = Field("[[moderate]]", min_length=1)
    moderation_submit_marker: str = Field("[[moderate:submit]]", min_length=1)
    moderation_rate: Rate = Field(0.0, ge=0, le=1)
    fail_5xx: Rate = Field(0.0, ge=0, le=1)
    fail_429: Rate = Field(0.0, ge=0, le=1)
    drop: Rate = Field(0.0, ge=0, le=1)
    slow: Rate = Field(0.0, ge=0, le=1)
    slow_s: float = Field(2.0, ge=0)
    submit_500_created: Rate = Field(0.0, ge=0, le=1)
    completed_error: Rate = Field(0.0, ge=0, le=1)
    cancel_ignored_share: Rate = Field(0.5, ge=0, le=1)
    result_5xx_with_id: Rate = Field(0.0, ge=0, le=1)
    result_5xx_first: int = Field(0, ge=0, le=1000)
    submit_outage_s: float = Field(0.0, ge=0, le=24 * 3600)
    start_timeout_status: Literal["504", "completed"] = "504"
    fault_seed: int | None = None
    fault_calls: list[CallKind] = Field(default_factory=lambda: list(CALL_KINDS))
    retry_after_rate: Rate = Field(0.5, ge=0, le=1)
    retry_after_s: int = Field(1, ge=0)
    fail_5xx_codes: list[int] = Field(default_factory=lambda: [502, 503, 504])
    small_images: bool = False
    tiny_images: bool = False
    tiny_max_px: int = Field(64, ge=1, le=512)
    render_cache_size: int = Field(128, ge=0)
    render_cache_mb: int = Field(256, ge=0)
    stream_mode: Literal["live", "legacy"] = "live"
    stream_heartbeat_s: float = Field(15.0, gt=0, le=300)
    stream_interval_s: float = Field(1.0, gt=0, le=30)
    status_logs_window: int = Field(10, ge=0)
    result_retention_s: float = Field(3600.0, ge=0)
    result_retention_large_s: float = Field(360.0, ge=0)
    payload_retention_s: float = Field(30 * 24 * 3600.0, ge=0)
    webhook_attempts: int = Field(4, ge=1, le=20)
    webhook_retry_delay_s: float = Field(0.5, ge=0)
    webhook_timeout_s: float = Field(15.0, gt=0)
    webhook_user_id: str = "falq-emulator-user"
    upload_cdn_outage: bool = False
    file_access: Literal["allow", "forbid", "hide"] = "allow"
    public_url: str | None = None
    account_prices: dict[str, float] = Field(default_factory=lambda: {
        "fal-ai/qwen-image-2/text-to-image": 0.03, "fal-ai/qwen-image-2/edit": 0.03,
        "fal-ai/qwen-image-2/pro/text-to-image": 0.065, "fal-ai/qwen-image-2/pro/edit": 0.065})
    admin_keys: list[str] = Field(default_factory=lambda: ["falq-emulator-admin"])
    billing_delay_s: float = Field(0.0, ge=0)
    platform_down: bool = False

    @field_validator("latency")
    @classmethod
    def _check_latency(cls, value: str) -> str:
        parse_latency(value)
        return value

    @field_validator("fail_5xx_codes")
    @classmethod
    def _check_codes(cls, value: list[int]) -> list[int]:
        if not value or any(not 500 <= c <= 599 for c in value):
            raise ValueError("must be a non-empty list of 5xx codes")
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    def latency_dist(self) -> Latency:
        """The parsed :attr:`latency`."""
        return parse_latency(self.latency)

    def updated(self, changes: dict[str, Any]) -> EmulatorConfig:
        """A new config with ``changes`` applied; raises pydantic's ValidationError if invalid."""
        return EmulatorConfig.model_validate({**self.model_dump(), **changes})
