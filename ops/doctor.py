"""``falq doctor``'s checks: does this configuration work, and if not, what to change.

Each check returns a :class:`Check` (``pass``, ``warn``, ``fail`` or ``skip``, one line of what
was found, and for anything but a pass the fix). :func:`run_checks` runs them all; any ``fail``
makes ``falq doctor`` exit non-zero. The checks only read, except three probes that clean up
after themselves: a Redis key (and a broker key) with a 60 s TTL, deleted at once, and an S3
object put, read back and deleted. No check starts a generation or spends money: the fal check
asks for the status of a made-up request id, which the live queue answers 404 for an accepted
key and 401/403 for a refused one (a third-party measurement, see the README's section "fal,
as the live service behaves"; fal documents no cheaper authenticated call on the queue host).

Example::

    results = run_checks(Settings())
    [c.line() for c in results]
    any(c.status == "fail" for c in results)
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import redis

from falq.shared.fal.endpoints import TEXT_TO_IMAGE
from falq.shared.redisconn import SentinelConnection, SentinelSSLConnection, is_sentinel_url, parse_sentinel_url
from falq.shared.settings import Settings, mask_url_password

__all__ = ["CLOCK_SKEW_MAX_S", "Check", "run_checks"]

Status = Literal["pass", "warn", "fail", "skip"]
#: Largest tolerated difference between this host's clock and Redis' (leases, deadlines and the
#: limiter's windows mix both clocks; a second or two is noise, more shifts every timeout).
CLOCK_SKEW_MAX_S = 2.0
#: Every network wait of a check is bounded by this (doctor never hangs on a dead service).
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``fix`` says what to change (empty on a pass)."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.upper():4}  {self.name:<18} {self.detail}"
        return text + (f"\n      {'':<18} fix: {self.fix}" if self.fix else "")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _ok(name: str, detail: str) -> Check:
    return Check(name, "pass", detail)


def _plain_client(url: str, settings: Settings) -> redis.Redis:
    """A client without retries whose every wait is bounded by :data:`TIMEOUT_S` (through
    Sentinel for a ``redis+sentinel://`` URL): a dead server is a FAIL line, not a hang."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
    from redis.sentinel import Sentinel

    u = parse_sentinel_url(url)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": TIMEOUT_S, "socket_connect_timeout": TIMEOUT_S}
    if u.sentinel_password is not None:
        sentinel_kwargs.update(password=u.sentinel_password, username=u.sentinel_username)
    if u.tls:
        sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(u.sentinels, sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(u.service, db=u.db, username=u.username, password=u.password,
                               connection_class=SentinelSSLConnection if u.tls else SentinelConnection,
                               socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)


def _probe_redis(name: str, url: str, settings: Settings, what: str) -> Check:
    """PING, then SET/GET/DEL a probe key: reachable and writable (a replica answers reads only)."""
    shown = mask_url_password(url)
    client = _plain_client(url, settings)
    try:
        started = time.perf_counter()
        client.ping()
        key = f"{settings.key_prefix}:doctor:probe:{uuid.uuid4().hex}"
        client.set(key, b"ok", px=60_000)
        back = client.get(key)
        client.delete(key)
        ms = (time.perf_counter() - started) * 1000
    except redis.AuthenticationError:
        return Check(name, "fail", f"{what} at {shown} refused the credentials",
                     f"fix the password in {'FALQ_BROKER_URL' if name == 'broker' else 'FALQ_REDIS_URL'}")
    except redis.ReadOnlyError:
        return Check(name, "fail", f"{what} at {shown} is a read-only replica",
                     "point the URL at the primary (or use a redis+sentinel:// URL)")
    except redis.RedisError as exc:
        return Check(name, "fail", f"{what} at {shown} unreachable: {type(exc).__name__}",
                     f"start Redis, or fix {'FALQ_BROKER_URL' if name == 'broker' else 'FALQ_REDIS_URL'}")
    finally:
        client.close()
    if back != b"ok":
        return Check(name, "fail", f"{what} at {shown} did not return the probe it stored",
                     "check that nothing rewrites keys under FALQ_KEY_PREFIX (a proxy, another app)")
    return _ok(name, f"{what} at {shown} reachable and writable ({ms:.1f} ms)")


def check_redis(settings: Settings) -> Check:
    return _probe_redis("redis", settings.redis_url, settings, "Redis")


def check_broker(settings: Settings) -> Check:
    url = settings.broker_url
    if not url or url == settings.redis_url:
        return _ok("broker", "the broker is the same Redis (FALQ_BROKER_URL unset)")
    if not url.split("://", 1)[0].lower().startswith(("redis", "rediss")):
        return Check("broker", "skip", f"{mask_url_password(url)} is not a Redis broker: not checked")
    return _probe_redis("broker", url, settings, "broker")


def check_sentinel(settings: Settings) -> Check:
    """Every configured sentinel names a master for the service (some down: a warning)."""
    urls = list(dict.fromkeys(u for u in (settings.redis_url, settings.broker_url) if u and is_sentinel_url(u)))
    if not urls:
        return Check("sentinel", "skip", "not configured (no redis+sentinel:// URL)")
    problems: list[str] = []
    masters: set[str] = set()
    total = 0
    for url in urls:
        s = parse_sentinel_url(url)
        for host, port in s.sentinels:
            total += 1
            client = redis.Redis(host=host, port=port, username=s.sentinel_username, password=s.sentinel_password,
                                 socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
            try:
                addr = client.execute_command("SENTINEL", "get-master-addr-by-name", s.service)
            except redis.RedisError as exc:
                problems.append(f"{host}:{port} {type(exc).__name__}")
                continue
            finally:
                client.close()
            if not addr:
                problems.append(f"{host}:{port} knows no master {s.service!r}")
            else:
                masters.add(":".join(x.decode() if isinstance(x, bytes) else str(x) for x in addr))
    if not masters:
        return Check("sentinel", "fail", f"no sentinel names a master ({'; '.join(problems)})",
                     "start the sentinels, or fix the hosts and service name in the redis+sentinel:// URL")
    if len(masters) > 1:
        return Check("sentinel", "fail", f"sentinels disagree on the master: {', '.join(sorted(masters))}",
                     "a split brain: check the sentinels' quorum and network")
    if problems:
        return Check("sentinel", "warn", f"master {masters.pop()}, but {len(problems)} of {total} sentinels "
                     f"did not answer ({'; '.join(problems)})", "bring the missing sentinels back (quorum)")
    return _ok("sentinel", f"{total} sentinel(s) agree on master {masters.pop()}")


def check_clock(settings: Settings) -> Check:
    """This host's clock against Redis' TIME (half the round trip allowed for)."""
    client = _plain_client(settings.redis_url, settings)
    try:
        before = time.time()
        sec, usec = client.time()
        after = time.time()
    except redis.RedisError as exc:
        return Check("clock", "skip", f"Redis unreachable ({type(exc).__name__}): clock not compared")
    finally:
        client.close()
    skew = (sec + usec / 1e6) - (before + after) / 2
    if abs(skew) > CLOCK_SKEW_MAX_S:
        return Check("clock", "fail", f"this host's clock is {-skew:+.2f} s off Redis' (more than "
                     f"{CLOCK_SKEW_MAX_S:g} s)", "run NTP (chrony or systemd-timesyncd) on this host and Redis' host")
    return _ok("clock", f"within {abs(skew) * 1000:.0f} ms of Redis")


def check_s3(settings: Settings) -> Check:
    """PUT, GET and DELETE a probe object under the prefix: the bucket exists and is writable."""
    from botocore.exceptions import BotoCoreError, ClientError

    from falq.shared.storage.s3 import build_s3_client

    bucket = settings.s3_bucket
    where = f"s3://{bucket}" + (f" at {settings.s3_endpoint_url}" if settings.s3_endpoint_url else "")
    key = f"{settings.s3_prefix.strip('/')}/_doctor/{uuid.uuid4().hex}.txt".lstrip("/")
    client = build_s3_client(settings)
    body = b"falq doctor probe"
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/plain")
        back = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        client.delete_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404", "NotFound"):
            return Check("s3", "fail", f"bucket {where} does not exist",
                         f"create it (aws s3 mb s3://{bucket}); with FALQ_S3_CREATE_BUCKET=true (the default) "
                         "the first worker creates it")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled"):
            return Check("s3", "fail", f"{where} refused the probe ({code})",
                         "fix AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or grant s3:PutObject, GetObject and "
                         f"DeleteObject on {settings.s3_prefix}/*")
        return Check("s3", "fail", f"{where}: {code or type(exc).__name__}", "check the bucket and its endpoint")
    except BotoCoreError as exc:
        return Check("s3", "fail", f"{where} unreachable: {type(exc).__name__}",
                     "start the S3 server, or fix FALQ_S3_ENDPOINT_URL / FALQ_S3_REGION")
    if back != body:
        return Check("s3", "fail", f"{where} returned another body for the probe", "check the S3 endpoint")
    return _ok("s3", f"{where} writable (probe put, read back and deleted)")


def check_catalogue(settings: Settings) -> Check:
    """Reachable and at the revision this falq needs (what workers and the gateway check at start)."""
    if not settings.catalogue:
        return Check("catalogue", "skip", "off (FALQ_CATALOGUE=false)")
    from falq.shared.catalogue.engine import (
        auto_upgrades,
        current,
        database_url,
        describe,
        head,
        make_engine,
        sqlite_path,
    )
    from falq.shared.errors import CatalogueUnavailable

    url = database_url(settings)
    shown = describe(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return _ok("catalogue", f"{shown} not created yet: the first worker creates it (embedded SQLite)")
    engine = make_engine(url, timeout_s=min(settings.database_timeout_s, TIMEOUT_S), pool_size=1)
    try:
        have, want = current(engine), head()
    except CatalogueUnavailable as exc:
        return Check("catalogue", "fail", str(exc),
                     "start the database, or fix FALQ_DATABASE_URL (the same on every host)")
    finally:
        engine.dispose()
    if have == want:
        return _ok("catalogue", f"{shown} at revision {have}")
    if auto_upgrades(settings, url):
        return Check("catalogue", "warn", f"{shown} at revision {have or 'none'}, this falq needs {want}",
                     "none needed: the next worker or gateway to start upgrades it (or run `falq db upgrade`)")
    return Check("catalogue", "fail", f"{shown} at revision {have or 'none'}, this falq needs {want}",
                 "run `falq db upgrade` with the same FALQ_DATABASE_URL (workers and the gateway refuse to start)")


def check_shared_history(settings: Settings) -> Check:
    """The multi-host check: this host and every registered one archive into one shared history."""
    if not settings.catalogue:
        return Check("shared-history", "skip", "catalogue off")
    from falq.shared.catalogue.engine import database_url
    from falq.shared.catalogue.registry import CatalogueRegistry, explain_outside, host_name, identity_of, is_file

    client = _plain_client(settings.redis_url, settings)
    try:
        reg = CatalogueRegistry(client, prefix=settings.key_prefix, host=host_name(settings))
        mine = identity_of(database_url(settings), reg.host)
        shared = reg.shared()
        others = [g for g in reg.registrations() if not g.stale()]
    except redis.RedisError as exc:
        return Check("shared-history", "skip", f"Redis unreachable ({type(exc).__name__}): not checked")
    finally:
        client.close()
    outside = [g for g in others if shared is not None and g.catalogue != shared]
    hosts = sorted({g.host for g in others} | {reg.host})
    names = ", ".join(f"{g.role}@{g.host} ({g.catalogue})" for g in outside)
    if shared is not None and mine != shared and not (is_file(shared) and not is_file(mine)):
        return Check("shared-history", "fail", explain_outside(mine, shared).split(": finished")[0]
                     + (f"; also outside it: {names}" if names else ""),
                     "set FALQ_DATABASE_URL to the shared database on this host (and every other); "
                     "`falq db shared --reset` only to move the shared history to another database server")
    if outside:
        return Check("shared-history", "fail", f"outside the shared history {shared}: {names}",
                     "set FALQ_DATABASE_URL to the shared database on those hosts and restart them")
    if is_file(mine) and len(hosts) > 1:
        return Check("shared-history", "fail", f"{len(hosts)} hosts registered ({', '.join(hosts)}) and this "
                     f"one uses an embedded SQLite file ({mine}): only one host can archive into it",
                     "use one database server (PostgreSQL) for every host: FALQ_DATABASE_URL")
    if shared is None:
        return _ok("shared-history", f"no archiver has started yet; this host's {mine} would become it")
    if mine != shared:  # a database server about to take over from an SQLite file
        return Check("shared-history", "warn", f"the shared history is {shared}; this host's {mine} takes it "
                     "over when its first worker starts (a database server wins over a file)",
                     "to keep the old file's history: `falq catalogue rebuild --from-s3` reads it back from S3")
    return _ok("shared-history", f"{len(hosts)} host(s), one history: {shared}")


def check_fal(settings: Settings) -> Check:
    """The queue is reachable and accepts the key: GET the status of a made-up request id
    (404 from an accepted key, 401/403 from a refused one; starts nothing, costs nothing)."""
    if settings.fal_key is None or not settings.fal_key.get_secret_value().strip():
        return Check("fal", "fail", "FAL_KEY is not set", "set FAL_KEY (fal.ai dashboard, API keys)")
    app = "/".join(TEXT_TO_IMAGE["standard"].split("/")[:2])
    url = f"{settings.fal_queue_url.rstrip('/')}/{app}/requests/{uuid.uuid4()}/status"
    headers = {"Authorization": f"Key {settings.fal_key.get_secret_value()}"}
    try:
        resp = httpx.get(url, headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Check("fal", "fail", f"{settings.fal_queue_url} unreachable: {type(exc).__name__}",
                     "check the network (HTTPS egress) or FALQ_FAL_QUEUE_URL")
    where = settings.fal_queue_url
    if resp.status_code == 404:
        return _ok("fal", f"{where} reachable and the key accepted")
    if resp.status_code in (401, 403):
        locked = "locked" in resp.text.lower()
        return Check("fal", "fail", f"{where} refused the key ({resp.status_code}"
                     + (": the account is locked" if locked else "") + ")",
                     "top up the balance at fal.ai/dashboard/billing" if locked
                     else "set FAL_KEY to a valid key with the queue API scope")
    return Check("fal", "fail", f"{where} answered {resp.status_code} to a status probe",
                 "check FALQ_FAL_QUEUE_URL (it is the queue host, e.g. https://queue.fal.run)")


def _private_host(host: str) -> bool:
    if host in ("localhost", "") or host.endswith((".local", ".internal", ".localhost")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_private or ip.is_loopback or ip.is_link_local


def check_callbacks(settings: Settings) -> Check:
    """Webhook and callback settings: fal can reach FALQ_FAL_WEBHOOK_URL; callbacks are signed."""
    live = not _private_host(urlsplit(settings.fal_queue_url).hostname or "")
    problems: list[tuple[Status, str, str]] = []
    hook = settings.fal_webhook_url
    if hook:
        parts = urlsplit(hook)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(("fail", f"FALQ_FAL_WEBHOOK_URL {hook!r} is not an http(s) URL",
                             "set it to the gateway's public https://.../_falq/fal-webhook"))
        elif live and _private_host(parts.hostname):
            problems.append(("fail", f"FALQ_FAL_WEBHOOK_URL points at {parts.hostname}, which fal cannot reach",
                             "use the gateway's public URL (or unset it: workers then follow each request)"))
        elif not parts.path.rstrip("/").endswith("/_falq/fal-webhook"):
            problems.append(("warn", f"FALQ_FAL_WEBHOOK_URL does not end in /_falq/fal-webhook ({parts.path})",
                             "point it at the gateway's /_falq/fal-webhook route"))
        elif live and parts.scheme != "https":
            problems.append(("warn", "FALQ_FAL_WEBHOOK_URL is plain http", "serve the gateway behind TLS"))
    if settings.callback_secret is None:
        problems.append(("warn", "FALQ_CALLBACK_SECRET unset: job callbacks are sent unsigned",
                         "set FALQ_CALLBACK_SECRET so receivers can verify falq's callbacks"))
    if live and settings.callback_allow_private:
        problems.append(("warn", "FALQ_CALLBACK_ALLOW_PRIVATE=true with the live fal: a callback URL may reach "
                         "private addresses", "leave it false outside a test bed"))
    if not problems:
        how = "fal webhooks to " + hook if hook else "workers follow each request (no fal webhook)"
        return _ok("callbacks", f"{how}; callbacks signed")
    worst: Status = "fail" if any(p[0] == "fail" for p in problems) else "warn"
    return Check("callbacks", worst, "; ".join(p[1] for p in problems), "; ".join(p[2] for p in problems))


def check_gateway_keys(settings: Settings) -> Check:
    """The gateway has a way in: FALQ_API_KEYS or at least one tenant key (else it refuses to start)."""
    from falq.gateway.config import GatewaySettings
    from falq.shared.tenants.store import ApiKeyStore

    if GatewaySettings().key_list():
        return _ok("gateway-keys", "FALQ_API_KEYS set")
    client = _plain_client(settings.redis_url, settings)
    try:
        any_key = ApiKeyStore(client, prefix=settings.key_prefix).any_key()
    except redis.RedisError as exc:
        return Check("gateway-keys", "skip", f"Redis unreachable ({type(exc).__name__}): not checked")
    finally:
        client.close()
    if any_key:
        return _ok("gateway-keys", "tenant API keys exist (FALQ_API_KEYS unset)")
    return Check("gateway-keys", "warn", "no FALQ_API_KEYS and no tenant key: `falq api` would refuse to start",
                 "create one: `falq tenants key create default --scope admin`, or set FALQ_API_KEYS")


CHECKS: tuple[Callable[[Settings], Check], ...] = (
    check_redis, check_broker, check_sentinel, check_clock, check_s3, check_catalogue, check_shared_history,
    check_fal, check_callbacks, check_gateway_keys)


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order; a check that raises is reported as a failure of its own."""
    out = []
    for fn in CHECKS:
        name = fn.__name__.removeprefix("check_").replace("_", "-")
        try:
            out.append(fn(settings))
        except Exception as exc:  # a bug or an unforeseen answer must not hide the other checks
            out.append(Check(name, "fail", f"the check itself failed: {type(exc).__name__}",
                             "report this: run with --json and include the output"))
    return out
