"""Total deadlines for HTTP exchanges, headers included.

httpx's timeouts bound each socket operation, not an exchange: a server that sends its
status line and headers one byte every few seconds never trips a read timeout, and holds
the caller for as long as it likes. :func:`install` wraps the network backend of a
client's connection pools so that, while a :class:`Budget` is active in the current
context (:func:`bounded`), every connect, TLS handshake, read and write gets at most the
time the budget has left, and fails with httpx's own timeout error
(:class:`httpx.ReadTimeout`, ...) once it is spent. Outside :func:`bounded` the wrapper
changes nothing (long-lived status streams keep their per-read timeouts).

No watchdog thread is involved: the budget is enforced by the socket timeouts of the
calling thread (or greenlet, under gevent: the budget lives in a :mod:`contextvars`
variable, which greenlets and threads each have their own copy of).

Example::

    http = install(httpx.Client(timeout=30))
    budget = Budget(60.0)                       # the clock starts at the first socket operation
    try:
        with bounded(budget), http.stream("GET", url) as resp:
            body = b"".join(resp.iter_bytes())
    except httpx.TimeoutException:
        if budget.expired:
            ...                                 # the whole answer took over 60 s
"""

from __future__ import annotations

import select
import time
import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import httpcore
import httpx

__all__ = ["Budget", "bounded", "install"]

_current: ContextVar[Budget | None] = ContextVar("falq_http_budget", default=None)


def _unpatched_poll() -> Callable[[], typing.Any]:
    """The C library's ``select.poll``, even when gevent has patched the module.

    httpcore asks whether every idle pooled socket is readable on each pool operation (a
    server's close shows as readable). gevent's patched ``poll`` turns each zero-timeout
    check into a watcher and a hub switch, about 12x the cost of the system call (14 us
    against 1.2 us in a one-off timing); a zero-timeout poll never blocks, so the original is safe in a
    greenlet.
    """
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency of the worker
        return select.poll
    return typing.cast(Callable[[], typing.Any], monkey.get_original("select", "poll"))


_poll = _unpatched_poll()


class Budget:
    """A total time allowance for one exchange.

    ``Budget(seconds)`` starts its clock at the first socket operation it governs (so
    waiting for a pooled connection does not count); ``Budget(until=t)`` ends at the
    :func:`time.monotonic` instant ``t``.
    """

    def __init__(self, seconds: float | None = None, *, until: float | None = None) -> None:
        if (seconds is None) == (until is None):
            raise ValueError("give seconds or until")
        self.seconds = seconds
        self.until = until

    def remaining(self) -> float:
        """Seconds left (negative once spent); starts the clock of a ``Budget(seconds)``."""
        if self.until is None:
            assert self.seconds is not None
            self.until = time.monotonic() + self.seconds
        return self.until - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.until is not None and time.monotonic() >= self.until


@contextmanager
def bounded(budget: Budget) -> Iterator[Budget]:
    """Make ``budget`` govern the socket operations of clients passed to :func:`install`."""
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)


def _clamp(timeout: float | None, exc: type[Exception]) -> float | None:
    budget = _current.get()
    if budget is None:
        return timeout
    left = budget.remaining()
    if left <= 0:
        raise exc("the exchange's total deadline has passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: typing.Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            sock = self._inner.get_extra_info("socket")
            if sock is not None:
                return _readable(sock)
        return self._inner.get_extra_info(info)


def _readable(sock: typing.Any) -> bool:
    """httpcore's ``is_socket_readable`` with :data:`_poll` (a closed socket reads as readable)."""
    fd = sock.fileno()
    if fd < 0:
        return True
    p = _poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(host, port, _clamp(timeout, httpcore.ConnectTimeout), local_address,
                                               socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, _clamp(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def install(client: httpx.Client) -> httpx.Client:
    """Let :class:`Budget` s govern ``client`` (its own transport and any proxy mounts); returns it.

    Idempotent. Transports that are not :class:`httpx.HTTPTransport` (a ``MockTransport`` in
    tests) are left alone.
    """
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        if not isinstance(transport, httpx.HTTPTransport):
            continue
        pool = transport._pool
        backend = getattr(pool, "_network_backend", None)
        if backend is None:  # pragma: no cover - an httpcore without the attribute: fail loudly
            raise RuntimeError("httpcore's connection pool has no _network_backend; cannot bound headers")
        if not isinstance(backend, _Backend):
            pool._network_backend = _Backend(backend)
    return client
