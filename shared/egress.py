"""Outgoing webhooks: the one place falq POSTs to a URL a caller chose.

Per-job callbacks (:mod:`falq.workers.callbacks.sender`, ``callback_url``) and the gateway's
``fal_webhook`` deliveries (:mod:`falq.gateway.fal.webhook_sender`) both send through
:func:`post_json` / :func:`post_json_async`, so a caller of ``POST /v1/jobs`` cannot turn a
worker or the gateway into a proxy for the internal network (SSRF). The rules:

* the URL is ``http`` or ``https``, has a host, carries no credentials (``user:pw@``) and is
  at most :data:`MAX_URL_LENGTH` characters (:func:`parse_url`);
* the host is resolved **once** (:func:`resolve`); unless ``allow_private``, every address it
  resolves to must be public (:func:`is_public`: not private, loopback, link-local,
  multicast, reserved, unspecified or otherwise not global -- IPv4-mapped, 6to4 and Teredo
  addresses are judged by the IPv4 address they embed). One bad address refuses the target;
* the request is sent **to the checked address** -- the URL's host is replaced by the IP,
  ``Host`` carries the name and, for https, the ``sni_hostname`` request extension makes
  TLS send the name as SNI and verify the certificate against it. No second DNS lookup
  happens, so DNS rebinding cannot swap a public answer for a private one in between;
  https requests also carry ``Connection: close``, so a pooled TLS connection verified for
  one name is never reused for another name on the same address;
* redirects are never followed: a 3xx answer is returned as a final, undelivered outcome.

A refused target raises :class:`OutboundRefused` (permanent: do not retry), a resolver
failure :class:`OutboundUnresolved` (retryable); network trouble is httpx's own
:class:`httpx.HTTPError`. Use the clients of :func:`make_client` / :func:`make_async_client`
(``trust_env=False``: an environment proxy would connect by itself, and a CONNECT tunnel to
an IP cannot verify the certificate against the name).

It is falq's one SSRF-safe egress path: :mod:`falq.workers.media.download` checks media URLs into
the same :class:`Target` (adding its host allowlist) and sends through the same
:func:`send_pinned`, so callbacks and downloads judge and pin addresses, numeric host
spellings included, identically. The module also holds the ``X-Falq-Signature`` scheme (:func:`sign`,
:func:`verify`): ``t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>``, as
Stripe-style webhooks do.

Example::

    with make_client(timeout=10.0) as http:
        try:
            done = post_json(http, "https://example.com/hook", b'{"ok":true}',
                             {"X-Falq-Job-Id": "j1"}, allow_private=False, secret="s3cret")
        except OutboundRefused as exc:        # e.g. the name resolves to 10.0.0.5
            print("refused:", exc)
        else:
            print(done.delivered, done.status_code, done.address)
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from falq.shared.errors import PermanentError, RetryableError

__all__ = [
    "MAX_URL_LENGTH",
    "SIGNATURE_HEADER",
    "Delivery",
    "IPAddress",
    "OutboundRefused",
    "OutboundUnresolved",
    "Target",
    "check_target",
    "check_url",
    "is_public",
    "make_async_client",
    "make_client",
    "parse_url",
    "pinned_request",
    "post_json",
    "post_json_async",
    "resolve",
    "send_pinned",
    "sign",
    "unwrap",
    "verify",
]

MAX_URL_LENGTH = 2048
SIGNATURE_HEADER = "X-Falq-Signature"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Answers that are worth another try (the receiver is busy or unwell), among the 4xx.
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
_NUMERIC_V4 = re.compile(r"[0-9a-fA-FxX.]+")


class OutboundRefused(PermanentError):
    """The target URL may not be called.

    ``reason`` says why: ``url`` (not an http(s) URL), ``credentials`` (userinfo in the URL)
    or ``address`` (the host is or resolves to a non-public address).
    """

    kind = "outbound_refused"

    def __init__(self, message: str, *, reason: str = "address") -> None:
        super().__init__(message)
        self.reason = reason


class OutboundUnresolved(RetryableError):
    """The target's host did not resolve (the resolver may recover: try again later)."""

    kind = "outbound_unresolved"


# --- addresses ---------------------------------------------------------------------------------


def unwrap(addr: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped IPv6 one (``::ffff:127.0.0.1``), else ``addr``.

    Python 3.11 does not classify IPv4-mapped IPv6 addresses as loopback/private.
    """
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_public(addr: IPAddress) -> bool:
    """Whether ``addr`` is a global unicast address falq may connect to on a caller's behalf.

    Example::

        >>> is_public(ipaddress.ip_address("93.184.216.34")), is_public(ipaddress.ip_address("10.1.2.3"))
        (True, False)
    """
    addr = unwrap(addr)
    if isinstance(addr, ipaddress.IPv6Address):
        # 6to4 (2002::/16) and Teredo (2001::/32) embed an IPv4 address that Python calls
        # global whatever it is; 2002:7f00:1:: is "127.0.0.1" to a 6to4 relay.
        embedded = [addr.sixtofour, *(addr.teredo or ())]
        if any(v4 is not None and not is_public(v4) for v4 in embedded):
            return False
    return not (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_reserved
        or addr.is_multicast
        or addr.is_unspecified
        or not addr.is_global
    )


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal is itself), IPv4-mapped ones unwrapped.

    Numeric spellings (``2130706433``, ``127.1``) resolve like the C library reads them.
    Raises :class:`OutboundUnresolved` when the name does not resolve.
    """
    try:
        return [unwrap(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise OutboundUnresolved(f"cannot resolve host {host} ({exc.__class__.__name__})") from None
    addrs = [unwrap(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos]
    if not addrs:
        raise OutboundUnresolved(f"host {host} resolved to no address")
    return list(dict.fromkeys(addrs))  # in the resolver's order, without repeats


def _numeric_address(host: str) -> IPAddress | None:
    """The address of an IP literal in any spelling the C library accepts; None for a name."""
    try:
        return unwrap(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _NUMERIC_V4.fullmatch(host):
        return None
    try:  # decimal, octal, hex and short forms (2130706433, 0x7f.1, 127.1), as inet_aton reads them
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


# --- URLs and targets ---------------------------------------------------------------------------


def parse_url(url: object, *, what: str = "webhook URL") -> httpx.URL:
    """``url`` as an :class:`httpx.URL` if it is an http(s) URL with a host and no credentials.

    Syntax only (no DNS). Raises :class:`OutboundRefused`; the message names the host at most.
    """
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise OutboundRefused(f"{what} must be an http(s) URL of at most {MAX_URL_LENGTH} characters",
                              reason="url")
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    except (httpx.InvalidURL, TypeError, ValueError, UnicodeDecodeError):
        raise OutboundRefused(f"{what} is not a valid URL", reason="url") from None
    if parsed.scheme not in ("http", "https") or not host:
        raise OutboundRefused(f"{what} must be an http(s) URL (scheme {parsed.scheme or '(none)'!r})", reason="url")
    if parsed.userinfo:
        raise OutboundRefused(f"{what} for host {host} carries credentials; refusing", reason="credentials")
    return parsed


def check_url(url: object, *, allow_private: bool, what: str = "webhook URL") -> httpx.URL:
    """The cheap check for enqueue time: :func:`parse_url` plus, unless ``allow_private``,
    refusing IP literals that are not public and ``localhost`` names. No DNS lookup: a name
    is checked again, resolved, when the delivery is made (:func:`check_target`).

    Example::

        check_url("https://example.com/hook", allow_private=False)    # passes
        check_url("http://169.254.169.254/", allow_private=False)     # OutboundRefused
    """
    parsed = parse_url(url, what=what)
    if allow_private:
        return parsed
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        raise OutboundRefused(f"{what} host {host} is a loopback name")
    addr = _numeric_address(host)
    if addr is not None and not is_public(addr):
        raise OutboundRefused(f"{what} host {host} is a non-public address ({addr})")
    return parsed


@dataclass(frozen=True)
class Target:
    """A checked URL and the addresses it may be sent to (in the resolver's order).

    The one description of an egress target: callbacks (:func:`post_json`) and media
    downloads (:mod:`falq.workers.media.download`) both check into one and send through
    :func:`send_pinned`, so both read numeric host spellings alike (:attr:`literal`).
    """

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def https(self) -> bool:
        return self.url.scheme == "https"

    @property
    def literal(self) -> bool:
        """The host is an IP address in any spelling the C library reads (no SNI name to send)."""
        return _numeric_address(self.host) is not None


def check_target(url: object, *, allow_private: bool, what: str = "webhook URL") -> Target:
    """Parse ``url``, resolve its host once and check every address (blocking: DNS).

    Raises :class:`OutboundRefused` (refused) or :class:`OutboundUnresolved` (DNS failed).

    Example::

        target = check_target("https://example.com/hook", allow_private=False)
        target.addresses       # (IPv4Address('93.184.215.14'),)
    """
    parsed = parse_url(url, what=what)
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addrs = resolve(host, port)
    if not allow_private:
        for addr in addrs:
            if not is_public(addr):
                raise OutboundRefused(f"{what} host {host} resolves to a non-public address ({addr})")
    return Target(url=parsed, host=host, port=port, addresses=tuple(addrs))


def pinned_request(http: httpx.Client | httpx.AsyncClient, target: Target, addr: IPAddress, method: str, *,
                   headers: Mapping[str, str], content: bytes | None = None,
                   timeout: float | None = None) -> httpx.Request:
    """A request to ``addr``, addressed (Host, SNI, certificate) to the target's name.

    https requests carry ``Connection: close``: a pooled TLS connection verified for one name
    is never reused for another name on the same address. ``timeout`` None: the client's.
    """
    hdrs = {**headers, "Host": target.url.netloc.decode("ascii")}
    extensions: dict[str, object] = {}
    if target.https:
        hdrs["Connection"] = "close"
        if not target.literal:
            extensions["sni_hostname"] = target.host
    if timeout is None:
        return http.build_request(method, target.url.copy_with(host=str(addr)), content=content, headers=hdrs,
                                  extensions=extensions)
    return http.build_request(method, target.url.copy_with(host=str(addr)), content=content, headers=hdrs,
                              timeout=timeout, extensions=extensions)


def send_pinned(http: httpx.Client, target: Target, method: str, *, headers: Mapping[str, str],
                content: bytes | None = None, timeout: float | None = None, stream: bool = False,
                give_up: Callable[[], bool] | None = None) -> tuple[httpx.Response, IPAddress]:
    """Send to the target's checked addresses in turn (the next one if connecting fails, unless
    ``give_up()``); never follows redirects. Returns the response and the address it came from.

    Raises httpx's error of the last address tried.
    """
    for i, addr in enumerate(target.addresses):
        request = pinned_request(http, target, addr, method, headers=headers, content=content, timeout=timeout)
        try:
            return http.send(request, stream=stream, follow_redirects=False), addr
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if i == len(target.addresses) - 1 or (give_up is not None and give_up()):
                raise
    raise AssertionError("unreachable")  # pragma: no cover - resolve() never returns no address


# --- sending -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """What the receiver answered.

    ``delivered``: a 2xx. ``final``: not delivered and trying again will not help (a 3xx --
    redirects are not followed -- or a 4xx other than 408/409/425/429). ``address``: the IP
    the request went to.
    """

    status_code: int
    address: str

    @property
    def delivered(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def final(self) -> bool:
        code = self.status_code
        return 300 <= code < 400 or (400 <= code < 500 and code not in _RETRYABLE_4XX)


def _signed(headers: Mapping[str, str] | None, body: bytes, secret: str | None) -> dict[str, str]:
    out = dict(headers or {})
    if secret is not None:
        out[SIGNATURE_HEADER] = sign(secret, body)
    return out


def post_json(http: httpx.Client, url: str, body: bytes, headers: Mapping[str, str] | None = None, *,
              allow_private: bool, timeout: float = 10.0, secret: str | None = None) -> Delivery:
    """POST the JSON ``body`` to ``url`` under the rules of this module; returns the :class:`Delivery`.

    Resolves once (:func:`check_target`) and connects only to the checked addresses
    (:func:`send_pinned`). With ``secret``, adds ``X-Falq-Signature``.
    Raises :class:`OutboundRefused`, :class:`OutboundUnresolved` or :class:`httpx.HTTPError`.
    """
    target = check_target(url, allow_private=allow_private)
    hdrs = {"Content-Type": "application/json", **_signed(headers, body, secret)}
    response, addr = send_pinned(http, target, "POST", headers=hdrs, content=body, timeout=timeout)
    response.close()
    return Delivery(status_code=response.status_code, address=str(addr))


async def post_json_async(http: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str] | None = None,
                          *, allow_private: bool, timeout: float = 15.0, secret: str | None = None) -> Delivery:
    """:func:`post_json` for asyncio; the DNS lookup runs in a thread."""
    target = await asyncio.to_thread(check_target, url, allow_private=allow_private)
    hdrs = {"Content-Type": "application/json", **_signed(headers, body, secret)}
    for i, addr in enumerate(target.addresses):
        request = pinned_request(http, target, addr, "POST", headers=hdrs, content=body, timeout=timeout)
        try:
            response = await http.send(request, follow_redirects=False)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if i == len(target.addresses) - 1:
                raise
            continue
        await response.aclose()
        return Delivery(status_code=response.status_code, address=str(addr))
    raise AssertionError("unreachable")  # pragma: no cover


def make_client(timeout: float = 10.0, *, max_connections: int = 100) -> httpx.Client:
    """An :class:`httpx.Client` fit for :func:`post_json`: no redirects, no environment proxy."""
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False,
                        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=16))


def make_async_client(timeout: float = 15.0, *, max_connections: int = 100) -> httpx.AsyncClient:
    """An :class:`httpx.AsyncClient` fit for :func:`post_json_async` (see :func:`make_client`)."""
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                             limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=16))


# --- signatures --------------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Falq-Signature`` header value for ``body``.

    Example::

        >>> sign("s3cret", b"{}", 1700000000)[:13]
        't=1700000000,'
    """
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, max_age_s: int = 300) -> bool:
    """Check an ``X-Falq-Signature`` header (for receivers written in Python).

    Example::

        >>> verify("s3cret", b"{}", sign("s3cret", b"{}"))
        True
    """
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - ts) > max_age_s:
        return False
    return hmac.compare_digest(sign(secret, body, ts), header)


def url_host(url: str | None) -> str | None:
    """The host of ``url`` (never its path or query, which may carry tokens); None if absent or unparsable."""
    if not url:
        return None
    try:
        return httpx.URL(url).host or None
    except (httpx.InvalidURL, TypeError, ValueError):
        return None


def retry_after_s(value: str | None) -> float | None:
    """An HTTP ``Retry-After`` value in seconds (delta-seconds or an HTTP date), None if absent or unreadable."""
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
