"""Every Redis key falq writes, in one place. ``{p}`` is ``FALQ_KEY_PREFIX`` (default ``falq``).

==============================  ======  ==========================================================
key                             type    what
==============================  ======  ==========================================================
``{p}:job:{id}``                hash    the job record: ``state``, ``version``, ``doc`` (JSON),
                                        ``input`` (JSON, written once, while the job runs; a
                                        finished record, or one an older release created,
                                        holds it in ``doc``),
                                        ``published``, ``result`` (fal's output until mirrored),
                                        ``crashes`` (steps that crashed in a row, until one runs
                                        to its end; ``FALQ_MAX_STEP_CRASHES`` of them fail the job),
                                        ``cancel`` (someone asked to cancel the job);
                                        with a callback: ``cb_version`` (the version that saved
                                        the terminal state), ``cb_tries``, ``cb_since``
``{p}:state:{state}``           zset    job ids in that state, by last update
``{p}:created``                 zset    every job id, by creation time
``{p}:created:t:{tenant}``      zset    the tenant's job ids, by creation time (written with the
                                        record, removed with it): a tenant's listings walk only
                                        its own jobs, however busy the others are
``{p}:created:tenants``         set     tenants that have a ``created:t`` index (the reaper's
                                        pruning walks them)
``{p}:created:backfill``        hash    the one-time build of the ``created:t`` indexes for
                                        records older than them: ``cursor`` (the creation time
                                        walked up to), ``done`` (when it finished; until then
                                        listings walk ``{p}:created``)
``{p}:idem:{key}``              string  idempotency key -> job id (tenant ``default``)
``{p}:idem@{tenant}:{key}``     string  idempotency key -> job id of any other tenant (keys of
                                        two tenants never collide; ``default``'s stay as before)
``{p}:cancel:{id}``             string  (read only, until the release after) a cancel asked by a
                                        producer of the release before the record's ``cancel`` field
``{p}:lease:{id}``              string  the worker step holding the job (``host:pid:token``), TTL
``{p}:seen:{id}``               string  a delivery of the job ran recently (the reaper's sign of life)
``{p}:holders``                 zset    jobs whose lease a worker holds, by when the lease runs out
                                        (Redis' clock, moved on renewal): one past its end with no
                                        lease lost its holder without a release
``{p}:reach``                   hash    worker (lease owner) -> what it reaches (``{at, cut}``),
                                        :mod:`falq.workers.maintenance.reach`
``{p}:maintenance:lock``        string  one worker's maintenance pass at a time (its locked cleanups)
``{p}:maintenance:due:{name}``  string  a slower cleanup ran lately (TTL: its cadence), cluster-wide
``{p}:falhook:{request_id}``    string  fal's pushed completion, received by the gateway
``{p}:falhook``                 pubsub  wakes the worker waiting for that request
``{p}:limits:{kid}``             -       one fal key's limiter (``kid``: short sha256 of the key),
                                        :mod:`falq.shared.limits.store`: the stem of the families below
``{p}:limits:{kid}:slots``       zset    job -> slot expiry (ms): requests outstanding at fal
``{p}:limits:{kid}:slots:ep:{e}`` zset   the same, of one endpoint
``{p}:limits:{kid}:slots:t:{t}`` zset    the same, of one tenant
``{p}:limits:{kid}:slot_ep``     hash    (read only, until empty) job -> endpoint, written by
                                        releases before the ledger; see ``{p}:ledger``
``{p}:limits:{kid}:slot_t``      hash    (read only, until empty) job -> tenant, the same
``{p}:limits:{kid}:tat``         string  the token bucket (GCRA): when the next token is due (ms)
``{p}:limits:{kid}:tat:t:{t}``   string  a tenant's own token bucket (its ``rate``)
``{p}:limits:{kid}:waiting:{w}`` zset    job -> expiry: who waits and why (``interactive``,
                                        ``bulk``, ``budget``, ``locked``)
``{p}:limits:{kid}:charges``     hash    (read only, until empty) job -> ``day|micro|tenant``, the same
``{p}:limits:{kid}:paused``      string  why submissions with this key are paused (402, locked), TTL
``{p}:limits:{kid}:sending``     zset    POSTs on their way (job -> send time), the send check
``{p}:limits:{kid}:sent``        zset    POSTs answered, by a bound of their arrival at fal
``{p}:limits:*:slots``           -       the pattern that finds every key's ``slots`` (SCAN)
``{p}:limits:config``           hash    the runtime limits (``falq limits set``)
``{p}:limits:keys``             hash    key id -> the key's last 4 characters
``{p}:spend:{yyyy-mm-dd}``      string  today's reserved spend, integer micro-dollars
``{p}:tspend:{day}:{tenant}``   string  the same, of one tenant (its own daily budget)
``{p}:fair:ready:{lane}:{t}``   zset    jobs of tenant ``t`` waiting for fair dispatch, by creation
                                        (:mod:`falq.shared.fairshare.scheduler`)
``{p}:fair:active:{lane}``      set     tenants with a non-empty ready set in the lane
``{p}:fair:pass:{lane}``        zset    active tenant -> its stride-scheduling pass
``{p}:fair:vt:{lane}``          string  the pass of the last tenant served (virtual time)
``{p}:inflight``                zset    dispatched jobs not yet done at fal -> dispatch time (ms)
``{p}:fair:unadmitted``         zset    dispatched jobs the limiter has not admitted yet -> the same
``{p}:ledger``                  hash    the one ledger of work in flight: job id ->
                                        ``tenant|endpoint|day|micro`` (the day and micro-dollars
                                        reserved for its attempt, empty when none), written by
                                        fair dispatch and the limiter's admission, removed when
                                        the job holds neither dispatch room nor a slot
``{p}:fair:owner``              hash    (read only, until empty) job -> tenant, before the ledger
``{p}:fair:count``              hash    tenant -> its dispatched, not yet terminal jobs (recounted
                                        from ``{p}:inflight`` and the ledger every half minute)
``{p}:fair:paused:{tenant}``    string  the tenant is over its own budget (TTL): not dispatched
``{p}:metrics:counters``        hash    counters (transitions, failures by reason, spend ...)
``{p}:metrics:hist:{name}``     hash    a latency histogram
``{p}:metrics:minute:{m}``      hash    jobs finished per minute (TTL)
``{p}:metrics:spend:{day}``     string  spend per UTC day as recorded by workers
``{p}:webhook:seen:{digest}``   string  a fal webhook already accepted (replay guard)
``{p}:outbox``                  zset    jobs whose ``callback_url`` or ``fal_webhook`` is still to
                                        be POSTed, by when to try next (claimed: until the claim ends)
``{p}:outbox:failed``           zset    jobs whose callback gave up, by when
                                        (``falq callbacks redeliver --failed``)
``{p}:delivery:{id}``           list    every callback try of the job (JSON), capped, TTL as
                                        the record
``{p}:tenants``                 hash    tenant name -> its settings (JSON), :mod:`falq.shared.tenants.store`
``{p}:ended``                   stream  the one end-of-job event: a job's terminal save appends
                                        ``id``, ``v``, ``state`` and who has work (``ar`` the
                                        catalogue, ``cb`` a callback, ``ch`` waiting children);
                                        consumer groups ``archivers``, ``callbacks``, ``chains``
                                        (:mod:`falq.shared.jobs.ended`), trimmed once all acked
``{p}:archive``                 stream  (read only, until empty) finished jobs to archive, written by
                                        saves before the end-of-job stream; group ``archivers``
``{p}:catalogues``              hash    ``role@host`` -> the catalogue that process uses (JSON, no
                                        password; :mod:`falq.shared.catalogue.registry`)
``{p}:catalogue:shared``        string  the shared history: the one catalogue archivers write
``{p}:batch:{id}``              hash    a batch (:mod:`falq.shared.batches.store`): ``doc`` (JSON), counts
                                        ``n:{state}``, ``total``, ``est_micro``, ``billed_micro``,
                                        ``last_end``; counts move in the job store's Lua scripts
``{p}:batch:{id}:jobs``         zset    the batch's job ids, by line number
``{p}:batches``                 zset    every batch id, by creation time
``{p}:children:{id}``           set     jobs whose input references job ``id``'s outputs
                                        (:mod:`falq.shared.batches.chains`)
``{p}:chain:done``              stream  (read only, until empty) parents that ended, written before
                                        the end-of-job stream; group ``chains``
``{p}:chain:releasing``         zset    children moved to ``queued`` whose broker message may not
                                        be sent yet, by when (re-driven by the chain sweep)
``{p}:apikey:{sha256}``         hash    a gateway API key, by the sha256 of the key (never the key):
                                        ``tenant``, ``scopes``, ``label``, ``created``, ``last4``
``{p}:apikeys:{tenant}``        set     the sha256 of every API key of the tenant (listing, revoking)
``{p}:console:session:{sha}``   string  a web console session (:mod:`falq.gateway.console.access`), by
                                        the sha256 of its cookie's id: principal, CSRF token (TTL)
``{p}:console:login:ip:{a}``    string  failed console sign-ins from one client address (IPv6: its
                                        /64) in the current window (TTL: the window)
``{p}:console:login:key:{d}``   string  failed console sign-ins with one key prefix, by a digest of
                                        the key's first 16 characters (never the key), TTL
``{p}:console:thumb:{d}``       string  a gateway claimed making this thumbnail ahead (TTL), so one
                                        replica makes it (:mod:`falq.gateway.console.ahead`)
``{p}:pricing``                 string  the account's unit prices from fal's pricing API (JSON, with
                                        their source and expiry), :mod:`falq.shared.spend.pricing`
``{p}:bcap:{batch}``            hash    a batch's spend cap (:mod:`falq.shared.spend.batch_cap`):
                                        ``cap_micro``, ``reserved_micro``, ``billed_micro``
``{p}:bcap:{batch}:charges``    hash    job id -> micro-dollars reserved against the cap
``{p}:bcap:{batch}:waiting``    set     jobs waiting at the cap (``paused: batch_spend_cap``)
``{p}:bcap:{batch}:billed``     hash    job id -> micro-dollars billed (settled once per job)
==============================  ======  ==========================================================

Lua scripts (shared/lua/) never spell a key: they get the keys from here, in KEYS, or as a
template (:data:`HOLE`) for a key that depends on what they read inside Redis.

Example::

    >>> Keys("falq").job("abc")
    'falq:job:abc'
"""

from __future__ import annotations

from dataclasses import dataclass

#: The hole in a key template: a :class:`Keys` method called with ``HOLE`` for a part gives the
#: template a Redis script fills with ``lib.key`` (shared/lua/lib.lua), for a key that depends
#: on something only read inside Redis (the UTC day from ``TIME``, an id from an index). So every
#: key is spelled here alone. No key prefix, id or name holds this control character.
HOLE = "\x01"


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

    def created_tenant(self, tenant: str) -> str:
        # Tenant names cannot hold ':' (falq.shared.tenants.store.NAME_RE), so no tenant's key can be
        # another key of this table.
        return f"{self.prefix}:created:t:{tenant}"

    @property
    def created_tenants(self) -> str:
        return f"{self.prefix}:created:tenants"

    @property
    def created_backfill(self) -> str:
        return f"{self.prefix}:created:backfill"

    def idem(self, key: str, tenant: str = "default") -> str:
        # Another tenant's keys get their own namespace: ``idem@`` can never be the start of a
        # ``default`` key, so tenants cannot reach (or probe) each other's jobs by key.
        if tenant == "default":
            return f"{self.prefix}:idem:{key}"
        return f"{self.prefix}:idem@{tenant}:{key}"

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
    def reach(self) -> str:
        return f"{self.prefix}:reach"

    @property
    def maintenance_lock(self) -> str:
        return f"{self.prefix}:maintenance:lock"

    def maintenance_due(self, name: str) -> str:
        return f"{self.prefix}:maintenance:due:{name}"

    def falhook(self, request_id: str) -> str:
        return f"{self.prefix}:falhook:{request_id}"

    @property
    def falhook_channel(self) -> str:
        return f"{self.prefix}:falhook"

    def limits(self, kid: str) -> str:
        return f"{self.prefix}:limits:{kid}"

    # One fal key's limiter (falq.shared.limits.store): its slots and their side hashes, its token
    # buckets, who waits and why, its reservations, its pause and its send log.
    def limits_slots(self, kid: str) -> str:
        return f"{self.limits(kid)}:slots"

    def limits_slots_ep(self, kid: str, endpoint: str) -> str:
        return f"{self.limits(kid)}:slots:ep:{endpoint}"

    def limits_slots_t(self, kid: str, tenant: str) -> str:
        return f"{self.limits(kid)}:slots:t:{tenant}"

    def limits_slot_ep(self, kid: str) -> str:
        return f"{self.limits(kid)}:slot_ep"

    def limits_slot_t(self, kid: str) -> str:
        return f"{self.limits(kid)}:slot_t"

    def limits_tat(self, kid: str) -> str:
        return f"{self.limits(kid)}:tat"

    def limits_tat_t(self, kid: str, tenant: str) -> str:
        return f"{self.limits(kid)}:tat:t:{tenant}"

    def limits_waiting(self, kid: str, why: str) -> str:
        return f"{self.limits(kid)}:waiting:{why}"

    def limits_charges(self, kid: str) -> str:
        return f"{self.limits(kid)}:charges"

    def limits_paused(self, kid: str) -> str:
        return f"{self.limits(kid)}:paused"

    def limits_sending(self, kid: str) -> str:
        return f"{self.limits(kid)}:sending"

    def limits_sent(self, kid: str) -> str:
        return f"{self.limits(kid)}:sent"

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

    def tenant_spend(self, day: str, tenant: str) -> str:
        return f"{self.prefix}:tspend:{day}:{tenant}"

    def fair_ready(self, lane: str, tenant: str) -> str:
        return f"{self.prefix}:fair:ready:{lane}:{tenant}"

    def fair_active(self, lane: str) -> str:
        return f"{self.prefix}:fair:active:{lane}"

    def fair_pass(self, lane: str) -> str:
        return f"{self.prefix}:fair:pass:{lane}"

    def fair_vt(self, lane: str) -> str:
        return f"{self.prefix}:fair:vt:{lane}"

    @property
    def inflight(self) -> str:
        return f"{self.prefix}:inflight"

    @property
    def fair_unadmitted(self) -> str:
        return f"{self.prefix}:fair:unadmitted"

    @property
    def fair_owner(self) -> str:
        return f"{self.prefix}:fair:owner"

    @property
    def ledger(self) -> str:
        return f"{self.prefix}:ledger"

    @property
    def fair_count(self) -> str:
        return f"{self.prefix}:fair:count"

    def fair_paused(self, tenant: str) -> str:
        return f"{self.prefix}:fair:paused:{tenant}"

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

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    @property
    def pricing(self) -> str:
        return f"{self.prefix}:pricing"

    def batch_cap(self, batch_id: str) -> str:
        return f"{self.prefix}:bcap:{batch_id}"

    def batch_cap_charges(self, batch_id: str) -> str:
        return f"{self.prefix}:bcap:{batch_id}:charges"

    def batch_cap_waiting(self, batch_id: str) -> str:
        return f"{self.prefix}:bcap:{batch_id}:waiting"

    def batch_cap_billed(self, batch_id: str) -> str:
        return f"{self.prefix}:bcap:{batch_id}:billed"

    def batch_jobs(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:jobs"

    @property
    def batches(self) -> str:
        return f"{self.prefix}:batches"

    def children(self, job_id: str) -> str:
        return f"{self.prefix}:children:{job_id}"

    @property
    def chain_done(self) -> str:
        return f"{self.prefix}:chain:done"

    @property
    def chain_releasing(self) -> str:
        return f"{self.prefix}:chain:releasing"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}:tenants"

    def apikey(self, digest: str) -> str:
        return f"{self.prefix}:apikey:{digest}"

    def apikeys(self, tenant: str) -> str:
        return f"{self.prefix}:apikeys:{tenant}"

    @property
    def outbox(self) -> str:
        return f"{self.prefix}:outbox"

    @property
    def outbox_failed(self) -> str:
        return f"{self.prefix}:outbox:failed"

    def delivery(self, job_id: str) -> str:
        return f"{self.prefix}:delivery:{job_id}"

    def console_session(self, digest: str) -> str:
        return f"{self.prefix}:console:session:{digest}"

    @property
    def ended(self) -> str:
        return f"{self.prefix}:ended"

    @property
    def archive(self) -> str:
        return f"{self.prefix}:archive"

    @property
    def catalogues(self) -> str:
        """Hash ``role@host`` -> JSON: the catalogue each worker/gateway uses (shared.catalogue.registry)."""
        return f"{self.prefix}:catalogues"

    @property
    def shared_catalogue(self) -> str:
        """String: the identity of the deployment's shared history (the catalogue archivers write)."""
        return f"{self.prefix}:catalogue:shared"

    def console_signin_addr(self, address: str) -> str:
        return f"{self.prefix}:console:login:ip:{address}"

    def console_signin_key(self, digest: str) -> str:
        return f"{self.prefix}:console:login:key:{digest}"

    def console_thumb_claim(self, digest: str) -> str:
        return f"{self.prefix}:console:thumb:{digest}"


def room_keys(keys: Keys) -> list[str]:
    """The keys of a job's dispatch room, in the order ``lib.fair_free`` takes them (a script's
    KEYS): inflight, unadmitted, the ledger, the tenants' counts, the owners before the ledger."""
    return [keys.inflight, keys.fair_unadmitted, keys.ledger, keys.fair_count, keys.fair_owner]
