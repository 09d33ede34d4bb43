"""Work spread over the machine's cores with threads: the codec libraries (imagecodecs, scipy.ndimage) let go of
the GIL while they work, so threads share the cores without the copies and start-up of processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask: a batch scheduler's share, not the whole node)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_map(fn: Callable, items: Sequence, threads: int | None = None) -> list:
    """``[fn(x) for x in items]``, in order, on ``threads`` threads (None: one a usable core)."""
    workers = min(len(items), threads or usable_cpus())
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))
