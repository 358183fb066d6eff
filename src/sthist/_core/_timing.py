"""Wall time per stage of fitting and prediction, for profiling (``benchmarks/profile_fit.py``).

Stages are added up as they run (a dict addition each, no overhead worth measuring); :func:`stage_times`
returns and clears them.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

_TIMES: dict[str, float] = defaultdict(float)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to stage ``name``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _TIMES[name] += time.perf_counter() - start


def stage_times(*, reset: bool = True) -> dict[str, float]:
    """Seconds spent per stage since the last reset, in the order the stages first ran."""
    times = dict(_TIMES)
    if reset:
        _TIMES.clear()
    return times
