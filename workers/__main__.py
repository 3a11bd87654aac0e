"""``python -m falq.workers`` (what ``falq worker`` runs): a Celery worker on the gevent pool.

gevent must patch the standard library before anything opens a socket, so this module
patches first and imports falq afterwards.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="falq worker", description="Run a falq worker (Celery, gevent pool).")
    parser.add_argument("--concurrency", "-c", type=int, default=None,
                        help="jobs in flight per process (default FALQ_WORKER_CONCURRENCY)")
    parser.add_argument("--lanes", default="interactive,bulk",
                        help="lanes to consume, in priority order (default interactive,bulk)")
    parser.add_argument("--loglevel", "-l", default="INFO")
    parser.add_argument("--hostname", "-n", default=None)
    args = parser.parse_args(argv)

    from falq.shared.logs import setup_logging
    from falq.shared.settings import get_settings
    from falq.workers.app import app
    from falq.workers.signals import install

    settings = get_settings()
    setup_logging(args.loglevel, settings)
    concurrency = args.concurrency or settings.worker_concurrency
    _raise_fd_limit(concurrency)
    lanes = [x.strip() for x in args.lanes.split(",") if x.strip()]
    bad = [x for x in lanes if x not in ("interactive", "bulk")]
    if bad:
        parser.error(f"--lanes: unknown lane(s) {', '.join(bad)}; use interactive and/or bulk")
    queues = [settings.queue_interactive if x == "interactive" else settings.queue_bulk for x in lanes]
    install()
    hostname = args.hostname or f"falq@{socket.gethostname()}"
    app.worker_main([
        "worker", "-P", "gevent", "-c", str(concurrency), "-Q", ",".join(queues), "-E",
        "-n", hostname, "-l", args.loglevel, "--without-mingle", "--without-gossip",
    ])
    return 0


def _raise_fd_limit(concurrency: int) -> None:
    # Each job waiting on fal holds one socket (the SSE stream); raise the soft limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, concurrency * 3 + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


if __name__ == "__main__":
    sys.exit(main())
