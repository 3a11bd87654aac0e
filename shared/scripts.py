"""falq's Redis scripts: one ``.lua`` file in ``shared/lua/`` (package data) per class that
owns Redis state, one function in it per operation, loaded here.

One loader, as Dramatiq's Redis broker loads its ``dispatch.lua``: :func:`register` reads the
file and hands it to ``redis.Redis.register_script`` (EVALSHA, with a SCRIPT LOAD when Redis
does not know the script yet, as after a restart or a failover), and returns the :class:`Op`
that calls one operation: the operation's name goes first in ARGV, and the script runs that
operation's function. Each script opens with what it is and its operations; each operation with
what it reads and writes (KEYS, ARGV, what it returns), and unpacks them into named locals.

Composition: Redis scripting has no module system, so a script that calls the shared functions
of ``lib.lua`` (``lib.fair_free``, ``lib.key`` ...) is sent with ``lib.lua`` prepended; the rule
that keeps this safe is in ``lib.lua``'s header (it defines functions that take every input as
an argument, nothing else; no script's text is ever pasted into another).

Keys: a script never spells a key. The caller passes the keys it can name in KEYS (made by
:class:`falq.shared.keys.Keys`); a key that depends on something only read inside Redis comes
as a template from the same :class:`~falq.shared.keys.Keys` method with
:data:`~falq.shared.keys.HOLE` in the parts the script fills (``lib.key``).

Python calls each operation only through the typed method of the class that owns its script
(``JobStore.save``, ``Limiter.acquire`` ...); :data:`OWNERS` names it, and the generated
Redis layout page (``docs/reference/redis-layout.md``, :mod:`falq.ops.redis_layout`) lists them.

Example::

    save = register(client, "job.save")
    save(keys=[...], args=[...])
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

#: Operation (``script.op``) -> the method that calls it (the only caller).
OWNERS: dict[str, str] = {
    "job.create": "falq.shared.jobs.store.JobStore.create",
    "job.save": "falq.shared.jobs.store.JobStore.save",
    "job.save_result": "falq.shared.jobs.store.JobStore.save_result",
    "job.crashed": "falq.shared.jobs.store.JobStore.count_crash",
    "job.cancel": "falq.shared.jobs.store.JobStore.request_cancel",
    "job.index_owned": "falq.shared.jobs.store.JobStore._index_rows",
    "job.forget_tenant": "falq.shared.jobs.store.JobStore.prune_tenant_indexes",
    "job.restore": "falq.shared.jobs.store.JobStore.restore",
    "job.forget_unpublished": "falq.shared.jobs.store.JobStore.forget_unpublished",
    "fair.ready": "falq.shared.fairshare.scheduler.FairShare._make_ready",
    "fair.dispatch": "falq.shared.fairshare.scheduler.FairShare.take",
    "fair.free": "falq.shared.fairshare.scheduler.FairShare.free",
    "fair.recount": "falq.shared.fairshare.scheduler.FairShare.recount",
    "limiter.acquire": "falq.shared.limits.store.Limiter.acquire",
    "limiter.confirm": "falq.shared.limits.store.Limiter.confirm",
    "limiter.answered": "falq.shared.limits.store.Limiter.answered",
    "limiter.hold": "falq.shared.limits.store.Limiter.hold",
    "limiter.release": "falq.shared.limits.store.Limiter.release",
    "limiter.renew": "falq.shared.limits.store.Limiter.renew",
    "limiter.state": "falq.shared.limits.store.Limiter.state",
    "outbox.claim": "falq.shared.callbacks.outbox.Outbox.claim",
    "outbox.finish": "falq.shared.callbacks.outbox.Outbox.finish",
    "outbox.redeliver": "falq.shared.callbacks.outbox.Outbox.redeliver",
    "outbox.settle": "falq.shared.callbacks.outbox.Outbox.settle",
    "outbox.append": "falq.shared.callbacks.outbox.Outbox.append_log",
    "outbox.schedule": "falq.shared.callbacks.outbox.Outbox.schedule",
    "chain.link": "falq.shared.batches.chains.Chains.link",
    "lease.acquire": "falq.workers.lease.LeaseKeeper.acquire",
    "lease.renew": "falq.workers.lease.LeaseKeeper.renew_now",
    "lease.release": "falq.workers.lease.LeaseKeeper.release",
    "lease.claim_orphan": "falq.workers.lease.LeaseKeeper.orphans",
    "archive.mark": "falq.workers.maintenance.archive.Archiver._expire",
    "catalogue.claim": "falq.shared.catalogue.registry.CatalogueRegistry.claim",
    "signin.acquire": "falq.gateway.console.access.SignInLimiter.attempt",
    "signin.release": "falq.gateway.console.access.SignInLimiter.succeeded",
    "batch_cap.reserve": "falq.shared.spend.batch_cap.BatchCaps.reserve",
    "batch_cap.refund": "falq.shared.spend.batch_cap.BatchCaps.refund",
    "batch_cap.settle": "falq.shared.spend.batch_cap.BatchCaps.settle",
}

LIB = "lib"
_CALLS_LIB = re.compile(r"^(?!\s*--).*\blib\.\w+", re.MULTILINE)
_OP = re.compile(r"^function ops\.(\w+)\(\)$", re.MULTILINE)


def _read(name: str) -> str:
    return resources.files("falq.shared").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def names() -> list[str]:
    """Every script's name (the ``.lua`` files but ``lib.lua``), sorted."""
    root = resources.files("falq.shared").joinpath("lua")
    return sorted(p.name[:-4] for p in root.iterdir() if p.name.endswith(".lua") and p.name != f"{LIB}.lua")


def operations(name: str) -> list[str]:
    """The operations the script ``name`` defines (``function ops.<op>()``), in file order."""
    return _OP.findall(_read(name))


def uses_lib(name: str) -> bool:
    """Whether the script calls a function of ``lib.lua`` (outside its comments)."""
    return bool(_CALLS_LIB.search(_read(name)))


@functools.cache
def source(name: str) -> str:
    """The text sent to Redis: the script's file, after ``lib.lua`` when it calls ``lib.``."""
    if not any(op.split(".", 1)[0] == name for op in OWNERS):
        raise KeyError(f"no Redis script named {name!r} (shared/lua/{name}.lua, its operations in OWNERS)")
    text = _read(name)
    return f"{_read(LIB)}\n{text}" if uses_lib(name) else text


def _comment(lines: list[str]) -> str:
    return "\n".join(line[3:] if line.startswith("-- ") else line[2:] for line in lines).strip()


def header(name: str) -> str:
    """The script's opening comment (what it is, its operations), without the ``--`` markers."""
    lines = []
    for line in _read(name).splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return _comment(lines)


def op_header(qualified: str) -> str:
    """The comment above operation ``script.op`` (what it reads and writes, what it returns)."""
    name, op = qualified.split(".", 1)
    lines = _read(name).splitlines()
    at = lines.index(f"function ops.{op}()")
    start = at
    while start > 0 and lines[start - 1].startswith("--"):
        start -= 1
    return _comment(lines[start:at])


class Op:
    """One operation of a registered script: called like a redis-py ``Script`` (``keys``,
    ``args``, ``client`` for a pipeline), with the operation's name sent first in ARGV."""

    __slots__ = ("op", "script")

    def __init__(self, script: Script, op: str) -> None:
        self.script = script
        self.op = op

    @property
    def sha(self) -> str:
        """The script's SHA1 (for ``EVALSHA`` queued by hand, as in a pipeline)."""
        return str(self.script.sha)  # type: ignore[attr-defined]  # the stubs predate Script.sha

    def argv(self, args: Sequence[Any]) -> list[Any]:
        """ARGV as the script takes it: the operation's name, then ``args``."""
        return [self.op, *args]

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (),
                 client: redis.client.Redis | redis.client.Pipeline | None = None) -> Any:  # type: ignore[type-arg]
        return self.script(keys=list(keys), args=self.argv(args), client=client)


def register(client: redis.Redis, qualified: str) -> Op:
    """Operation ``script.op`` of a script registered on ``client`` (EVALSHA, loading the script
    when Redis lacks it)."""
    if qualified not in OWNERS:
        raise KeyError(f"no Redis script operation {qualified!r} (listed in scripts.OWNERS)")
    name, op = qualified.split(".", 1)
    return Op(client.register_script(source(name)), op)
