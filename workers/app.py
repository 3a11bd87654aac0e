"""The worker's Celery app (``celery -A falq.workers.app``): :func:`falq.shared.engine.celery_app.make_app`
for the process settings, with falq's task registered.

Built on first access rather than at import, so importing this module has no side effects.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from falq.shared.engine.celery_app import make_app

__all__ = ["get_app", "make_app"]

_app: Celery | None = None


def get_app() -> Celery:
    """The worker app, built and its task registered once per process."""
    global _app
    if _app is None:
        from falq.workers.tasks import register

        _app = make_app()
        register(_app)
    return _app


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):  # what `celery -A falq.workers.app` looks up
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
