"""Rate, in one module: the target (a compression ratio or bits per pixel — the one thing data, models and codecs all
need to know about compression), the byte budget it sets, and the searches that fill it (fit_to_budget over any
knob, fit_by_sample for the slow whole encodes, fill_budget over a quantiser's levels, widest_fitting over a network's
width). Its own module so that none
of data, models and codecs imports another's package for it."""

from __future__ import annotations

import functools
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
        return self.budget_bytes(image.nbytes, image.array.size)

    def budget_bytes(self, original_bytes: float, voxels: int) -> float:
        """The byte ceiling for data of ``original_bytes`` over ``voxels`` (one image, or a set of them)."""
        return original_bytes / self.ratio if self.ratio is not None else self.bpp * voxels / 8.0

    def ratio_for(self, image: Image) -> float:
        return image.nbytes / self.target_bytes(image)

    def describe(self) -> str:
        return f"cr{self.ratio:g}" if self.ratio is not None else f"bpp{self.bpp:g}"


def fit_to_budget(size_of: Callable[[float], int], budget: float, lo: float, hi: float, *, increasing: bool = True,
                  integer: bool = False, iterations: int = 18, tolerance: float = 0.0) -> float:
    """The one rate control of medcomp: the knob in [lo, hi] whose output is the largest that fits ``budget``
    bytes. A target is a ceiling — ``compression=crN`` means a file of at most original/N bytes (CR ≥ N), ``bppB``
    at most B bits per pixel — for every codec, classical or learned, and for CT-Lite's JPEG level.

    ``size_of(knob)`` is the output's size, monotone in the knob (``increasing``: it grows with the knob); integer
    knobs are searched exactly, real ones by ``iterations`` bisection steps; with a ``tolerance`` the search stops
    at the first knob whose output fits within that fraction of the budget. When not even the smallest output
    fits, its knob is returned: the codec writes it and reports the ratio it reached. No codec exposes "give me N
    bytes", hence the search; written here because it is a few lines that every codec must share.
    """
    sizes: dict[float, int] = {}

    def fits(knob) -> bool:
        if knob not in sizes:
            sizes[knob] = size_of(knob)
        return sizes[knob] <= budget

    def close(knob) -> bool:  # fits, and within the tolerance of the budget: no need to search further
        return tolerance > 0 and sizes[knob] >= (1.0 - tolerance) * budget

    small, large = (lo, hi) if increasing else (hi, lo)  # the knobs of the smallest and the largest output
    if integer:
        small, large = int(round(small)), int(round(large))
    if not fits(small):  # nothing fits: the smallest output, and the codec reports the ratio it reached
        return small
    if fits(large):
        return large
    # small fits, large does not: bisect between them
    if integer:
        while abs(large - small) > 1 and not close(small):
            mid = (small + large) // 2
            small, large = (mid, large) if fits(mid) else (small, mid)
        return small
    for _ in range(iterations):
        if close(small):
            break
        mid = (small + large) / 2.0
        small, large = (mid, large) if fits(mid) else (small, mid)
    return small


RATE_TOLERANCE = 0.03  # a file within 3 % under its ceiling is on target (a finer search costs whole encodes)


def fit_by_sample(whole_size: Callable[[float], int], sample_size: Callable[[float], int], budget: float, lo: float,
                  hi: float, *, share: float, increasing: bool = True, integer: bool = False,
                  tolerance: float = RATE_TOLERANCE, whole_passes: int = 3) -> float:
    """:func:`fit_to_budget` for a volume, in a few whole encodes instead of ~20: the knob is searched on a sample
    of it (a few slices or runs of frames, cheap to code), whose budget is the whole budget times the sample's
    ``share`` of the bytes (first guessed, e.g. its share of the voxels). One whole encode at that knob measures the
    true share; the sample is searched again with it, until the whole file is under the budget and within
    ``tolerance`` of it, or the knob is at its end. After ``whole_passes`` whole encodes that miss, a search of the
    whole volume between the nearest knobs measured on either side finishes the work (log-size interpolation for a
    real knob, bisection for an integer one), so the ceiling holds whatever the sample said. Hand-written: no codec library offers "this many bytes for a volume"."""
    whole: dict[float, int] = {}  # the whole sizes measured: the bracket the last step starts from
    sample_at = functools.cache(sample_size)

    def whole_at(knob):
        if knob not in whole:
            whole[knob] = whole_size(knob)
        return whole[knob]

    def searched(share):  # the sample aimed at the middle of the tolerated band, found within a third of it
        return fit_to_budget(sample_at, budget * (1.0 - tolerance / 2) * share, lo, hi, increasing=increasing,
                             integer=integer, tolerance=tolerance / 3)

    small, large = (lo, hi) if increasing else (hi, lo)
    if integer:
        small, large = int(round(small)), int(round(large))
    knob = searched(share)
    for _ in range(whole_passes):
        size = whole_at(knob)
        if size <= budget and (size >= (1.0 - tolerance) * budget or knob == large):
            return knob
        if size > budget and knob == small:  # not even the smallest output fits: the codec reports its ratio
            return knob
        following = searched(sample_at(knob) / size)  # the share measured at this knob
        if following in whole:
            break
        knob = following
    fitting = [k for k, v in whole.items() if v <= budget]
    over = [k for k, v in whole.items() if v > budget]
    nearest_fit = max(fitting, key=whole.get) if fitting else small
    if over:
        nearest_over = min(over, key=whole.get)
    else:  # an integer knob one step short of the target has no knob between (JPEG-LS's NEAR, JPEG's quality)
        nearest_over = nearest_fit + (1 if increasing else -1) if integer and fitting else large
    if fitting and over and not integer:
        return _interpolated(whole_at, budget, nearest_fit, nearest_over, tolerance)
    a, b = sorted((nearest_fit, nearest_over))
    return fit_to_budget(whole_at, budget, a, b, increasing=increasing, integer=integer, tolerance=tolerance)


def _interpolated(size_at: Callable[[float], int], budget: float, fit: float, over: float, tolerance: float,
                  iterations: int = 12) -> float:
    """Between a knob whose output fits and one whose output does not, the knob whose output fits within
    ``tolerance``: each step interpolates log(size) linearly in the knob (sizes go about exponentially with
    quality knobs, so this lands in one or two steps where bisection takes five), kept inside the middle 80 % of
    the bracket so that a bend in the curve cannot stall it."""
    goal = math.log(budget * (1.0 - tolerance / 2))
    for _ in range(iterations):
        low, high = math.log(size_at(fit)), math.log(size_at(over))
        t = min(max((goal - low) / (high - low), 0.1), 0.9) if high > low else 0.5
        knob = fit + t * (over - fit)
        if size_at(knob) > budget:
            over = knob
        else:
            fit = knob
            if size_at(knob) >= (1.0 - tolerance) * budget:
                break
    return fit


def spread(count: int, chosen: int, run: int = 1) -> list[int]:
    """Indices of ``chosen`` runs of ``run`` consecutive items spread evenly over ``count`` items (a sample of a
    volume's slices or frames): the runs' starts are equally spaced, the last run ends at the last item."""
    starts = [round(i * (count - run) / max(chosen - 1, 1)) for i in range(chosen)]
    return sorted({s + j for s in starts for j in range(run)})


class WholeEncodes:
    """The whole-image encodes of one rate search: each is counted (benchmarks report the count) and the largest
    that fits is kept, so that the knob the search returns is not coded once more. ``build(knob)`` returns a
    container (anything with ``to_bytes()``)."""

    def __init__(self, build: Callable, budget: float):
        self.build, self.budget = build, budget
        self.count, self.sample_count = 0, 0
        self.kept: dict = {}  # knob → (size, container): the largest fitting one, and the last one over

    def size(self, knob: float) -> int:
        self.count += 1
        container = self.build(knob)
        size = len(container.to_bytes())
        # keep the largest file that fits and the smallest that does not (what is returned when nothing fits)
        fitting = size <= self.budget
        rival = [k for k, (s, _) in self.kept.items() if (s <= self.budget) == fitting]
        if not rival or (size > self.kept[rival[0]][0]) == fitting:
            self.kept = {k: v for k, v in self.kept.items() if k not in rival}
            self.kept[knob] = (size, container)
        return size

    def counted(self, sample_size: Callable[[float], int]) -> Callable[[float], int]:
        def size(knob):
            self.sample_count += 1
            return sample_size(knob)
        return size

    def chosen(self, knob: float):
        """The container coded at ``knob``: the one kept, or coded now."""
        return self.kept[knob][1] if knob in self.kept else self.build(knob)

    def report(self) -> dict:
        return {"whole_encodes": self.count, "sample_encodes": self.sample_count}


def widest_fitting(bytes_of_width: Callable[[int], float], budget: float) -> int:
    """The widest network whose file fits ``budget`` bytes, ``bytes_of_width(w)`` growing with the width w; 0 when
    not even width 1 fits. The one width solve of the fitted codecs (per-block SIREN, UniCompress and its student):
    doubling until a width does not fit, then :func:`fit_to_budget`'s exact integer search between the last two, so
    that a probe is never much larger than the budget (a codec may measure real placeholder files)."""
    if bytes_of_width(1) > budget:
        return 0
    over = 2
    while bytes_of_width(over) <= budget:
        over *= 2
    return int(fit_to_budget(bytes_of_width, budget, over // 2, over, integer=True))


def fill_budget(build, budget: float, lo: int, hi: int):
    """``build(top)`` for the largest integer ``top`` in [lo, hi] whose file fits ``budget`` bytes (the
    entropy-coded size grows with the number of levels). Width steps alone leave up to ~15 % of a budget unused; the
    quantiser's levels are the fine knob that fills it. Returns ``build(lo)`` when even that does not fit."""
    built = {}

    def size(top):
        built[top] = build(top)
        return len(built[top].to_bytes())

    return built[fit_to_budget(size, budget, lo, hi, integer=True)]
