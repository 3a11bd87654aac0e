"""Celery signal hooks: stop running steps promptly when the worker shuts down."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_shutting_down


def install() -> None:
    worker_shutting_down.connect(_on_shutdown, weak=False)


def _on_shutdown(**_: Any) -> None:
    # Running steps see this flag within a second, re-publish their job and return, so a
    # warm shutdown finishes quickly and loses nothing.
    from workers.tasks import get_context

    get_context().shutting_down.set()
