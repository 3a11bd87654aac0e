"""falq's web console, served by ``falq api`` at ``/ui``: what falq made, as pictures and figures.

* **Overview** -- completed/failed per minute over the last hour (an inline SVG drawn on the
  server), jobs by state, queue depth per lane and per tenant, outstanding at fal against the
  cap, spend today against the budget, failures and retries by reason (moderation apart);
  an htmx-polled fragment keeps it live.
* **Gallery** -- recent outputs as thumbnails (made once per image, cached in S3:
  :mod:`falq.gateway.console.thumbs`; made ahead as jobs complete, in the gateway's background
  threads: :mod:`falq.gateway.console.ahead`), filtered by state, endpoint, batch, tenant, day
  and prompt text, paginated. The page answers at once, each card a placeholder until its
  thumbnail arrives.
* **Job** -- full-size images, prompt, input, seed, a timeline with durations, attempts and
  errors, fal's logs, cost, parents and children, and retry / cancel / download / copy-command.
* **Batches** -- progress, counts, ETA and spend per batch.

Access (:mod:`falq.gateway.console.access`): sign in with a falq API key (failed attempts
limited per client address and per key prefix, in Redis: 429 with ``Retry-After``); a server-side
session in Redis, an HttpOnly SameSite=Strict cookie holding only its id, CSRF tokens on
every action, the same tenant and scope rules as the REST routes, a strict CSP.

Example::

    Starlette(routes=[*console_routes(gateway, api_keys), *other_routes])   # what create_app does
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from falq.gateway.console.pages import Console, create_console

if TYPE_CHECKING:
    from falq.gateway.auth import ApiKeys
    from falq.gateway.core import Gateway

__all__ = ["console_of", "console_routes", "create_console"]


async def _to_console(request: Request) -> Response:
    return RedirectResponse("/ui/", 307)


def console_routes(gw: Gateway, api: ApiKeys) -> list[BaseRoute]:
    """The routes that serve the console at ``/ui`` (to put before the gateway's catch-all)."""
    return [Route("/ui", _to_console, methods=["GET"]), Mount("/ui", app=create_console(gw, api))]


def console_of(app: Any) -> Console:
    """The console state mounted in a gateway app (benchmarks and tests read its caches)."""
    for route in app.routes:
        if isinstance(route, Mount) and route.path == "/ui":
            found: Console = route.app.state.console  # type: ignore[attr-defined]
            return found
    raise LookupError("no console mounted at /ui")
