"""A figure: the median of repeated samples, with min and max, and how it was made."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figure:
    samples: list[float] = field(default_factory=list)
    unit: str = "s"
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max,
                "runs": len(self.samples), "unit": self.unit, "samples": self.samples,
                **({"note": self.note} if self.note else {})}


def timed(fn: Callable[[], object], runs: int, *, note: str = "") -> Figure:
    """Wall time of `fn`, `runs` times."""
    fig = Figure(note=note)
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        fig.samples.append(time.perf_counter() - t0)
    return fig


def sampled(fn: Callable[[], float], runs: int, *, unit: str = "s", note: str = "") -> Figure:
    """`fn` measures itself (it returns its own figure), `runs` times."""
    return Figure([fn() for _ in range(runs)], unit, note)
