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
  of :func:`falq.shared.outbound.is_public`, shared with outgoing webhooks).

Redirects are followed by hand (at most :data:`MAX_REDIRECTS`), sizes are capped by
``settings.max_image_bytes`` both from Content-Length and while streaming. Network
trouble, 408/429/5xx become :class:`StorageTransientError` (reason ``media_fetch``,
with Retry-After); any other refusal is a :class:`MirrorRejected`. Messages name the host,
never the full URL (fal's URLs may carry access tokens).

Known limit: the address check resolves the name once and httpx resolves it again when
connecting, so DNS rebinding is not fully prevented; the host allowlist is the primary
defence.

Example::

    with httpx.Client(timeout=30) as http, open_media(http, url, settings) as media:
        for chunk in media.iter_bytes():
            sink.write(chunk)
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from falq.shared.errors import MirrorRejected, StorageTransientError
from falq.shared.outbound import IPAddress, OutboundUnresolved, is_public, resolve
from falq.shared.settings import Settings

__all__ = ["MAX_REDIRECTS", "MediaStream", "check_media_url", "host_allowed", "open_media"]

MAX_REDIRECTS = 3
#: Default wall-clock budget for one download, so a trickling body cannot hold a worker.
DEFAULT_DEADLINE_S = 300.0
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
    if not settings.allow_private_media:
        for addr in _resolve(host, port):
            if not is_public(addr):
                raise MirrorRejected(f"media host {host} resolves to a non-public address ({addr})")


@dataclass
class MediaStream:
    """An open, checked media response. Iterate :meth:`iter_bytes` to read the body."""

    response: httpx.Response
    host: str
    max_bytes: int
    deadline: float

    @property
    def content_type(self) -> str | None:
        """The Content-Type the host claimed (unverified; sniff the bytes)."""
        return self.response.headers.get("content-type")

    @property
    def content_length(self) -> int | None:
        value = self.response.headers.get("content-length")
        return int(value) if value and value.strip().isdigit() else None

    def iter_bytes(self, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """The decoded body in chunks; raises MirrorRejected past ``max_bytes``."""
        total = 0
        try:
            for chunk in self.response.iter_bytes(chunk_size):
                total += len(chunk)
                if total > self.max_bytes:
                    raise MirrorRejected(
                        f"image from {self.host} exceeds {self.max_bytes} bytes (FALQ_MAX_IMAGE_BYTES)"
                    )
                if time.monotonic() > self.deadline:
                    raise StorageTransientError(
                        f"downloading the image from {self.host} took too long", reason=_REASON
                    )
                yield chunk
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.host) from None


@contextmanager
def open_media(
    http: httpx.Client, url: str, settings: Settings, *, deadline_s: float = DEFAULT_DEADLINE_S
) -> Iterator[MediaStream]:
    """Open ``url`` for streaming after checking it and every redirect target.

    Never lets httpx follow redirects: each hop is checked with :func:`check_media_url`.
    Yields a :class:`MediaStream`; the response is closed on exit.

    Example::

        with open_media(http, url, settings) as media:
            data = b"".join(media.iter_bytes())
    """
    deadline = time.monotonic() + deadline_s
    response, host = _connect(http, url, settings)
    try:
        _check_status(response, host)
        length = response.headers.get("content-length")
        if length and length.strip().isdigit() and int(length) > settings.max_image_bytes:
            raise MirrorRejected(
                f"image from {host} is {int(length)} bytes; the limit is {settings.max_image_bytes}"
                " (FALQ_MAX_IMAGE_BYTES)"
            )
        yield MediaStream(response=response, host=host, max_bytes=settings.max_image_bytes, deadline=deadline)
    finally:
        response.close()


def _connect(http: httpx.Client, url: str, settings: Settings) -> tuple[httpx.Response, str]:
    """Send the GET, following at most MAX_REDIRECTS checked redirects by hand."""
    check_media_url(url, settings)
    current = httpx.URL(url)
    for hop in range(MAX_REDIRECTS + 1):
        host = current.host
        request = http.build_request("GET", current, headers=_HEADERS)
        try:
            response = http.send(request, stream=True, follow_redirects=False)
        except httpx.TransportError as exc:
            raise _transport_error(exc, host) from None
        location = response.headers.get("location")
        if not (response.is_redirect and location):
            return response, host
        response.close()
        if hop == MAX_REDIRECTS:
            raise MirrorRejected(f"image from {host} redirected more than {MAX_REDIRECTS} times")
        try:
            current = current.join(location)
            check_media_url(str(current), settings)
        except (MirrorRejected, httpx.InvalidURL, ValueError) as exc:
            raise MirrorRejected(f"redirect to a host outside the allowlist (from {host}: {exc})") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _check_status(response: httpx.Response, host: str) -> None:
    status = response.status_code
    if status == 200:
        return
    if status in (408, 429) or status >= 500:
        raise StorageTransientError(
            f"media host {host} answered HTTP {status}",
            retry_after=_retry_after(response.headers.get("retry-after")),
            reason=_REASON,
        )
    raise MirrorRejected(f"media host {host} answered HTTP {status}")


def _transport_error(exc: httpx.TransportError, host: str) -> StorageTransientError:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    text = f"fetching the image from {host} {kind} ({type(exc).__name__})"
    return StorageTransientError(text, reason=_REASON)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


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
    """:func:`falq.shared.outbound.resolve`, a failure as a transient media fetch error."""
    try:
        return resolve(host, port)
    except OutboundUnresolved as exc:
        raise StorageTransientError(f"media fetch: {exc}", reason=_REASON) from None
