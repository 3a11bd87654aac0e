"""One module per scenario; each has ``NAME`` and ``run(h: Harness) -> list[Row]``.

:data:`SCENARIOS` is the order of a full run.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from falq.ops.bench.harness import Harness
from falq.ops.bench.model import Row
from falq.ops.bench.scenarios import (
    chain,
    connections,
    cost,
    enqueue,
    fairness,
    inflight,
    limiter,
    mirror,
    overhead,
    profile,
    recovery,
    saturation,
)

_MODULES: list[ModuleType] = [overhead, inflight, saturation, mirror, limiter, enqueue, cost, connections, recovery,
                             chain, fairness, profile]
SCENARIOS: dict[str, Callable[[Harness], list[Row]]] = {m.NAME: m.run for m in _MODULES}
