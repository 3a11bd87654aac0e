"""Emulator configuration: latency, concurrency, keys, fault rates, image knobs.

Every field can be changed at runtime through ``POST /_emulator/config`` (a partial JSON
update, validated as a whole), so one running emulator can serve a whole chaos run.

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
        log_steps: "step i/N" log lines appended while a request is IN_PROGRESS.
        accepted_keys: if set, only these keys pass auth (else any non-empty key).
        locked_keys: keys whose submissions get 402 "User is locked".
        fail_5xx / fail_429 / drop / slow: per-call fault rates in [0, 1], applied to the
            call kinds in ``fault_calls``; ``slow`` delays the answer by ``slow_s``.
        completed_error: per-request rate of finishing COMPLETED with ``runner_disconnected``.
        fault_seed: seeds the fault RNG (None: random).
        retry_after_rate: share of injected 429s that carry ``Retry-After: retry_after_s``.
        fail_5xx_codes: status codes drawn for injected 5xx (nginx-style, no x-fal-request-id).
        tiny_images: render at most ``tiny_max_px`` per side (about 1 KB files) for benchmarks.
        render_cache_size: LRU entries of rendered images.
        stream_interval_s: SSE heartbeat: a frame at least this often while waiting.
        webhook_*: delivery attempts, first retry delay (doubles), per-attempt timeout, user id.
        public_url: base URL put in returned URLs (default: the Host the client used).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency: str = "fixed:1"
    concurrency: int = Field(40, ge=0)
    log_steps: int = Field(5, ge=0, le=1000)
    accepted_keys: list[str] | None = None
    locked_keys: list[str] = Field(default_factory=list)
    fail_5xx: Rate = Field(0.0, ge=0, le=1)
    fail_429: Rate = Field(0.0, ge=0, le=1)
    drop: Rate = Field(0.0, ge=0, le=1)
    slow: Rate = Field(0.0, ge=0, le=1)
    slow_s: float = Field(2.0, ge=0)
    completed_error: Rate = Field(0.0, ge=0, le=1)
    fault_seed: int | None = None
    fault_calls: list[CallKind] = Field(default_factory=lambda: list(CALL_KINDS))
    retry_after_rate: Rate = Field(0.5, ge=0, le=1)
    retry_after_s: int = Field(1, ge=0)
    fail_5xx_codes: list[int] = Field(default_factory=lambda: [502, 503, 504])
    tiny_images: bool = False
    tiny_max_px: int = Field(64, ge=1, le=512)
    render_cache_size: int = Field(128, ge=0)
    stream_interval_s: float = Field(1.0, gt=0, le=30)
    webhook_attempts: int = Field(4, ge=1, le=20)
    webhook_retry_delay_s: float = Field(0.5, ge=0)
    webhook_timeout_s: float = Field(15.0, gt=0)
    webhook_user_id: str = "falq-emulator-user"
    public_url: str | None = None

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
