"""``falq flower``: Flower configured for falq, with authentication on by default.

* basic auth from ``FALQ_FLOWER_USER`` / ``FALQ_FLOWER_PASSWORD`` (handed to Flower as
  ``FLOWER_BASIC_AUTH`` in its environment, so ``ps`` never shows it); without a password
  it refuses to start unless ``--unauthenticated`` is given explicitly;
* a bounded in-memory task history (``FALQ_FLOWER_MAX_TASKS``, default 10,000 instead of
  Flower's 100,000) and offline workers forgotten after 5 minutes;
* the task list shows what a job is: the task id (UUID column) is the job id, the name is
  ``falq.job``, and the kwargs column reads ``lane=bulk · qwen-image-2/edit``
  (``shared.dispatch`` sends only those; ``ops/flowerconfig.py`` formats them). The input
  and every secret stay in the job record;
* ``flower_task_runtime_seconds`` uses falq's histogram buckets, so Flower's step runtimes
  and falq's own latencies line up on one dashboard.

Workers already send task events (``-E``, ``worker_send_task_events``) and producers send
``task-sent`` (``task_send_sent_event``), so queued jobs appear before a worker takes them.

Flower exempts ``/metrics`` and ``/healthcheck`` from auth. Expose Flower's port only on a
private network (docker-compose binds it to 127.0.0.1), or put a reverse proxy in front
that requires auth for ``/metrics`` too (docs/operations/monitoring.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from falq.shared.commands import HELP_OPTIONS, verbatim
from falq.shared.commands import run as run_command
from falq.shared.metrics import BUCKETS

#: The task list's columns. The uuid is the job id (so args would repeat it); kwargs say endpoint and lane.
TASKS_COLUMNS = "name,uuid,state,kwargs,received,runtime,worker"
RUNTIME_BUCKETS = ",".join(str(b) for b in BUCKETS)
#: Flower's config file: its ``format_task`` shows kwargs as ``lane=bulk · qwen-image-2/edit``.
FLOWER_CONFIG = str(Path(__file__).with_name("flowerconfig.py"))


# Pass-through on purpose: any option falq does not define (``--basic-auth``, ``--url_prefix``,
# ``--persistent``, ...) goes to ``celery flower`` unchanged, after falq's own, so the whole of
# Flower's command line stays available. click collects them into FLOWER_ARGS instead of
# refusing them; falq's own options (and ``--help``) are still parsed by click.
@click.command(name="flower", help=verbatim(__doc__ or ""),
               short_help="Run Flower for falq (auth on by default).",
               epilog="Other options (FLOWER_ARGS) go to `celery flower` unchanged, e.g. --url_prefix=flower.",
               context_settings={**HELP_OPTIONS, "ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--port", type=int, default=5555, show_default=True, help="Flower's port")
@click.option("--address", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--unauthenticated", is_flag=True, help="start without authentication (only on a trusted network)")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def command(port: int, address: str, unauthenticated: bool, flower_args: tuple[str, ...]) -> int:
    from falq.shared.settings import get_settings

    s = get_settings()
    cmd = [sys.executable, "-m", "celery", "-A", "falq.workers.app", "flower", f"--port={port}",
           f"--address={address}", f"--max_tasks={s.flower_max_tasks}", "--purge_offline_workers=300",
           f"--tasks_columns={TASKS_COLUMNS}", f"--task_runtime_metric_buckets={RUNTIME_BUCKETS}",
           f"--conf={FLOWER_CONFIG}"]
    env = dict(os.environ)
    if s.flower_password is not None:
        # Passed through the environment, not argv, so `ps` does not show the password.
        env["FLOWER_BASIC_AUTH"] = f"{s.flower_user}:{s.flower_password.get_secret_value()}"
    elif not unauthenticated:
        print("falq flower: refusing to start without authentication. Set FALQ_FLOWER_PASSWORD "
              "(and optionally FALQ_FLOWER_USER), or pass --unauthenticated on a trusted network.",
              file=sys.stderr)
        return 2
    os.execvpe(sys.executable, [*cmd, *flower_args], env)
    return 1  # not reached


def main(argv: list[str] | None = None) -> int:
    """Run :data:`command` (what ``falq flower`` runs) on ``argv``; returns the exit code (2: no auth configured)."""
    return run_command(command, argv, prog_name="falq flower")
