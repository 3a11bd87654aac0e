"""The one way falq connects to Redis (job records, leases, limits): a client that rides out
a Redis restart -- or a Sentinel failover -- instead of failing the step, shared by workers,
producers and the gateway.

URL forms (``FALQ_REDIS_URL``)::

    redis://[[user]:password@]host[:6379][/db]          one server (redis-py's form)
    rediss://...                                          the same over TLS
    redis+sentinel://[[user]:password@]host1[:26379][,host2[:26379]...]/SERVICE[/db][?sentinel_password=...]
    rediss+sentinel://...                                 the same, TLS to the servers and sentinels

In the Sentinel form the hosts are the *sentinels* (port 26379 unless given), ``SERVICE``
is the master name of ``sentinel monitor``, the credentials are the Redis servers' and
``sentinel_password`` (and ``sentinel_username``) the sentinels' own, if they need one. The
client asks the sentinels for the master on every new connection, so after a failover it
reconnects to the new master by itself (a demoted master's ``READONLY`` answer counts as a
lost connection and is retried).

Example::

    r = redis_client("redis://127.0.0.1:6379/0")
    r = redis_client("redis+sentinel://:secret@10.0.0.1,10.0.0.2,10.0.0.3/mymaster/0")
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

if TYPE_CHECKING:
    from redis.client import Pipeline

    from falq.shared.settings import Settings

log = logging.getLogger("falq.redis")

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL (see the module docstring)."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://[[user]:password@]h1[:p1],h2[:p2]/SERVICE[/db][?sentinel_password=..]``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL (expected {' or '.join(s + '://' for s in SENTINEL_SCHEMES)})")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = creds.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    sentinels = [_host_port(h) for h in hosts.split(",") if h.strip()]
    if not sentinels:
        raise ValueError("a Sentinel URL needs at least one sentinel host")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError("a Sentinel URL's path is /SERVICE_NAME or /SERVICE_NAME/DB")
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise ValueError(f"database {parts[1]!r} in a Sentinel URL is not a number") from None
    q = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(q) - {"sentinel_password", "sentinel_username"}
    if unknown:
        raise ValueError(f"unknown Sentinel URL parameter(s): {', '.join(sorted(unknown))}")
    return SentinelURL(sentinels=sentinels, service=unquote(parts[0]), db=db, username=username,
                       password=password, sentinel_username=q.get("sentinel_username"),
                       sentinel_password=q.get("sentinel_password"), tls=scheme.lower() == "rediss+sentinel")


def _host_port(text: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [::1]:26379
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"bad sentinel address {text!r}")
    try:
        return host, int(port) if port else DEFAULT_SENTINEL_PORT
    except ValueError:
        raise ValueError(f"bad sentinel port in {text!r}") from None


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):  # type: ignore[misc]
    """Sentinel's master discovery with the blocking pool's wait-for-a-free-connection."""


class SentinelConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection, closed when a read is interrupted, as a plain one is.

    ``SentinelManagedConnection.read_response`` defaults ``disconnect_on_error`` to False
    (``Connection``'s default is True), so a read cut short -- a greenlet killed while it
    waits for WAIT, a socket timeout -- puts the connection back in the pool with its answer
    still unread, and the *next* command on it reads that answer as its own (measured in
    tests/system/test_redis_failover.py: ``HMGET`` returning WAIT's integer, jobs "cancelled" by a
    stray 1). Used for job records (here) and the broker (falq.shared.engine.broker).
    """

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("disconnect_on_error", True)
        return super().read_response(*args, **kwargs)


class SentinelSSLConnection(SentinelConnection, redis.SSLConnection):
    """:class:`SentinelConnection` over TLS."""


def redis_client(url: str, *, max_connections: int = 64, settings: Settings | None = None) -> redis.Redis:
    """A Redis client that rides out a Redis restart (or failover) instead of failing the step.

    A blocking pool: when every connection is busy, a caller waits for one (up to 30 s)
    instead of failing -- redis-py's default pool raises at 100 connections, which a
    gevent worker with 1,000 jobs in flight would hit.

    ``settings`` gives the client falq's replica-acknowledgement policy
    (``redis_wait_replicas``, ``redis_wait_timeout_ms``) for :func:`wait_for_replicas`.
    """
    options: dict[str, Any] = dict(
        max_connections=max_connections,
        timeout=30,
        socket_timeout=15,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    if is_sentinel_url(url):
        u = parse_sentinel_url(url)
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2}
        if u.sentinel_password is not None:
            sentinel_kwargs.update(password=u.sentinel_password, username=u.sentinel_username)
        if u.tls:
            sentinel_kwargs["ssl"] = True
        sentinel = Sentinel(u.sentinels, sentinel_kwargs=sentinel_kwargs)
        client: redis.Redis = sentinel.master_for(
            u.service, connection_pool_class=_BlockingSentinelPool, db=u.db, username=u.username,
            password=u.password, connection_class=SentinelSSLConnection if u.tls else SentinelConnection,
            **options,
        )
    else:
        pool = redis.BlockingConnectionPool.from_url(url, **options)
        client = redis.Redis(connection_pool=pool)
    if settings is not None:
        _policy(client, settings)
    return client


# --- replica acknowledgement (WAIT) --------------------------------------------------------
#: How long the master's count of online replicas (``INFO replication``) is reused.
REPLICA_INFO_TTL_S = 5.0
#: A write that propagates to replicas but touches no key (nobody subscribes to it): it
#: moves the connection's replication offset, so WAIT covers every write the master applied
#: before it, whichever connection made them.
_MARKER_CHANNEL = "falq:replica-wait"


@dataclass
class _Policy:
    replicas: int | None = None  # None: auto (online replicas, capped at 1); 0: off
    timeout_ms: int = 1000
    seen: tuple[float, int] | None = None  # (monotonic time, online replicas)


_POLICIES: weakref.WeakKeyDictionary[redis.Redis, _Policy] = weakref.WeakKeyDictionary()
_POLICIES_LOCK = threading.Lock()


def _policy(client: redis.Redis, settings: Settings | None = None) -> _Policy:
    with _POLICIES_LOCK:
        pol = _POLICIES.get(client)
        if pol is None:
            pol = _POLICIES[client] = _Policy()
        if settings is not None:
            pol.replicas, pol.timeout_ms = settings.redis_wait_replicas, settings.redis_wait_timeout_ms
        return pol


def replicas_to_wait_for(client: redis.Redis, settings: Settings | None = None) -> int:
    """How many replicas a durable write waits for (0: none). Auto mode reads the master's
    ``INFO replication`` at most every :data:`REPLICA_INFO_TTL_S` seconds."""
    pol = _policy(client, settings)
    if pol.replicas is not None:
        return max(0, pol.replicas)
    now = time.monotonic()
    seen = pol.seen
    if seen is None or now - seen[0] > REPLICA_INFO_TTL_S:
        info = client.info("replication")
        online = sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                     and v.get("state") == "online")
        pol.seen = seen = (now, online)
    return min(1, seen[1])


def wait_for_replicas(client: redis.Redis, settings: Settings | None = None, *,
                      pipe: Pipeline | None = None, what: str = "a write") -> list[Any]:
    """Run ``pipe`` (if any), then wait until replicas acknowledged it (Redis ``WAIT``).

    Every write the master applied before the WAIT is covered (not only this connection's):
    a marker ``PUBLISH`` in the same pipeline moves the connection's replication offset.
    Queue the writes themselves (or a read that verifies them) in ``pipe``: a pipeline
    redis-py re-sends after a lost connection re-runs them on the server it then reaches
    (after a failover, the new master), so the WAIT always speaks of the same server.

    Returns ``pipe``'s results. Never raises for a timeout: it logs a warning with the count
    acknowledged (the write is on the master only) and goes on. Off with
    ``FALQ_REDIS_WAIT_REPLICAS=0``; with no replicas it costs nothing but a cached INFO.
    ``settings`` defaults to the policy ``redis_client(..., settings=)`` gave the client.
    """
    wanted = replicas_to_wait_for(client, settings)
    if not wanted:
        return pipe.execute() if pipe is not None else []
    pol = _policy(client)
    p = pipe if pipe is not None else client.pipeline(transaction=False)
    p.execute_command("PUBLISH", _MARKER_CHANNEL, "")
    p.execute_command("WAIT", wanted, pol.timeout_ms)
    *results, _, acked = p.execute()
    if int(acked) < wanted:
        pol.seen = None  # replicas may have gone (a failover): count them again next time
        log.warning("%s was acknowledged by %d of %d replica(s) within %d ms; it is on the master only",
                    what, int(acked), wanted, pol.timeout_ms)
    return results


def text(value: Any) -> str:
    """A Redis reply as ``str`` (clients made without ``decode_responses`` answer bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
