"""Safe fetching of output images from fal's media hosts.

fal hands us URLs; a compromised or confused answer must not turn a worker into a proxy
for the internal network (SSRF) or fill its disk. So every URL -- and every redirect
target -- is checked before we connect:

* the scheme is ``https`` (plain ``http`` only for an allowlisted host while
  ``allow_private_media`` is on: the local emulator);
* the host matches ``settings.media_host_list()``: exact hosts (any port), ``*.suffix``
  (subdomains of ``suffix``, not ``suffix`` itself) or ``host:port`` (that port only);
* unless ``allow_private_media``, no address the host resolves to (or the IP literal) is
  private, loopback, link-local, reserved, multicast or otherwise not global (the rules
  of :func:`falq.shared.egress.is_public`, shared with outgoing webhooks).

Each host is resolved **once** per hop and the request is sent **to the checked address**
through :func:`falq.shared.egress.send_pinned`, the one egress path callbacks use too
(numeric host spellings are read alike on both): the URL's host is replaced by the IP,
``Host`` carries the name and, for https, the ``sni_hostname`` request extension makes TLS
send the name as SNI and verify the certificate against it; https requests carry
``Connection: close`` so a TLS connection verified for one name is never reused for
another. No second DNS lookup happens, so a name that answers a public address to the
check and a private one to the connection (DNS rebinding) gets nowhere. With
``allow_private_media`` the name is still resolved once and pinned, only the address check
is skipped. If connecting to an address fails, the next checked address is tried.

Redirects are followed by hand (at most :data:`MAX_REDIRECTS`), each hop checked, resolved
and pinned the same way. Sizes are capped by ``settings.max_image_bytes`` both from
Content-Length and while streaming. Time is bounded in total, not only per read
(:mod:`falq.shared.deadline`): the final answer's headers must be complete within
:data:`HEADERS_DEADLINE_FACTOR` x ``settings.fal_http_timeout_s`` of the start, and the
whole download within ``deadline_s`` -- a host that trickles its headers or body one byte
at a time is cut off. Network trouble, 408/429/5xx and a missed deadline become
:class:`StorageTransientError` (reason ``media_fetch``, with Retry-After); any other refusal
is a :class:`MirrorRejected` (403/404: :class:`MediaAccessDenied`, which the mirror answers
with a signed URL). Messages name the host, never the full URL (fal's URLs may
carry access tokens).

Use a client from :func:`make_media_client` (no environment proxy: a proxy would resolve
the name itself). :func:`open_media` also installs the deadline wrapper on any other
client it is given.

Example::

    with httpx.Client(timeout=30) as http, open_media(http, url, settings) as media:
        for chunk in media.iter_bytes():
            sink.write(chunk)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from falq.shared import deadline
from falq.shared.egress import (
    IPAddress,
    OutboundUnresolved,
    Target,
    is_public,
    resolve,
    retry_after_s,
    send_pinned,
)
from falq.shared.errors import MediaAccessDenied, MirrorRejected, StorageTransientError
from falq.shared.settings import Settings

__all__ = [
    "HEADERS_DEADLINE_FACTOR",
    "MAX_REDIRECTS",
    "MediaStream",
    "check_media_url",
    "host_allowed",
    "make_media_client",
    "open_media",
]

MAX_REDIRECTS = 3
#: Default wall-clock budget for one download, so a trickling body cannot hold a worker.
DEFAULT_DEADLINE_S = 300.0
#: The final answer's headers (all redirect hops included) must be complete within this many
#: times ``fal_http_timeout_s``: httpx's timeouts are per read, so trickled headers never time out.
HEADERS_DEADLINE_FACTOR = 2.0
_REASON = "media_fetch"
# identity: the size cap then counts wire bytes, and no decompression bomb is possible.
_HEADERS = {"Accept": "image/*", "Accept-Encoding": "identity"}


def host_allowed(host: str, port: int, allowlist: list[str]) -> bool:
    """Whether ``host:port`` matches one of the allowlist entries (see module docs)."""
    host = host.lower().rstrip(".")
    for entry in allowlist:
        e_host, e_port = _split_entry(entry)
        if e_port is not None and e_port != port:
            continue
        if e_host.startswith("*."):
            if host.endswith(e_host[1:]) and len(host) > len(e_host) - 1:
                return True
        elif host == e_host:
            return True
    return False


def check_media_url(url: str, settings: Settings) -> None:
    """Raise :class:`MirrorRejected` unless ``url`` may be fetched (scheme, host, address).

    DNS failures raise :class:`StorageTransientError` (the resolver may recover).

    Example::

        check_media_url("https://v3.fal.media/files/x.png", settings)     # passes
        check_media_url("https://169.254.169.254/latest", settings)       # MirrorRejected
    """
    _check(url, settings)


def _check(url: str, settings: Settings) -> Target:
    """:func:`check_media_url`, returning the addresses the host resolved to (one lookup)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise MirrorRejected("output image URL is not a valid URL") from None
    scheme = parsed.scheme.lower()
    try:
        host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    except UnicodeDecodeError:
        raise MirrorRejected("output image URL has an invalid host") from None
    if scheme not in ("https", "http") or not host:
        raise MirrorRejected(f"output image URL scheme {scheme or '(none)'!r} is not allowed (https only)")
    if parsed.userinfo:
        raise MirrorRejected(f"output image URL for host {host} carries credentials; refusing")
    port = parsed.port or (443 if scheme == "https" else 80)
    if not host_allowed(host, port, settings.media_host_list()):
        raise MirrorRejected(f"media host {host} is not in the allowlist (FALQ_MEDIA_HOSTS)")
    if scheme == "http" and not settings.allow_private_media:
        raise MirrorRejected(f"plain http from {host} is not allowed (https only)")
    addrs = _resolve(host, port)
    if not settings.allow_private_media:
        for addr in addrs:
            if not is_public(addr):
                raise MirrorRejected(f"media host {host} resolves to a non-public address ({addr})")
    return Target(url=parsed, host=host, port=port, addresses=tuple(addrs))


def make_media_client(settings: Settings, *, max_connections: int | None = None) -> httpx.Client:
    """The client media downloads should use: no redirects, no environment proxy (it would
    resolve the name itself, undoing the address check), total deadlines installed."""
    size = max_connections or max(100, settings.worker_concurrency)
    client = httpx.Client(
        timeout=httpx.Timeout(60.0, connect=10.0, pool=60.0),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=size, max_keepalive_connections=64),
    )
    return deadline.install(client)


@dataclass
class MediaStream:
    """An open, checked media response. Iterate :meth:`iter_bytes` to read the body.

    ``host`` is the URL's host name, ``address`` the IP the answer came from.
    """

    response: httpx.Response
    host: str
    max_bytes: int
    deadline: float
    address: str = ""

    @property
    def content_type(self) -> str | None:
        """The Content-Type the host claimed (unverified; sniff the bytes)."""
        return self.response.headers.get("content-type")

    @property
    def content_length(self) -> int | None:
        value = self.response.headers.get("content-length")
        return int(value) if value and value.strip().isdigit() else None

    def iter_bytes(self, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """The decoded body in chunks; raises MirrorRejected past ``max_bytes``.

        Each read is bounded by the download's deadline, so a trickling body cannot
        outlast it by a whole read timeout.
        """
        total = 0
        budget = deadline.Budget(until=self.deadline)
        chunks = self.response.iter_bytes(chunk_size)
        try:
            while True:
                with deadline.bounded(budget):  # no yield inside: the context stays the caller's
                    chunk = next(chunks, None)
                if chunk is None:
                    return
                total += len(chunk)
                if total > self.max_bytes:
                    raise MirrorRejected(
                        f"image from {self.host} exceeds {self.max_bytes} bytes (FALQ_MAX_IMAGE_BYTES)"
                    )
                if time.monotonic() > self.deadline:
                    raise self._too_long()
                yield chunk
        except httpx.TransportError as exc:
            if budget.expired:
                raise self._too_long() from None
            raise _transport_error(exc, self.host) from None

    def _too_long(self) -> StorageTransientError:
        return StorageTransientError(f"downloading the image from {self.host} took too long", reason=_REASON)


@contextmanager
def open_media(
    http: httpx.Client, url: str, settings: Settings, *, deadline_s: float = DEFAULT_DEADLINE_S
) -> Iterator[MediaStream]:
    """Open ``url`` for streaming after checking it and every redirect target.

    Never lets httpx follow redirects: each hop is checked like :func:`check_media_url`,
    resolved once, and the request sent to the checked address. Yields a
    :class:`MediaStream`; the response is closed on exit.

    Example::

        with open_media(http, url, settings) as media:
            data = b"".join(media.iter_bytes())
    """
    deadline.install(http)  # idempotent; a client from make_media_client already has it
    start = time.monotonic()
    end = start + deadline_s
    headers_s = settings.fal_http_timeout_s * HEADERS_DEADLINE_FACTOR
    budget = deadline.Budget(until=min(end, start + headers_s))
    if headers_s < deadline_s:
        expired = (f"timed out: its answer headers were not complete after {headers_s:.1f}s"
                   " (slow or trickling headers)")
    else:
        expired = "took too long"
    with deadline.bounded(budget):
        response, host, address = _connect(http, url, settings, budget, expired)
    try:
        _check_status(response, host)
        length = response.headers.get("content-length")
        if length and length.strip().isdigit() and int(length) > settings.max_image_bytes:
            raise MirrorRejected(
                f"image from {host} is {int(length)} bytes; the limit is {settings.max_image_bytes}"
                " (FALQ_MAX_IMAGE_BYTES)"
            )
        yield MediaStream(response=response, host=host, max_bytes=settings.max_image_bytes, deadline=end,
                          address=address)
    finally:
        response.close()


def _connect(http: httpx.Client, url: str, settings: Settings, budget: deadline.Budget,
             expired: str) -> tuple[httpx.Response, str, str]:
    """Send the GET, following at most MAX_REDIRECTS checked redirects by hand.

    Returns the response, the host name and the address it came from.
    """
    hop = _check(url, settings)
    for n in range(MAX_REDIRECTS + 1):
        response, address = _send_pinned(http, hop, budget, expired)
        location = response.headers.get("location")
        if not (response.is_redirect and location):
            return response, hop.host, address
        response.close()
        if n == MAX_REDIRECTS:
            raise MirrorRejected(f"image from {hop.host} redirected more than {MAX_REDIRECTS} times")
        try:
            hop = _check(str(hop.url.join(location)), settings)
        except (MirrorRejected, httpx.InvalidURL, ValueError) as exc:
            raise MirrorRejected(f"redirect to a host outside the allowlist (from {hop.host}: {exc})") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _send_pinned(http: httpx.Client, hop: Target, budget: deadline.Budget,
                 expired: str) -> tuple[httpx.Response, str]:
    """GET ``hop.url`` from its checked addresses in turn (:func:`falq.shared.egress.send_pinned`,
    the egress path callbacks use too)."""
    try:
        response, addr = send_pinned(http, hop, "GET", headers=_HEADERS, stream=True,
                                     give_up=lambda: budget.expired)
    except httpx.TransportError as exc:
        raise _transport_error(exc, hop.host, budget, expired) from None
    return response, str(addr)


def _check_status(response: httpx.Response, host: str) -> None:
    status = response.status_code
    if status == 200:
        return
    if status in (408, 429) or status >= 500:
        raise StorageTransientError(
            f"media host {host} answered HTTP {status}",
            retry_after=retry_after_s(response.headers.get("retry-after")),
            reason=_REASON,
        )
    if status in (403, 404):
        raise MediaAccessDenied(f"media host {host} answered HTTP {status}", status_code=status)
    raise MirrorRejected(f"media host {host} answered HTTP {status}")


def _transport_error(exc: httpx.TransportError, host: str, budget: deadline.Budget | None = None,
                     expired: str = "") -> StorageTransientError:
    """``expired``: what to say when ``budget`` ran out (then the error is the deadline's)."""
    if budget is not None and budget.expired and isinstance(exc, httpx.TimeoutException):
        verb = "downloading" if expired == "took too long" else "fetching"
        return StorageTransientError(f"{verb} the image from {host} {expired}", reason=_REASON)
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    text = f"fetching the image from {host} {kind} ({type(exc).__name__})"
    return StorageTransientError(text, reason=_REASON)


def _split_entry(entry: str) -> tuple[str, int | None]:
    entry = entry.strip().lower()
    if entry.startswith("["):  # [v6]:port
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host.rstrip("."), int(port) if port.isdigit() else None
    return entry.rstrip("."), None


def _resolve(host: str, port: int) -> list[IPAddress]:
    """:func:`falq.shared.egress.resolve`, a failure as a transient media fetch error."""
    try:
        return resolve(host, port)
    except OutboundUnresolved as exc:
        raise StorageTransientError(f"media fetch: {exc}", reason=_REASON) from None
