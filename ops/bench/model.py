"""What a scenario returns: rows of (scenario, metric, falq, reference, ratio, goal, met).

A :class:`Row` holds one figure of falq and the same figure of one reference measured in
the same run. Its ratio is ``falq / reference``; a :class:`Goal` is checked either on the
ratio (e.g. "at least 0.3 of Celery's no-op rate") or on falq's own figure (e.g. "p50
under 150 ms"), because the issue states goals both ways.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

#: Short names of the three references, used in the table and the chart.
REF_NOOP = "celery no-op"
REF_FAL_CLIENT = "fal-client script"
REF_NAIVE = "naive celery"


@dataclass(frozen=True)
class Goal:
    """A target on ``falq`` (its own figure) or on ``ratio`` (falq / reference)."""

    on: Literal["falq", "ratio"]
    op: Literal[">=", "<=", "<"]
    value: float

    def met(self, falq: float, ratio: float) -> bool:
        x = falq if self.on == "falq" else ratio
        if math.isnan(x):
            return False
        if self.op == ">=":
            return x >= self.value
        if self.op == "<=":
            return x <= self.value
        return x < self.value

    def text(self) -> str:
        return f"{self.on} {self.op} {self.value:g}"


@dataclass
class Row:
    """One line of the table: a falq figure beside the same figure of a reference."""

    scenario: str
    metric: str
    unit: str
    falq: float
    reference: float
    ref_name: str
    goal: Goal | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if self.reference == 0 or math.isnan(self.reference) or math.isnan(self.falq):
            return math.nan
        return self.falq / self.reference

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.falq, self.ratio)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "metric": self.metric, "unit": self.unit, "falq": self.falq,
            "reference": self.reference, "reference_name": self.ref_name, "ratio": self.ratio,
            "goal": self.goal.text() if self.goal else None, "met": self.met, "note": self.note, **self.extra,
        }


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

#: Queues and completion counters of the reference Celery apps (see noop_app, naive_app).
NOOP_QUEUE, NOOP_COUNTER = "bench.noop", "bench:noop:done"
NAIVE_QUEUE, NAIVE_COUNTER = "bench.naive", "bench:naive:done"
T2I = "fal-ai/qwen-image-2/text-to-image"
