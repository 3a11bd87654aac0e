"""Which catalogue each host uses, and which one is the deployment's shared history.

Every worker and gateway registers the catalogue it uses in the Redis hash ``{p}:catalogues``
(field ``role@host``, value JSON ``{"catalogue", "kind", "seen"}``). The catalogue is named by
its *identity*: a database server's URL without the password (``postgresql://falq@db:5432/falq``),
or, for an embedded SQLite file, ``sqlite://{host}{path}``: a file is only ever one host's.

**The rule (the shared history).** Archivers claim ``{p}:catalogue:shared`` atomically:

1. the first archiver to start claims it for its catalogue;
2. a database server (any non-SQLite URL) takes over a claim held by an SQLite file: a server is
   meant to be shared, a file never is (this is also the move from one host to several);
3. otherwise the claim stands: an archiver whose catalogue is not the shared history does not
   read the archive stream (finished jobs wait in Redis for an archiver that shares it), and
   says why in its log, in ``falq doctor`` and in ``falq_catalogue_outside_shared_history``.

Moving the shared history from one database server to another is deliberate:
``falq db shared --reset`` drops the claim and the next archiver to start claims it.

Example::

    reg = CatalogueRegistry(redis_client, prefix="falq", host="worker-1")
    reg.register("worker", "sqlite:////home/u/.local/share/falq/catalogue.sqlite3")
    reg.claim(identity_of(url, "worker-1"))   # the shared history's identity
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy.engine import make_url

from falq.shared.keys import Keys
from falq.shared.scripts import register
from falq.shared.settings import Settings

__all__ = ["CatalogueRegistry", "Registration", "host_name", "identity_of", "is_file"]

#: A registration not refreshed for this long is shown as stale (a host that went away).
STALE_S = 24 * 3600.0
#: ... and removed after this long (containers get a new hostname on every start).
FORGET_S = 7 * 24 * 3600.0

def host_name(settings: Settings) -> str:
    """This host's name in the registry: ``FALQ_HOST_NAME``, else the machine's hostname."""
    return (settings.host_name or "").strip() or socket.gethostname()


def identity_of(url: str, host: str) -> str:
    """The catalogue's identity (see the module docs): never carries the URL's password."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return f"sqlite://{host}/{(u.database or ':memory:').lstrip('/')}"
    netloc = (u.username + "@" if u.username else "") + (u.host or "")
    if u.port:
        netloc += f":{u.port}"
    return f"{backend}://{netloc}/{u.database or ''}"


def is_file(identity: str) -> bool:
    """Whether an identity is an embedded SQLite file (one host's, never shared)."""
    return identity.startswith("sqlite://")


@dataclass(frozen=True)
class Registration:
    """One process role on one host and the catalogue it uses."""

    role: str
    host: str
    catalogue: str
    seen: float

    def stale(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) - self.seen > STALE_S


class CatalogueRegistry:
    """The registrations and the shared-history claim in Redis (see the module docs)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "falq", host: str | None = None) -> None:
        self.r = client
        self.keys = Keys(prefix)
        self.host = host or socket.gethostname()
        self._claim = register(client, "catalogue.claim")

    def register(self, role: str, identity: str) -> None:
        """Record that ``role`` on this host uses the catalogue ``identity`` (refreshes ``seen``)."""
        now = time.time()
        doc = {"catalogue": identity, "kind": "file" if is_file(identity) else "server", "seen": round(now, 3)}
        self.r.hset(self.keys.catalogues, f"{role}@{self.host}", json.dumps(doc))
        gone = [f"{g.role}@{g.host}" for g in self.registrations() if now - g.seen > FORGET_S]
        if gone:
            self.r.hdel(self.keys.catalogues, *gone)

    def claim(self, identity: str) -> str:
        """Claim the shared history for ``identity`` where the rule allows; returns the shared identity."""
        got = self._claim(keys=[self.keys.shared_catalogue],
                          args=[identity, "file" if is_file(identity) else "server"])
        return got.decode() if isinstance(got, bytes) else str(got)

    def shared(self) -> str | None:
        """The shared history's identity (None: no archiver has started yet)."""
        got = self.r.get(self.keys.shared_catalogue)
        return None if got is None else (got.decode() if isinstance(got, bytes) else str(got))

    def reset(self) -> str | None:
        """Drop the claim (``falq db shared --reset``); returns what it was."""
        old = self.shared()
        self.r.delete(self.keys.shared_catalogue)
        return old

    def registrations(self) -> list[Registration]:
        """Every registration, by host then role."""
        found: list[Registration] = []
        for field, raw in self.r.hgetall(self.keys.catalogues).items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            role, _, host = name.partition("@")
            try:
                doc: dict[str, Any] = json.loads(raw)
                found.append(Registration(role, host, str(doc["catalogue"]), float(doc["seen"])))
            except (ValueError, KeyError, TypeError):
                continue  # a garbled entry says nothing about any host
        return sorted(found, key=lambda g: (g.host, g.role))

    def outside(self, now: float | None = None) -> list[Registration]:
        """Live registrations whose catalogue is not the shared history (empty while unclaimed)."""
        shared = self.shared()
        if shared is None:
            return []
        return [g for g in self.registrations() if g.catalogue != shared and not g.stale(now)]


def explain_outside(identity: str, shared: str) -> str:
    """Why this host's archiver stands aside, and the fix."""
    return (f"this host's catalogue {identity} is not the deployment's shared history {shared}: "
            "finished jobs are left in Redis for the archivers that share it. Fix: set FALQ_DATABASE_URL "
            "to the shared database on every host (docs: multi-host checklist); to make another "
            "catalogue the shared history on purpose, run `falq db shared --reset` and restart its workers")
