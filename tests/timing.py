"""Wall-clock bounds that hold on a busy machine (issue 18, item 10).

A test that proves "this ends at its deadline" must allow for the time a loaded machine adds to
any wait: with a load average of 10 on 2 cores a woken thread waits its turn for the CPU. The
margin is measured in the same run, right when it is needed, instead of guessed once on an idle
machine: how late short sleeps wake up now, times a safety factor, plus a fixed floor.
"""

from __future__ import annotations

import time

FLOOR_SECONDS = 0.5
FACTOR = 20


def scheduling_delay(samples: int = 20) -> float:
    """The worst lateness, in seconds, of `samples` 5 ms sleeps: what this machine's load adds now."""
    worst = 0.0
    for _ in range(samples):
        started = time.monotonic()
        time.sleep(0.005)
        worst = max(worst, time.monotonic() - started - 0.005)
    return worst


def late_by(floor: float = FLOOR_SECONDS) -> float:
    """Seconds a deadline-based bound must allow on this machine now (at least `floor`)."""
    return floor + FACTOR * scheduling_delay()
