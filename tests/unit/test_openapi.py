"""The OpenAPI document names every route the gateway serves, and nothing it does not serve.

The route table is the real app's (``create_app``; nothing is started, no request is sent),
so a route added to :func:`falq.gateway.app.routes` without its operation in
:mod:`falq.gateway.rest.openapi` fails here -- and with it the schemathesis run, which tests only
what the document names. Three parts of the table are not one path each, and are checked
for what they stand for instead:

* ``/{path:path}`` (fal's queue protocol, one catch-all): a submit operation for each
  endpoint, and the app's request routes for each of the actions the catch-all serves;
* ``/_falq/fal-proxy`` (a middleware, not a route): GET, POST and PUT;
* ``/ui`` (the web console: HTML pages behind a session cookie, not the JSON API; tested
  in a real browser by ``tests/system/test_console_in_a_real_browser.py``): left out on purpose.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Match, Mount, Route

from falq.gateway.app import create_app
from falq.gateway.config import GatewaySettings
from falq.gateway.fal import routes as fal_routes
from falq.gateway.fal.proxy import PROXY_PATH
from falq.gateway.rest.openapi import APP, build_document
from falq.shared.fal.endpoints import ENDPOINTS
from falq.shared.settings import Settings

CATCH_ALL = "/{path:path}"
CONSOLE = "/ui"
#: The method of each action of fal's request routes (``fal_routes.queue_call``).
FAL_ACTIONS = {"": "get", "status": "get", "status/stream": "get", "cancel": "put"}
METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def app() -> Any:
    # Clients connect lazily: nothing listens on this Redis, and nothing needs it to.
    return create_app(Settings(redis_url="redis://127.0.0.1:1/0"), GatewaySettings(api_keys="k"))


def documented() -> set[tuple[str, str]]:
    return {(m, path) for path, ops in build_document()["paths"].items() for m in ops if m in METHODS}


def served(app: Any) -> set[tuple[str, str]]:
    """``(method, path)`` of every route of the app but the catch-all and the console."""
    out: set[tuple[str, str]] = set()
    for route in app.routes:
        if route.path in (CATCH_ALL, CONSOLE):
            continue
        assert isinstance(route, Route), f"{route!r}: a new kind of route; say here how the document covers it"
        out |= {(m.lower(), route.path) for m in route.methods or () if m != "HEAD"}
    return out


def test_every_route_of_the_app_is_in_the_document(app: Any) -> None:
    missing = sorted(served(app) - documented())
    assert not missing, f"routes the app serves but /openapi.json omits: {missing}"


def test_fal_catch_all_is_spelled_out_in_the_document(app: Any) -> None:
    assert any(r.path == CATCH_ALL for r in app.routes)
    assert set(fal_routes._ACTIONS) == set(FAL_ACTIONS), "a new queue action: add it to the document and here"
    base = f"/{APP}/requests/{{request_id}}"
    wanted = {("post", f"/{ep}") for ep in ENDPOINTS}
    wanted |= {(method, f"{base}/{action}".rstrip("/")) for action, method in FAL_ACTIONS.items()}
    wanted |= {(m, PROXY_PATH) for m in ("get", "post", "put")}
    assert not sorted(wanted - documented())


def test_every_documented_operation_is_served(app: Any) -> None:
    """No stale operation: each documented path (ids filled in) reaches a route of its own
    with its method -- the fal paths the catch-all, the proxy path its middleware."""
    stale = []
    for method, path in sorted(documented()):
        if path == PROXY_PATH:
            continue
        concrete = path.replace("{", "").replace("}", "")  # {job_id} -> job_id: any plain token
        scope = {"type": "http", "method": method.upper(), "path": concrete, "root_path": "", "query_string": b"",
                 "headers": []}
        route = next((r for r in app.routes if r.matches(scope)[0] is Match.FULL), None)
        if route is None or (route.path == CATCH_ALL) != path.startswith(f"/{APP.split('/')[0]}/"):
            stale.append((method, path, getattr(route, "path", None)))
    assert not stale, f"documented but not served by a route of its own: {stale}"


def test_console_is_the_only_part_left_out(app: Any) -> None:
    """What is left out is exactly the console's routes (a mount and its redirect)."""
    left_out = [r for r in app.routes if r.path == CONSOLE]
    assert len(left_out) == 2 and any(isinstance(r, Mount) for r in left_out)
    assert not any(path.startswith(CONSOLE + "/") or path == CONSOLE for _, path in documented())
