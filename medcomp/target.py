"""A rate target — a compression ratio or bits per pixel — the one thing data, models and codecs all need to know
about compression; its own module so that none of them imports another's package for it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from medcomp.data.image import Image
from medcomp.errors import MedcompError


@dataclass(frozen=True)
class Target:
    """A rate target: a compression ratio or a bits-per-pixel figure (exactly one)."""

    ratio: float | None = None
    bpp: float | None = None

    def __post_init__(self):
        if (self.ratio is None) == (self.bpp is None):
            raise MedcompError("give exactly one rate target: a ratio (--ratio) or bits per pixel (--bpp)")
        value = self.ratio if self.ratio is not None else self.bpp
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise MedcompError(f"rate target must be a positive finite number, got {value}")

    def target_bytes(self, image: Image) -> float:
        if self.ratio is not None:
            return image.nbytes / self.ratio
        return self.bpp * image.array.size / 8.0

    def ratio_for(self, image: Image) -> float:
        return image.nbytes / self.target_bytes(image)

    def describe(self) -> str:
        return f"cr{self.ratio:g}" if self.ratio is not None else f"bpp{self.bpp:g}"


def fit_to_budget(size_of: Callable[[float], int], budget: float, lo: float, hi: float, *, increasing: bool = True,
                  integer: bool = False, iterations: int = 18) -> float:
    """The one rate control of medcomp: the knob in [lo, hi] whose output is the largest that fits ``budget``
    bytes. A target is a ceiling — ``compression=crN`` means a file of at most original/N bytes (CR ≥ N), ``bppB``
    at most B bits per pixel — for every codec, classical or learned, and for CT-Lite's JPEG level.

    ``size_of(knob)`` is the output's size, monotone in the knob (``increasing``: it grows with the knob); integer
    knobs are searched exactly, real ones by ``iterations`` bisection steps. When not even the smallest output
    fits, its knob is returned: the codec writes it and reports the ratio it reached. No codec exposes "give me N
    bytes", hence the search; written here because it is a few lines that every codec must share.
    """
    sizes: dict[float, int] = {}

    def fits(knob) -> bool:
        if knob not in sizes:
            sizes[knob] = size_of(knob)
        return sizes[knob] <= budget

    small, large = (lo, hi) if increasing else (hi, lo)  # the knobs of the smallest and the largest output
    if integer:
        small, large = int(round(small)), int(round(large))
    if not fits(small):  # nothing fits: the smallest output, and the codec reports the ratio it reached
        return small
    if fits(large):
        return large
    # small fits, large does not: bisect between them
    if integer:
        while abs(large - small) > 1:
            mid = (small + large) // 2
            small, large = (mid, large) if fits(mid) else (small, mid)
        return small
    for _ in range(iterations):
        mid = (small + large) / 2.0
        small, large = (mid, large) if fits(mid) else (small, mid)
    return small
