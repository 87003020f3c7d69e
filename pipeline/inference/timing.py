"""Wall-clock and CPU time of the batch job's stages (``summary.json`` → ``this_run``).

A stage's wall time includes waiting: for a core (the worker processes run at the lowest
priority and yield to the network), for the disk (durable writes) or for a lock. Its CPU
time is what it computed: the calling thread's, or in a worker process
(:func:`count_whole_process`) the whole process's, so that a decoder's own threads count
too. The CPU time outside the forward pass is what the batch job adds to the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: The CPU clock of stages timed in this process (see :func:`count_whole_process`).
_cpu_clock: Callable[[], float] = time.thread_time
#: Suffix of a stage's CPU seconds beside its wall seconds in a stage dictionary.
CPU = ":cpu"


def count_whole_process() -> None:
    """Time stages by this process's CPU time (a worker process runs one stage at a time)."""
    global _cpu_clock
    _cpu_clock = time.process_time


class Stopwatch:
    """Times consecutive stages: each :meth:`lap` ends one and starts the next.

    ``stages`` maps a stage to its wall seconds and ``stage + CPU`` to its CPU seconds;
    a stage lapped twice accumulates. ``whole_process``: count every thread of this process
    (a forward pass computes on a pool of threads), not only the calling one.
    """

    def __init__(self, whole_process: bool = False):
        self.stages: dict[str, float] = {}
        self._clock = time.process_time if whole_process else _cpu_clock
        self.started = time.perf_counter()
        self._wall, self._cpu = self.started, self._clock()

    def lap(self, stage: str) -> None:
        """End ``stage`` now (it began at the previous lap or at construction)."""
        wall, cpu = time.perf_counter(), self._clock()
        self.stages[stage] = self.stages.get(stage, 0.0) + wall - self._wall
        self.stages[stage + CPU] = self.stages.get(stage + CPU, 0.0) + cpu - self._cpu
        self._wall, self._cpu = wall, cpu

    def restart(self) -> None:
        """Start the next stage now (time since the last lap belongs to no stage)."""
        self._wall, self._cpu = time.perf_counter(), self._clock()


def split(stages: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """``(wall seconds, CPU seconds)`` per stage from a :class:`Stopwatch`'s dictionary."""
    wall = {k: v for k, v in stages.items() if not k.endswith(CPU)}
    cpu = {k[: -len(CPU)]: v for k, v in stages.items() if k.endswith(CPU)}
    return wall, cpu
