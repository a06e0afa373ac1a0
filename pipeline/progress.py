"""Progress lines for the run's log: how much of a long stage's work is done, its rate and the time left.

tqdm's bars go to stderr, which the Dagster UI shows apart from the run's events; a stage that takes minutes also
says where it is in the log a person reads while waiting: at most every `every` seconds, and when it is done.
"""
from __future__ import annotations

import time
from typing import Callable


def duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    def __init__(self, log: Callable[[str], None], what: str, total: int | None, unit: str = "images",
                 every: float = 30.0, clock: Callable[[], float] = time.perf_counter):
        self.log, self.what, self.total, self.unit, self.every, self.clock = log, what, total, unit, every, clock
        self.began = self.last = clock()
        self.done = 0

    def update(self, n: int = 1, note: str = "") -> None:
        """`n` more units done (`note`: said on this line, if one is logged)."""
        self.done += n
        now = self.clock()
        finished = self.total is not None and self.done >= self.total
        if finished or now - self.last >= self.every:
            self.last = now
            self.log(self.line(now) + (f"; {note}" if note else ""))

    def line(self, now: float) -> str:
        elapsed = now - self.began
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = "" if self.total is None else f"/{self.total}"
        left = (f", about {duration((self.total - self.done) / rate)} left" if self.total and rate
                and self.done < self.total else f", {duration(elapsed)} in all" if self.done == self.total else "")
        pace = f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{duration(1 / rate)} each" if rate else "-"
        return f"{self.what}: {self.done}{of} {self.unit}, {pace}{left}"
