"""Answers that trickle in: total deadlines for media downloads and fal calls, headers included.

httpx's timeouts are per read, so a server sending its status line and headers one byte
every 0.5 s never trips a 1 s read timeout. These tests use a plain-socket server that does
exactly that, and check that falq gives up within its deadline (2 x ``fal_http_timeout_s``
for headers) with a clear, retryable error instead of hanging.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from falq.shared.errors import FalSubmitUncertain, FalTransientError, StorageTransientError
from falq.shared.fal.client import FalClient
from falq.shared.settings import Settings
from falq.workers.media.download import make_media_client, open_media
from tests.support.s3server import make_png

pytestmark = pytest.mark.timeout(60)

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n"
        b"X-Padding: " + b"p" * 40 + b"\r\n\r\n")
DRIP_S = 0.5
#: Without a total deadline the headers alone would take this long (far past the test's budget).
HEADERS_TAKE_S = len(HEAD) * DRIP_S


class Trickler:
    """A raw-socket HTTP server on 127.0.0.1: reads a request, then sends ``head`` one byte per
    ``DRIP_S`` (``fast_head``: at once) followed by ``body`` one byte per ``DRIP_S``. Every
    connection is cut after ``cap_s`` whatever happens, so a falq bug fails, never hangs."""

    def __init__(self, *, fast_head: bool = False, body: bytes = b"", cap_s: float = 40.0) -> None:
        self.body = body
        self.head = HEAD % len(body)
        self.fast_head = fast_head
        self.cap_s = cap_s
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.requests: list[bytes] = []
        self.closed_after: list[float] = []  # seconds each connection lasted
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        t0 = time.monotonic()
        end = t0 + self.cap_s
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests.append(data)
                if self.fast_head:
                    conn.sendall(self.head)
                    drip = self.body
                else:
                    drip = self.head + self.body
                for byte in drip:
                    if self._stop.is_set() or time.monotonic() > end:
                        break
                    conn.sendall(bytes([byte]))
                    time.sleep(DRIP_S)
                # the client hung up: recv returns b"" (or fails) at once; else wait until the cap
                conn.settimeout(max(0.01, end - time.monotonic()))
                conn.recv(1)
            except OSError:
                pass
            finally:
                self.closed_after.append(time.monotonic() - t0)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    server = Trickler()
    yield server
    server.close()


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def media_settings(server: Trickler) -> Settings:
    # Headers must be complete within 2 x 1 s; each byte arrives well within the 60 s read timeout.
    return settings(media_hosts=f"127.0.0.1:{server.port}", allow_private_media=True, fal_http_timeout_s=1.0)


# --- media downloads ---------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["media_client", "plain_client"])
def test_trickled_media_headers_are_cut_at_the_deadline(client: str, trickler: Trickler) -> None:
    s = media_settings(trickler)
    # open_media installs the deadline on any client; make_media_client has it already.
    http = make_media_client(s) if client == "media_client" else httpx.Client(timeout=60.0)
    t0 = time.monotonic()
    with http, pytest.raises(StorageTransientError) as info, open_media(http, f"{trickler.url}/x.png", s):
        pass
    took = time.monotonic() - t0
    assert "answer headers were not complete after 2.0s" in str(info.value), info.value
    assert "127.0.0.1" in str(info.value)
    assert info.value.retryable and info.value.reason == "media_fetch"
    assert 1.8 <= took < 4.0, took  # the deadline, not a read timeout nor the ~30 s of headers
    assert HEADERS_TAKE_S > 20


def test_trickled_media_body_is_cut_at_the_download_deadline() -> None:
    server = Trickler(fast_head=True, body=make_png() * 10)
    try:
        s = media_settings(server)
        t0 = time.monotonic()
        with (make_media_client(s) as http, pytest.raises(StorageTransientError, match="took too long"),
              open_media(http, f"{server.url}/x.png", s, deadline_s=2.0) as media):
            b"".join(media.iter_bytes())
        assert 1.8 <= time.monotonic() - t0 < 4.0
    finally:
        server.close()


def test_socket_is_released_after_the_deadline(trickler: Trickler) -> None:
    s = media_settings(trickler)
    with make_media_client(s) as http, pytest.raises(StorageTransientError), open_media(http, trickler.url, s):
        pass
    deadline = time.monotonic() + 5
    while not trickler.closed_after and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trickler.closed_after and trickler.closed_after[0] < 5.0  # falq hung up, not the server's cap


# --- fal calls ---------------------------------------------------------------------------------


def fal_client(server: Trickler) -> FalClient:
    return FalClient(settings(fal_key="test-key-1234567890", fal_queue_url=server.url, fal_http_timeout_s=1.0))


def test_trickled_fal_status_headers_are_cut(trickler: Trickler) -> None:
    fal = fal_client(trickler)
    t0 = time.monotonic()
    try:
        with pytest.raises(FalTransientError) as info:
            fal.status(f"{trickler.url}/fal-ai/x/requests/r1/status")
    finally:
        fal.close()
    took = time.monotonic() - t0
    assert "was still arriving after 2s (slow or trickling headers)" in str(info.value), info.value
    assert info.value.reason == "slow_answer" and info.value.retryable
    assert 1.8 <= took < 4.0, took


def test_trickled_fal_submit_headers_are_uncertain_not_resent(trickler: Trickler) -> None:
    """The POST went out, so fal may have created the request: uncertain, never sent twice."""
    fal = fal_client(trickler)
    t0 = time.monotonic()
    try:
        with pytest.raises(FalSubmitUncertain, match="still arriving after 2s"):
            fal.submit("fal-ai/qwen-image-2/text-to-image", {"prompt": "a fox"})
    finally:
        fal.close()
    assert time.monotonic() - t0 < 4.0
    assert len(trickler.requests) == 1


def test_trickled_fal_body_is_still_cut() -> None:
    server = Trickler(fast_head=True, body=b'{"status": "COMPLETED"' + b" " * 200 + b"}")
    fal = fal_client(server)
    try:
        with pytest.raises(FalTransientError, match=r"still arriving after 2s \(slow or endless body\)"):
            fal.status(f"{server.url}/fal-ai/x/requests/r1/status")
    finally:
        fal.close()
        server.close()


def test_budget_does_not_touch_calls_outside_it(trickler: Trickler) -> None:
    """Outside a Budget the wrapper changes nothing: per-read timeouts as configured."""
    from falq.shared import deadline

    with deadline.install(httpx.Client(timeout=httpx.Timeout(5.0, read=0.2))) as http, \
            pytest.raises(httpx.ReadTimeout):
        http.get(trickler.url)  # 0.5 s between bytes > 0.2 s read timeout


def test_pooled_connection_closed_by_the_server_is_not_reused() -> None:
    """The wrapper answers httpcore's "is this idle socket readable" itself (without gevent's
    patched poll): a keep-alive connection the server closed while idle must still be seen as
    closed, or the next request would go out on it and fail as "disconnected without a
    response" (which on a submit is an uncertain outcome)."""
    from falq.shared import deadline

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = srv.accept()
            accepted.append(conn)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
            time.sleep(0.1)
            conn.close()  # the server drops the idle keep-alive connection

    threading.Thread(target=serve, daemon=True).start()
    with deadline.install(httpx.Client(timeout=5.0)) as http:
        assert http.get(f"http://127.0.0.1:{port}/").text == "ok"
        time.sleep(0.5)
        assert http.get(f"http://127.0.0.1:{port}/").text == "ok"
    srv.close()
    assert len(accepted) == 2  # the second request opened a new connection


def test_readable_check_sees_data_and_close() -> None:
    from httpcore._backends.sync import SyncStream

    from falq.shared import deadline

    a, b = socket.socketpair()
    stream = deadline._Stream(SyncStream(a))
    assert stream.get_extra_info("is_readable") is False
    b.close()
    assert stream.get_extra_info("is_readable") is True
    a.close()
