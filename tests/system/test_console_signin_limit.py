"""The console's sign-in limit, against a real redis-server and real gateways.

Two gateways share one Redis: one in this process (:class:`GatewayServer`) and one ``falq api``
child process, so a count kept anywhere but Redis would show. Client addresses are given with
``X-Forwarded-For``, which uvicorn honours from 127.0.0.1 only (``FORWARDED_ALLOW_IPS``), as a
reverse proxy on the same host would send it.

Checked: failed sign-ins per key prefix and per address end in 429 with ``Retry-After`` and a
clear message, on either gateway; while an address is refused even the right key is (no
oracle), from another address it signs in; successes do not count; concurrent guesses cannot
overshoot the limit (one atomic script); the window ends by itself; and no key, key prefix or
digest of a key is in Redis or in the gateways' logs. The last test shows the message in a
real browser.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from falq.gateway.console.access import KEY_PREFIX_CHARS, client_address
from falq.gateway.server import GatewayServer
from falq.testing.stack import DevStack, free_port
from tests.conftest import wait_for

KEY = "falq-console-limit-key-0123456789abcdef"
PER_ADDRESS, PER_KEY, WINDOW_S = 5, 3, 10
LIMITS = {"FALQ_CONSOLE_SIGNIN_MAX_PER_ADDRESS": str(PER_ADDRESS), "FALQ_CONSOLE_SIGNIN_MAX_PER_KEY": str(PER_KEY),
          "FALQ_CONSOLE_SIGNIN_WINDOW_S": str(WINDOW_S), "FALQ_CONSOLE_THUMBS_AHEAD_WORKERS": "0"}


class Gateways:
    """The two gateways of a test: ``urls[0]`` in this process, ``urls[1]`` a ``falq api`` process."""

    def __init__(self, urls: list[str], log: Path, r: redis.Redis) -> None:
        self.urls, self.log, self.r = urls, log, r


@pytest.fixture
def gateways(clean_stack: DevStack, tmp_path: Path) -> Iterator[Gateways]:
    settings = clean_stack.settings(**LIMITS)
    port = free_port()
    log = tmp_path / "falq-api.log"
    env = {**os.environ, **clean_stack.env(**LIMITS), "FALQ_API_KEYS": KEY, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "falq.cli", "api", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    child = f"http://127.0.0.1:{port}"
    r = redis.Redis.from_url(settings.redis_url)
    try:
        wait_for(lambda: _up(child), timeout=30, what="the falq api process")
        with GatewayServer(settings, api_keys=[KEY]) as gw:
            yield Gateways([gw.url, child], log, r)
    finally:
        proc.terminate()
        proc.wait(10)
        r.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ui/login", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def try_key(base: str, key: str, address: str) -> httpx.Response:
    """One sign-in through the form, as a browser behind a proxy at ``address`` sends it."""
    with httpx.Client(base_url=base, timeout=10, headers={"x-forwarded-for": address}) as c:
        form = c.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None, form.text[:300]
        return c.post("/ui/login", data={"csrf": token.group(1), "key": key, "next": "/ui/gallery"})


def _error(resp: httpx.Response) -> str:
    found = re.search(r'<p class="error" role="alert">([^<]*)</p>', resp.text)
    return found.group(1) if found else ""


def _no_key_material(gws: Gateways, *tried: str) -> None:
    """No key, no key prefix and no part of either in any Redis key or value, nor in the logs."""
    needles = {k for t in tried for k in (t, t[:KEY_PREFIX_CHARS])}
    blob = b""
    for name in gws.r.scan_iter(count=1000):
        blob += name + b"\n"
        if gws.r.type(name) == b"string":
            blob += (gws.r.get(name) or b"") + b"\n"
    logs = gws.log.read_text(errors="replace")
    for needle in needles:
        assert needle.encode() not in blob, "a key (or its prefix) is in Redis"
        assert needle not in logs, "a key (or its prefix) is in the gateway's log"


@pytest.mark.timeout(120)
def test_failed_signins_per_key_prefix_are_limited_across_gateways(gateways: Gateways) -> None:
    # Guesses at one key: each from another address, alternating between the two gateways.
    base_guess = KEY[:KEY_PREFIX_CHARS]
    guesses = [f"{base_guess}-wrong-{i}" for i in range(PER_KEY + 2)]
    for i, guess in enumerate(guesses[:PER_KEY]):
        resp = try_key(gateways.urls[i % 2], guess, f"198.51.100.{i + 1}")
        assert resp.status_code == 401 and _error(resp) == "That key is not accepted."
    for i, guess in enumerate(guesses[PER_KEY:]):
        resp = try_key(gateways.urls[i % 2], guess, f"198.51.100.{50 + i}")
        assert resp.status_code == 429, resp.text[:300]
        assert 1 <= int(resp.headers["retry-after"]) <= WINDOW_S
        assert re.fullmatch(r"Too many failed sign-in attempts with this key\. Try again in 1 minute\.", _error(resp))
        assert "falq_session" not in resp.headers.get("set-cookie", "")
    # The right key shares that prefix: refused too while the count is full (the limit is no oracle).
    assert try_key(gateways.urls[1], KEY, "198.51.100.99").status_code == 429
    # Another prefix is not affected.
    other = try_key(gateways.urls[0], "falq_someone-else-entirely-0000", "198.51.100.100")
    assert other.status_code == 401
    _no_key_material(gateways, *guesses, KEY)


@pytest.mark.timeout(120)
def test_failed_signins_per_address_and_the_window(gateways: Gateways, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="falq.gateway.console")
    address = "203.0.113.7"
    guesses = [f"{i:02d}-wrong-key-and-more" for i in range(PER_ADDRESS + 1)]  # distinct prefixes
    for i, guess in enumerate(guesses[:PER_ADDRESS]):
        assert try_key(gateways.urls[i % 2], guess, address).status_code == 401
    refused = try_key(gateways.urls[0], guesses[-1], address)
    assert refused.status_code == 429
    assert _error(refused).startswith("Too many failed sign-in attempts from this address.")
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= WINDOW_S
    # Refused on both gateways, for the right key as well; from another address it signs in.
    assert try_key(gateways.urls[1], KEY, address).status_code == 429
    assert try_key(gateways.urls[0], KEY, address).status_code == 429
    ok = try_key(gateways.urls[1], KEY, "203.0.113.8")
    assert ok.status_code == 303 and "falq_session=" in ok.headers["set-cookie"]
    # One log line when the limit is reached, naming the address and no key.
    lines = [rec.getMessage() for rec in caplog.records if "sign-in limit" in rec.getMessage()]
    assert lines == [f"console sign-in limit reached: {PER_ADDRESS} failures from {address}; "
                     f"refused for {retry_after} s"]
    _no_key_material(gateways, *guesses, KEY)
    # The window ends by itself (Redis drops the count): the right key signs in again.
    time.sleep(retry_after + 0.5)
    assert try_key(gateways.urls[0], KEY, address).status_code == 303


@pytest.mark.timeout(120)
def test_successes_do_not_count_and_concurrent_guesses_cannot_overshoot(gateways: Gateways) -> None:
    for i in range(PER_ADDRESS + 3):  # more successes than the limit, from one address
        assert try_key(gateways.urls[i % 2], KEY, "192.0.2.1").status_code == 303
    # 24 wrong keys at once from one address, spread over both gateways: exactly the limit fail
    # as 401, every other one is refused (the check and the count are one atomic step).
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda i: try_key(gateways.urls[i % 2], f"{i:03d}-parallel-guess-xxxxxxxx",
                                                "192.0.2.2").status_code, range(24)))
    assert sorted(codes) == [401] * PER_ADDRESS + [429] * (24 - PER_ADDRESS)


def test_client_address_groups_ipv6_by_64() -> None:
    assert client_address("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "2001:db8:1:2::/64"
    assert client_address("2001:db8:1:2::1") == client_address("2001:db8:1:2:ffff::9")
    assert client_address("::ffff:198.51.100.7") == "198.51.100.7"
    assert client_address("198.51.100.7") == "198.51.100.7"
    assert client_address(None) == "unknown" and client_address("not an address") == "unknown"


@pytest.mark.timeout(120)
def test_the_limit_in_a_real_browser(gateways: Gateways) -> None:
    from playwright.sync_api import sync_playwright

    from falq.ops.screenshots import launch

    base = gateways.urls[0]
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        statuses: list[int] = []
        page.on("response", lambda resp: statuses.append(resp.status) if resp.request.method == "POST" else None)
        for i in range(PER_KEY + 1):
            page.goto(f"{base}/ui/login")
            page.fill("#key", f"{KEY[:KEY_PREFIX_CHARS]}-typo-{i}")
            page.click("#sign-in")
            page.wait_for_load_state("load")
        assert statuses == [401] * PER_KEY + [429]
        message = page.inner_text(".error")
        assert message == "Too many failed sign-in attempts with this key. Try again in 1 minute."
        assert page.get_attribute(".error", "role") == "alert"
        assert page.locator("#key").count() == 1  # the form is still there, to try later
        assert KEY[:KEY_PREFIX_CHARS] not in page.content()
        browser.close()
