"""How much memory a request may take, checked before allocating (a corrupt or hostile header that claims a
terabyte must be one line of error, not a MemoryError or the OOM killer)."""

from __future__ import annotations

import os

from medcomp.errors import MedcompError


def available_bytes() -> int:
    """Memory this process can still get: MemAvailable, capped by a cgroup limit where one is set."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():
            avail = min(avail, int(text))
    return int(avail)


def slabs(n: int, per_item: int, budget: int):
    """Slices over ``n`` items (slices, blocks, rows) of ``per_item`` voxels each, at most ``budget`` voxels a slice
    (at least one item): the unit of work of every step that must not make a full-size float copy."""
    step = max(1, budget // max(per_item, 1))
    return (slice(i, min(n, i + step)) for i in range(0, n, step))


def as_rows(a):
    """``a`` (an array) as (rows, columns), the unit :func:`slabs` walks within a large slice: a view of a contiguous
    array, so that writing into it writes into ``a``."""
    return a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a[None]


def check_fits(nbytes: int, source: str, what: str = "the image") -> None:
    """Refuse ``nbytes`` (the array a step is about to make) when this machine cannot hold it."""
    avail = available_bytes()
    if nbytes > avail:
        raise MedcompError(f"{source}: {what} needs {nbytes / 2**30:.1f} GiB, more than the "
                           f"{avail / 2**30:.1f} GiB of memory available")
