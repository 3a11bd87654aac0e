"""``falq flower``: Flower configured for falq, with authentication on by default.

* basic auth from ``FALQ_FLOWER_USER`` / ``FALQ_FLOWER_PASSWORD``; without a password it
  refuses to start unless ``--unauthenticated`` is given explicitly;
* a bounded in-memory task history (``FALQ_FLOWER_MAX_TASKS``);
* it talks to the broker only (``--broker``-style, no task code loaded), which keeps its
  memory small. Workers already send task events (``-E`` and ``task_send_sent_event``).

Flower exempts ``/metrics`` and ``/healthcheck`` from auth: expose Flower's port only on a
private network, or put a reverse proxy with auth in front of ``/metrics``.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="falq flower", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5555)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--unauthenticated", action="store_true",
                        help="start without authentication (only on a trusted network)")
    args, extra = parser.parse_known_args(argv)

    from shared.settings import get_settings

    s = get_settings()
    cmd = [sys.executable, "-m", "celery", "-A", "workers.app", "flower", f"--port={args.port}",
           f"--address={args.address}", f"--max_tasks={s.flower_max_tasks}", "--purge_offline_workers=300"]
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
