"""Every Redis key falq writes, in one place. ``{p}`` is ``FALQ_KEY_PREFIX`` (default ``falq``).

==============================  ======  ==========================================================
key                             type    what
==============================  ======  ==========================================================
``{p}:job:{id}``                hash    the job record: ``state``, ``version``, ``doc`` (JSON),
                                        ``published``, ``result`` (fal's output until mirrored);
                                        with a callback: ``cb_version`` (the version that saved
                                        the terminal state), ``cb_tries``, ``cb_since``
``{p}:state:{state}``           zset    job ids in that state, by last update
``{p}:created``                 zset    every job id, by creation time
``{p}:idem:{key}``              string  idempotency key -> job id
``{p}:cancel:{id}``             string  a producer asked to cancel the job
``{p}:lease:{id}``              string  the worker step holding the job (``host:pid:token``), TTL
``{p}:seen:{id}``               string  a delivery of the job ran recently (the reaper's sign of life)
``{p}:holders``                 zset    jobs whose lease a worker took (by when): one whose lease
                                        expired without a release lost its holder
``{p}:takeover:lock``           string  one takeover sweep at a time
``{p}:reaper:lock``             string  one reaper at a time
``{p}:falhook:{request_id}``    string  fal's pushed completion, received by the gateway
``{p}:falhook``                 pubsub  wakes the worker waiting for that request
``{p}:limits:{kid}[:...]``      mixed   one fal key's limiter (``kid``: short sha256 of the key),
                                        see :mod:`falq.shared.limits_lua`
``{p}:limits:config``           hash    the runtime limits (``falq limits set``)
``{p}:limits:keys``             hash    key id -> the key's last 4 characters
``{p}:spend:{yyyy-mm-dd}``      string  today's reserved spend, integer micro-dollars
``{p}:metrics:counters``        hash    counters (transitions, failures by reason, spend ...)
``{p}:metrics:hist:{name}``     hash    a latency histogram
``{p}:metrics:minute:{m}``      hash    jobs finished per minute (TTL)
``{p}:metrics:spend:{day}``     string  spend per UTC day as recorded by workers
``{p}:webhook:seen:{digest}``   string  a fal webhook already accepted (replay guard)
``{p}:gateway:hooks``           zset    jobs whose ``fal_webhook`` is still to be delivered
``{p}:gateway:hook:{id}``       hash    that webhook's URL and tries
``{p}:outbox``                  zset    jobs whose ``callback_url`` is still to be POSTed, by
                                        when to try next (a claimed one: until its claim ends)
``{p}:outbox:failed``           zset    jobs whose callback gave up, by when
                                        (``falq callbacks redeliver --failed``)
``{p}:delivery:{id}``           list    every callback try of the job (JSON), capped, TTL as
                                        the record
``{p}:tenants``                 hash    tenant name -> its settings (JSON), :mod:`falq.shared.tenants`
==============================  ======  ==========================================================

Lua scripts that build keys from ids they read inside Redis (the job store's create, the
limiter's slot checks) still spell those keys there; they follow this table.

Example::

    >>> Keys("falq").job("abc")
    'falq:job:abc'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """The key layout for one ``FALQ_KEY_PREFIX``."""

    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def state(self, state: str) -> str:
        return f"{self.prefix}:state:{state}"

    @property
    def created(self) -> str:
        return f"{self.prefix}:created"

    def idem(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def lease(self, job_id: str) -> str:
        return f"{self.prefix}:lease:{job_id}"

    def seen(self, job_id: str) -> str:
        return f"{self.prefix}:seen:{job_id}"

    @property
    def holders(self) -> str:
        return f"{self.prefix}:holders"

    @property
    def takeover_lock(self) -> str:
        return f"{self.prefix}:takeover:lock"

    @property
    def reaper_lock(self) -> str:
        return f"{self.prefix}:reaper:lock"

    def falhook(self, request_id: str) -> str:
        return f"{self.prefix}:falhook:{request_id}"

    @property
    def falhook_channel(self) -> str:
        return f"{self.prefix}:falhook"

    def limits(self, kid: str) -> str:
        return f"{self.prefix}:limits:{kid}"

    @property
    def limits_config(self) -> str:
        return f"{self.prefix}:limits:config"

    @property
    def limits_keys(self) -> str:
        return f"{self.prefix}:limits:keys"

    @property
    def limits_slots_pattern(self) -> str:
        return f"{self.prefix}:limits:*:slots"

    def spend(self, day: str) -> str:
        return f"{self.prefix}:spend:{day}"

    @property
    def metrics_counters(self) -> str:
        return f"{self.prefix}:metrics:counters"

    def metrics_hist(self, name: str) -> str:
        return f"{self.prefix}:metrics:hist:{name}"

    def metrics_minute(self, minute: int) -> str:
        return f"{self.prefix}:metrics:minute:{minute}"

    def metrics_spend(self, day: str) -> str:
        return f"{self.prefix}:metrics:spend:{day}"

    def webhook_seen(self, digest: str) -> str:
        return f"{self.prefix}:webhook:seen:{digest}"

    @property
    def gateway_hooks(self) -> str:
        return f"{self.prefix}:gateway:hooks"

    def gateway_hook(self, job_id: str) -> str:
        return f"{self.prefix}:gateway:hook:{job_id}"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}:tenants"

    @property
    def outbox(self) -> str:
        return f"{self.prefix}:outbox"

    @property
    def outbox_failed(self) -> str:
        return f"{self.prefix}:outbox:failed"

    def delivery(self, job_id: str) -> str:
        return f"{self.prefix}:delivery:{job_id}"
