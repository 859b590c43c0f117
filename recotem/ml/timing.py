"""Where the time of a training or tuning job goes, phase by phase.

A user who waited 40 s for a model whose fit took 15 s deserves to know where the other 25 s
went; so do we, to make them shorter. A :class:`PhaseTimer` adds up wall-clock seconds per named
phase; the services store ``as_dict()`` on the row (``timings``) and in the task log.

The phase names are fixed so numbers from different jobs compare:

``read``      reading the stored upload into a DataFrame (plus its fingerprint)
``matrix``    building the user x item matrix of all interactions
``split``     the train / validation / test split
``fit``       fitting the model (a tuning job: running its trials)
``evaluate``  scoring on held-out users (for a plain training: the holdout fit and its scoring)
``refit``     a tuning job: training the best configuration on all the data
``topk``      precomputing every user's top items
``save``      serialising, signing and storing the artifact
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

PHASES = ("read", "matrix", "split", "fit", "evaluate", "refit", "topk", "save")


class PhaseTimer:
    """Seconds per phase; a phase entered twice accumulates. Not thread-safe (one job, one thread)."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block under ``name`` (also when it raises: a failed job's timings still help)."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; phases are {', '.join(PHASES)}")
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def add(self, name: str, seconds: float) -> None:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; phases are {', '.join(PHASES)}")
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def merge(self, other: Mapping[str, object]) -> None:
        """Add another job step's timings (e.g. a tuning job's tasks in separate processes)."""
        for name, value in other.items():
            if name in PHASES and isinstance(value, (int, float)):
                self.add(name, float(value))

    def as_dict(self) -> dict[str, float]:
        """Phases that ran, in the canonical order, rounded to milliseconds."""
        return {name: round(self._seconds[name], 3) for name in PHASES if name in self._seconds}

    def total(self) -> float:
        return sum(self._seconds.values())


def describe(timings: Mapping[str, object]) -> str:
    """``"read 1.20 s, fit 14.70 s"``: the task-log line."""
    return ", ".join(
        f"{name} {float(value):.2f} s"
        for name, value in timings.items()
        if isinstance(value, (int, float))
    )
