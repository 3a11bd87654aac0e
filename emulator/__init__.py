"""falq's offline fal emulator: fal's queue protocol for the four Qwen-Image-2 endpoints.

Start one in-process for tests and benchmarks with :class:`~falq.emulator.server.EmulatorServer`,
or from a shell with ``python -m falq.emulator --port 8790`` (``falq emulator``).

By default it behaves like the live fal service as the README's section "fal, as the live
service behaves" describes it, with its evidence (403 for a locked account,
422 moderation, quiet status streams with ``: ping``, a window of polled logs, expiring
results, billing headers, 1-2 MB images); the emulator's older behaviours stay available
behind named :class:`EmulatorConfig` options.

Example::

    from falq.emulator import EmulatorServer
    with EmulatorServer(latency="uniform:0.1,0.3", concurrency=4) as emu:
        print(emu.url)   # http://127.0.0.1:<port>
"""

from falq.emulator.config import EmulatorConfig
from falq.emulator.server import EmulatorServer, main, run

__all__ = ["EmulatorConfig", "EmulatorServer", "main", "run"]
