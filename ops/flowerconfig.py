"""Flower's configuration file for falq (``falq flower`` passes ``--conf`` with this file).

Flower executes this file and picks up the names it knows. ``format_task`` rewrites how a
task is *shown* (the task list, task pages and the API; not events or ``/metrics``): a
falq message's kwargs are ``{'endpoint': ..., 'lane': ...}``, which Flower's narrow column
cuts off before the lane. Shown as ``lane=bulk · qwen-image-2/edit`` instead,
the part that matters most comes first. Only those two keys are shown (and the tenant, when
it is not ``default``: ``lane=bulk · qwen-image-2/edit · tenant=shop``), so whatever else might
ever reach a message's kwargs never reaches the page.

Example (what Flower calls)::

    task.kwargs = "{'endpoint': 'fal-ai/qwen-image-2/edit', 'lane': 'bulk'}"
    format_task(task).kwargs      # 'lane=bulk · qwen-image-2/edit'
"""

from __future__ import annotations

import ast
from typing import Any

from falq.shared.tenants.store import DEFAULT_TENANT, valid_name


def format_task(task: Any) -> Any:
    """Flower's hook: ``task`` is a copy of Celery's ``events.state.Task``; return it changed."""
    if getattr(task, "name", None) != "falq.job":
        return task
    try:
        kwargs = ast.literal_eval(task.kwargs or "{}")  # a repr of a dict of str: never code
    except (ValueError, SyntaxError):
        return task
    if isinstance(kwargs, dict):
        endpoint = str(kwargs.get("endpoint", "?")).removeprefix("fal-ai/")
        tenant = kwargs.get("tenant")
        shown = f" · tenant={tenant}" if valid_name(tenant) and tenant != DEFAULT_TENANT else ""
        task.kwargs = f"lane={kwargs.get('lane', '?')} · {endpoint}{shown}"
    return task
