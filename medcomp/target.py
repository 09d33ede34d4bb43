"""A rate target — a compression ratio or bits per pixel — the one thing data, models and codecs all need to know
about compression; its own module so that none of them imports another's package for it."""

from __future__ import annotations

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
        if not value > 0:
            raise MedcompError(f"rate target must be positive, got {value}")

    def target_bytes(self, image: Image) -> float:
        if self.ratio is not None:
            return image.nbytes / self.ratio
        return self.bpp * image.array.size / 8.0

    def ratio_for(self, image: Image) -> float:
        return image.nbytes / self.target_bytes(image)

    def describe(self) -> str:
        return f"cr{self.ratio:g}" if self.ratio is not None else f"bpp{self.bpp:g}"
