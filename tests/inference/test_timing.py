"""Stage timing: wall and CPU seconds, the CPU of the calling thread or of the whole process."""

from __future__ import annotations

import threading
import time

from pipeline.inference import timing
from pipeline.inference.timing import CPU, Stopwatch, split


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_sleep_is_wall_time_not_cpu_and_a_spin_is_both():
    clock = Stopwatch()
    time.sleep(0.2)
    clock.lap("wait")
    _spin(0.2)
    clock.lap("work")
    wall, cpu = split(clock.stages)
    assert wall["wait"] >= 0.19 and cpu["wait"] < 0.05
    assert wall["work"] >= 0.19 and cpu["work"] >= 0.1
    assert set(clock.stages) == {"wait", "wait" + CPU, "work", "work" + CPU}


def test_laps_accumulate_and_restart_leaves_a_gap_out():
    clock = Stopwatch()
    _spin(0.05)
    clock.lap("a")
    _spin(0.1)  # belongs to no stage
    clock.restart()
    _spin(0.05)
    clock.lap("a")
    assert 0.09 <= clock.stages["a"] < 0.14


def test_whole_process_counts_other_threads(monkeypatch):
    monkeypatch.setattr(timing, "_cpu_clock", time.thread_time)
    own, whole = Stopwatch(), Stopwatch(whole_process=True)
    worker = threading.Thread(target=_spin, args=(0.3,))
    worker.start()
    worker.join()
    own.lap("x"), whole.lap("x")
    assert own.stages["x" + CPU] < 0.05 and whole.stages["x" + CPU] >= 0.2


def test_count_whole_process_switches_the_default_clock(monkeypatch):
    monkeypatch.setattr(timing, "_cpu_clock", time.thread_time)
    timing.count_whole_process()
    assert timing._cpu_clock is time.process_time
