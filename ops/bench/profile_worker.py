"""``python -m falq.ops.bench.profile_worker DIR [worker options]``: a falq worker under pyinstrument.

The bench's ``profile`` scenario starts the worker this way. gevent patches first (as
``python -m falq.workers`` does); a greenlet then waits for the file ``DIR/start`` to start
the profiler and for ``DIR/stop`` to stop it and save the session to ``DIR/worker.pyisession``,
so the worker's start-up and idle wait are outside the profile. Files, not signals: Celery's
worker installs its own handlers for ``SIGUSR1``/``SIGUSR2``.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

#: Sampling interval of the profiler (seconds): fine enough for a job of a few milliseconds.
INTERVAL_S = 0.001


def _control(folder: Path) -> None:
    from pyinstrument import Profiler

    while not (folder / "start").exists():
        time.sleep(0.05)
    # async_mode "disabled": the stacks are gevent greenlets, which pyinstrument's contextvar
    # tracking (for asyncio) does not follow; every greenlet runs on this one OS thread, whose
    # profile hook the sampler sets, so each sample is the stack of the greenlet then running.
    profiler = Profiler(interval=INTERVAL_S, async_mode="disabled")
    profiler.start()
    while not (folder / "stop").exists():
        time.sleep(0.05)
    session = profiler.stop()
    tmp = folder / "worker.pyisession.tmp"
    session.save(str(tmp))
    tmp.rename(folder / "worker.pyisession")


def main() -> int:
    """Start the control greenlet, then run the worker on the remaining arguments."""
    folder = Path(sys.argv[1])
    gevent.spawn(_control, folder)
    from falq.workers.cli import main as worker_main

    return worker_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
