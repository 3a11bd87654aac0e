"""falq's Redis scripts: each is one ``.lua`` file in ``shared/lua/`` (package data), loaded here.

One loader, as Dramatiq's Redis broker loads its ``dispatch.lua``: :func:`register` reads the
file and hands it to ``redis.Redis.register_script`` (EVALSHA, with a SCRIPT LOAD when Redis
does not know the script yet, as after a restart or a failover). Each script opens with what it
reads and writes (KEYS, ARGV, what it returns) and unpacks them into named locals.

Composition: Redis scripting has no module system, so a script that calls the shared functions
of ``lib.lua`` (``lib.fair_free``, ``lib.key`` ...) is sent with ``lib.lua`` prepended; the rule
that keeps this safe is in ``lib.lua``'s header (it defines functions that take every input as
an argument, nothing else; no script's text is ever pasted into another).

Keys: a script never spells a key. The caller passes the keys it can name in KEYS (made by
:class:`falq.shared.keys.Keys`); a key that depends on something only read inside Redis comes
as a template from the same :class:`~falq.shared.keys.Keys` method with
:data:`~falq.shared.keys.HOLE` in the parts the script fills (``lib.key``).

Python calls each script only through the typed method of the one class that registers it
(``JobStore.save``, ``Limiter.acquire`` ...); :data:`OWNERS` names it, and the generated
Redis layout page (``docs/reference/redis-layout.md``, :mod:`falq.ops.redis_layout`) lists them.

Example::

    save = register(client, "job_save")
    save(keys=[...], args=[...])
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import redis
from redis.commands.core import Script

#: Script name -> the method that calls it (the only caller).
OWNERS: dict[str, str] = {
    "job_create": "falq.shared.jobs.store.JobStore.create",
    "job_save": "falq.shared.jobs.store.JobStore.save",
    "job_save_result": "falq.shared.jobs.store.JobStore.save_result",
    "job_index_owned": "falq.shared.jobs.store.JobStore._index_rows",
    "job_forget_tenant": "falq.shared.jobs.store.JobStore.prune_tenant_indexes",
    "job_restore": "falq.shared.jobs.store.JobStore.restore",
    "job_forget_unpublished": "falq.shared.jobs.store.JobStore.forget_unpublished",
    "fair_ready": "falq.shared.fairshare.scheduler.FairShare._make_ready",
    "fair_dispatch": "falq.shared.fairshare.scheduler.FairShare.take",
    "fair_free": "falq.shared.fairshare.scheduler.FairShare.free",
    "fair_recount": "falq.shared.fairshare.scheduler.FairShare.recount",
    "limiter_acquire": "falq.shared.limits.store.Limiter.acquire",
    "limiter_confirm": "falq.shared.limits.store.Limiter.confirm",
    "limiter_answered": "falq.shared.limits.store.Limiter.answered",
    "limiter_hold": "falq.shared.limits.store.Limiter.hold",
    "limiter_release": "falq.shared.limits.store.Limiter.release",
    "limiter_renew": "falq.shared.limits.store.Limiter.renew",
    "limiter_state": "falq.shared.limits.store.Limiter.state",
    "outbox_claim": "falq.shared.callbacks.outbox.Outbox.claim",
    "outbox_finish": "falq.shared.callbacks.outbox.Outbox.finish",
    "outbox_redeliver": "falq.shared.callbacks.outbox.Outbox.redeliver",
    "outbox_settle": "falq.shared.callbacks.outbox.Outbox.settle",
    "outbox_append": "falq.shared.callbacks.outbox.Outbox.append_log",
    "outbox_schedule": "falq.shared.callbacks.outbox.Outbox.schedule",
    "chain_link": "falq.shared.batches.chains.Chains.link",
    "lease_acquire": "falq.workers.lease.LeaseKeeper.acquire",
    "lease_renew": "falq.workers.lease.LeaseKeeper.renew_now",
    "lease_release": "falq.workers.lease.LeaseKeeper.release",
    "lease_claim_orphan": "falq.workers.lease.LeaseKeeper.orphans",
    "archive_mark": "falq.workers.maintenance.archive.Archiver._expire",
    "catalogue_claim": "falq.shared.catalogue.registry.CatalogueRegistry.claim",
    "signin_acquire": "falq.gateway.console.access.SignInLimiter.attempt",
    "signin_release": "falq.gateway.console.access.SignInLimiter.succeeded",
    "batch_cap_reserve": "falq.shared.spend.batch_cap.BatchCaps.reserve",
    "batch_cap_refund": "falq.shared.spend.batch_cap.BatchCaps.refund",
    "batch_cap_settle": "falq.shared.spend.batch_cap.BatchCaps.settle",
}

LIB = "lib"
_CALLS_LIB = re.compile(r"^(?!\s*--).*\blib\.\w+", re.MULTILINE)


def _read(name: str) -> str:
    return resources.files("falq.shared").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def names() -> list[str]:
    """Every script's name (the ``.lua`` files but ``lib.lua``), sorted."""
    root = resources.files("falq.shared").joinpath("lua")
    return sorted(p.name[:-4] for p in root.iterdir() if p.name.endswith(".lua") and p.name != f"{LIB}.lua")


def uses_lib(name: str) -> bool:
    """Whether the script calls a function of ``lib.lua`` (outside its comments)."""
    return bool(_CALLS_LIB.search(_read(name)))


@functools.cache
def source(name: str) -> str:
    """The text sent to Redis: the script's file, after ``lib.lua`` when it calls ``lib.``."""
    if name not in OWNERS:
        raise KeyError(f"no Redis script named {name!r} (shared/lua/{name}.lua, listed in OWNERS)")
    text = _read(name)
    return f"{_read(LIB)}\n{text}" if uses_lib(name) else text


def header(name: str) -> str:
    """The script's opening comment (what it reads and writes), without the ``--`` markers."""
    lines = []
    for line in _read(name).splitlines():
        if not line.startswith("--"):
            break
        lines.append(line[3:] if line.startswith("-- ") else line[2:])
    return "\n".join(lines).strip()


def register(client: redis.Redis, name: str) -> Script:
    """The script ``name`` registered on ``client`` (EVALSHA, loading it when Redis lacks it)."""
    return client.register_script(source(name))
