"""Global limits on one fal account, kept in Redis so every worker on every host shares them.

One :class:`Limiter` per fal key enforces, atomically in Lua (``shared/lua/limiter_*.lua``),
with time taken from Redis ``TIME``:

* **submissions per second**: a token bucket (GCRA) with a burst, paced
  ``FALQ_RATE_HEADROOM`` (1 %) below the rate, spaces submissions evenly. fal counts a POST
  when it *arrives*, and a starved worker may send late; so right before each POST a
  send check (``confirm``/``answered``) keeps a log of requests on their way and answered,
  and lets no 1-second window at fal hold more than ``rate`` (+ burst - 1) submissions.
  With burst 1 that is exactly ``rate``; a burst of B lets B-1 more through after a lull.
  The price: a request's arrival is only known to lie between its send and its answer, so
  each ``rate`` sends take 1 s plus one submit round trip (about 99 % of the rate on a LAN,
  about 90 % with 100 ms to fal). ``FALQ_RATE_STRICT=false`` keeps the even pacing only.
* **requests outstanding at fal**: slots are leases (ZSET member = job id, score = expiry).
  The process following a job renews its slot; a dead worker's slots expire after
  ``FALQ_SLOT_LEASE_S``.
* **priority**: while any interactive job waits for a token or a slot, bulk jobs wait too.
* **the daily budget**: each admission reserves the job's estimated cost in integer
  micro-dollars for the UTC day (of Redis' clock); a job that would go over waits, paused.
* **per tenant** (:mod:`falq.shared.tenants.store`), on top of all of the above: the tenant's own
  requests outstanding (``:slots:t:{tenant}``), submissions per second (a GCRA of its own)
  and daily budget (``{p}:tspend:{day}:{tenant}``). Over its budget only that tenant pauses
  (``tenant_budget``; the job shows ``paused: budget``) and the others go on.
* **a key-wide pause** after fal answered 403 "User is locked": nobody submits until it expires
  (``FALQ_LOCKED_PAUSE_S``, renewed by every new refusal) or ``falq limits set --resume``.

The configuration lives in the hash ``{prefix}:limits:config`` and is read by the script
on every admission, so ``falq limits set`` takes effect at once on every worker.

Example::

    lim = Limiter(redis_client, settings)
    ans = lim.acquire(job_id, "fal-ai/qwen-image-2/edit", "bulk", cost_micro=35_000)
    if ans.ok:
        time.sleep(ans.delay_s)             # the reserved token's time
        wait_ms, at = (0, ans.sent_ms) if ans.sent_ms else lim.confirm(job_id)  # (0, ...): POST now
        ...; lim.answered(job_id, at + elapsed_ms); ...; lim.release(job_id, refund=False)
    else: retry after ans.wait_s + random.uniform(0, ans.spread_s)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import redis

from falq.shared.keys import HOLE, Keys
from falq.shared.redisconn import text
from falq.shared.scripts import register
from falq.shared.settings import Settings

CONFIG_FIELDS = ("rate", "burst", "max_outstanding", "max_outstanding_per_endpoint", "budget_daily")
NO_BUDGET = "none"


def key_id(fal_key: str | None) -> str:
    """A short, stable id for a fal key (never the key itself): 12 hex chars of its sha256."""
    if not fal_key:
        return "nokey"
    return hashlib.sha256(fal_key.encode()).hexdigest()[:12]


def micro(usd: float) -> int:
    """Dollars as integer micro-dollars (no float drift when summed in Redis)."""
    return math.floor(usd * 1_000_000 + 0.5)


def config_defaults(s: Settings) -> dict[str, str]:
    """The configuration a worker seeds from its environment when the hash lacks a field."""
    return {
        "rate": repr(float(s.rate_per_s)),
        "burst": str(int(s.rate_burst)),
        "max_outstanding": str(int(s.max_outstanding)),
        "max_outstanding_per_endpoint": json.dumps(s.max_outstanding_per_endpoint or {}),
        "budget_daily": NO_BUDGET if s.budget_daily is None else repr(float(s.budget_daily)),
    }


@dataclass(frozen=True)
class Answer:
    """The limiter's answer to one admission request.

    ``status`` is ``ok`` or why not: ``locked``, ``budget``, ``tenant_budget`` (the job's
    tenant is over its own daily budget), ``priority``, ``slots``, ``endpoint``, ``tenant``
    (the tenant's own outstanding cap), ``rate``. When ``ok``, sleep ``delay_s`` (the reserved token's time) and
    submit. Otherwise ask again after ``wait_s`` plus a random share of ``spread_s``.
    ``sent_ms``: when ``ok``, the Redis time the send check passed and logged the POST, as
    :meth:`Limiter.confirm` answers it (0: call :meth:`Limiter.confirm` before the POST).
    """

    status: str
    delay_s: float = 0.0
    wait_s: float = 0.0
    spread_s: float = 0.0
    at_ms: int = 0
    sent_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class KeyState:
    """What ``falq limits show`` prints for one fal key."""

    key_id: str
    suffix: str
    now_ms: int
    today: str
    outstanding: int
    per_endpoint: dict[str, int]
    waiting: dict[str, int]
    paused_for_s: float
    paused_reason: str
    spend_today_usd: float


class Limiter:
    """The shared limits of one fal key.

    Parameters:
        client: Redis connection.
        settings: key prefix, the fal key (hashed into the key id), lease time, defaults.
        kid: override the key id (the CLI inspects keys it does not hold).
    """

    def __init__(self, client: redis.Redis, settings: Settings, *, kid: str | None = None) -> None:
        self.r = client
        self.s = settings
        self.prefix = settings.key_prefix
        self.keys = Keys(self.prefix)
        self.kid = kid or key_id(settings.fal_key_value())
        self.lease_ms = int(settings.slot_lease_s * 1000)
        self._acquire = register(client, "limiter.acquire")
        self._confirm = register(client, "limiter.confirm")
        self._answered = register(client, "limiter.answered")
        self._hold = register(client, "limiter.hold")
        self._release = register(client, "limiter.release")
        self._renew = register(client, "limiter.renew")
        self._state = register(client, "limiter.state")
        k, kid = self.keys, self.kid
        #: The block every limiter script takes first (lib.limiter_keys in shared/lua/lib.lua):
        #: KEYS[1..19], then ARGV[1..7] (templates of the keys the scripts fill in).
        self._keys = [k.limits_slots(kid), k.ledger, k.limits_tat(kid), k.limits_paused(kid),
                      *(k.limits_waiting(kid, why) for why in ("interactive", "bulk", "budget", "locked")),
                      k.limits_sending(kid), k.limits_sent(kid), k.limits_config, k.tenants, k.fair_unadmitted,
                      k.inflight, k.fair_count,
                      k.limits_slot_ep(kid), k.limits_slot_t(kid), k.limits_charges(kid), k.fair_owner]
        #: Read by answered and release after the block: whether any tenant has a ready job.
        self._active = [k.fair_active("interactive"), k.fair_active("bulk")]
        self._tpls = [k.limits_slots_ep(kid, HOLE), k.limits_slots_t(kid, HOLE), k.limits_tat_t(kid, HOLE),
                      k.spend(HOLE), k.tenant_spend(HOLE, HOLE), k.fair_paused(HOLE), k.lease(HOLE)]

    @property
    def base(self) -> str:
        return self.keys.limits(self.kid)

    def register_key(self) -> None:
        """Make this key visible to ``falq limits show`` (its id and suffix, never the key)."""
        self.r.hset(self.keys.limits_keys, self.kid, self.s.key_suffix())

    # --- the hot path ----------------------------------------------------------------------------
    def acquire(self, job_id: str, endpoint: str, lane: str, cost_micro: int, tenant: str = "default") -> Answer:
        d = config_defaults(self.s)
        raw = self._acquire(keys=self._keys, args=[
            *self._tpls, job_id, endpoint, lane, int(cost_micro), self.lease_ms,
            float(self.s.rate_headroom), *[d[f] for f in CONFIG_FIELDS], tenant,
            int(self.s.pause_poll_s * 3000), "1" if self.s.rate_strict else "0",
        ])
        status = text(raw[0])
        a, b = int(raw[1]), int(raw[2])
        if status == "ok":
            return Answer("ok", delay_s=a / 1000, at_ms=b, sent_ms=int(raw[3]) if len(raw) > 3 else 0)
        if status == "locked":
            return Answer("locked", wait_s=a / 1000)
        return Answer(status, wait_s=a / 1000, spread_s=b / 1000)

    def confirm(self, job_id: str) -> tuple[int, int]:
        """Log a POST leaving now: ``(0, Redis time ms)``; or ``(ms to wait first, 0)`` (see CONFIRM)."""
        raw = self._confirm(keys=self._keys, args=[*self._tpls, job_id])
        return int(raw[0]), int(raw[1])

    def answered(self, job_id: str, score_ms: int) -> bool:
        """The job's POST came back; it counts until ``score_ms`` + 1 s (see ANSWERED). Returns
        whether any tenant has a ready job (False: a fair dispatch now would find nothing)."""
        return bool(self._answered(keys=[*self._keys, *self._active], args=[*self._tpls, job_id, int(score_ms)]))

    def hold(self, job_id: str, endpoint: str, tenant: str = "default") -> None:
        """Count a request that is outstanding at fal (a redelivered job that follows again)."""
        self._hold(keys=self._keys, args=[*self._tpls, job_id, endpoint, self.lease_ms, tenant])

    def release(self, job_id: str, *, refund: bool) -> bool:
        """Free the job's slot; with ``refund`` give back the cost reserved at admission. Returns
        whether the job held a slot."""
        return self.release_and_look(job_id, refund=refund)[0]

    def release_and_look(self, job_id: str, *, refund: bool) -> tuple[bool, bool]:
        """:meth:`release`, also saying whether any tenant has a ready job (False: a fair
        dispatch now would find nothing, so the worker skips that round trip)."""
        held, ready = self._release(keys=[*self._keys, *self._active], args=[*self._tpls, job_id,
                                                                            "1" if refund else "0"])
        return bool(held), bool(ready)

    def renew(self, job_ids: list[str], owner: str, pipe: Any = None) -> Any:
        """Extend the slots of ``job_ids`` whose job lease ``owner`` holds (see RENEW)."""
        return self._renew(keys=self._keys, args=[*self._tpls, self.lease_ms, owner, *job_ids],
                           client=pipe or self.r)

    # --- pause (403 "User is locked") ------------------------------------------------------------
    def pause(self, reason: str, ttl_s: float) -> bool:
        """Pause every submission for this key; returns True if it was not paused already."""
        key = self.keys.limits_paused(self.kid)
        fresh = bool(self.r.set(key, reason[:500], nx=True, px=int(ttl_s * 1000)))
        if not fresh:
            self.r.set(key, reason[:500], px=int(ttl_s * 1000))
        return fresh

    def resume(self) -> bool:
        return bool(self.r.delete(self.keys.limits_paused(self.kid)))

    # --- inspection ------------------------------------------------------------------------------
    def state(self, suffix: str = "") -> KeyState:
        raw = self._state(keys=self._keys, args=self._tpls)
        eps = [text(k) for k in self.r.scan_iter(match=self.keys.limits_slots_ep(self.kid, "*"), count=200)]
        counts = {}
        for k in eps:
            n = int(self.r.zcount(k, int(raw[0]), "+inf"))
            if n:
                counts[k.split(":slots:ep:", 1)[1]] = n
        pttl = int(raw[7])
        return KeyState(
            key_id=self.kid, suffix=suffix, now_ms=int(raw[0]), today=text(raw[1]), outstanding=int(raw[2]),
            per_endpoint=counts,
            waiting={"interactive": int(raw[3]), "bulk": int(raw[4]), "budget": int(raw[5]), "locked": int(raw[6])},
            paused_for_s=pttl / 1000 if pttl > 0 else 0.0, paused_reason=text(raw[8]) if pttl > 0 else "",
            spend_today_usd=int(text(raw[10]) or 0) / 1_000_000,
        )

    def trim_expired(self) -> int:
        """Drop the expired entries of the per-endpoint and per-tenant slot sets: admission counts
        only live ones, so this only frees memory (a dead worker's slots, a release that could not
        name the sets). Returns how many went."""
        sec, usec = self.r.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        k, kid = self.keys, self.kid
        sets = [*self.r.scan_iter(match=k.limits_slots_ep(kid, "*"), count=200),
                *self.r.scan_iter(match=k.limits_slots_t(kid, "*"), count=200)]
        if not sets:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for key in sets:
            pipe.zremrangebyscore(key, "-inf", now_ms)
        return sum(int(n) for n in pipe.execute())

    def tenant_outstanding(self, tenants: list[str]) -> dict[str, int]:
        """tenant -> its requests outstanding at fal through this key (live slots, by Redis time)."""
        sec, usec = self.r.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        pipe = self.r.pipeline(transaction=False)
        for t in tenants:
            pipe.zcount(self.keys.limits_slots_t(self.kid, t), now_ms, "+inf")
        return {t: int(n) for t, n in zip(tenants, pipe.execute(), strict=True)}

    def live_slots(self) -> list[str]:
        """Job ids holding a slot that has not expired (by Redis time)."""
        sec, usec = self.r.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        return [text(x) for x in self.r.zrangebyscore(self.keys.limits_slots(self.kid), now_ms, "+inf")]


# --- configuration (shared by the CLI and the workers) -------------------------------------------


def config_key(prefix: str) -> str:
    return Keys(prefix).limits_config


def read_config(client: redis.Redis, prefix: str) -> dict[str, str]:
    """The runtime configuration as stored (fields missing until a worker seeds them)."""
    raw = client.hgetall(config_key(prefix))
    return {text(k): text(v) for k, v in raw.items()}


def write_config(client: redis.Redis, prefix: str, changes: dict[str, str]) -> None:
    if changes:
        mapping: dict[str | bytes, bytes | float | int | str] = {k: v for k, v in changes.items()}
        client.hset(config_key(prefix), mapping=mapping)


def known_keys(client: redis.Redis, prefix: str) -> dict[str, str]:
    """Key id -> key suffix of every fal key a worker registered."""
    return {text(k): text(v) for k, v in client.hgetall(Keys(prefix).limits_keys).items()}


def spend_today(client: redis.Redis, prefix: str) -> tuple[str, float]:
    """``(yyyy-mm-dd, dollars)`` reserved today, the UTC day taken from Redis' clock."""
    import datetime as dt

    sec, _ = client.time()
    day = dt.datetime.fromtimestamp(int(sec), dt.UTC).strftime("%Y-%m-%d")
    return day, int(text(client.get(Keys(prefix).spend(day)) or b"0")) / 1_000_000


def tenant_spend_today(client: redis.Redis, prefix: str, tenants: list[str]) -> tuple[str, dict[str, float]]:
    """``(yyyy-mm-dd, tenant -> dollars reserved today)``, the UTC day from Redis' clock."""
    day, _ = spend_today(client, prefix)
    keys = Keys(prefix)
    vals = client.mget([keys.tenant_spend(day, t) for t in tenants]) if tenants else []
    return day, {t: int(text(v or b"0")) / 1_000_000 for t, v in zip(tenants, vals, strict=True)}


