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
that requires auth for ``/metrics`` too (see the README's Operations section).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from falq.shared.metrics import BUCKETS

#: The task list's columns. The uuid is the job id (so args would repeat it); kwargs say endpoint and lane.
TASKS_COLUMNS = "name,uuid,state,kwargs,received,runtime,worker"
RUNTIME_BUCKETS = ",".join(str(b) for b in BUCKETS)
#: Flower's config file: its ``format_task`` shows kwargs as ``lane=bulk · qwen-image-2/edit``.
FLOWER_CONFIG = str(Path(__file__).with_name("flowerconfig.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="falq flower", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5555)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--unauthenticated", action="store_true",
                        help="start without authentication (only on a trusted network)")
    args, extra = parser.parse_known_args(argv)

    from falq.shared.settings import get_settings

    s = get_settings()
    cmd = [sys.executable, "-m", "celery", "-A", "falq.workers.app", "flower", f"--port={args.port}",
           f"--address={args.address}", f"--max_tasks={s.flower_max_tasks}", "--purge_offline_workers=300",
           f"--tasks_columns={TASKS_COLUMNS}", f"--task_runtime_metric_buckets={RUNTIME_BUCKETS}",
           f"--conf={FLOWER_CONFIG}"]
    env = dict(os.environ)
    if s.flower_password is not None:
        # Passed through the environment, not argv, so `ps` does not show the password.
        env["FLOWER_BASIC_AUTH"] = f"{s.flower_user}:{s.flower_password.get_secret_value()}"
    elif not args.unauthenticated:
        print("falq flower: refusing to start without authentication. Set FALQ_FLOWER_PASSWORD "
              "(and optionally FALQ_FLOWER_USER), or pass --unauthenticated on a trusted network.",
              file=sys.stderr)
        return 2
    os.execvpe(sys.executable, [*cmd, *extra], env)
    return 1  # not reached
