"""The in-memory image every reader returns and every codec consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medcomp.errors import MedcompError


@dataclass
class Image:
    """A 2-D or 3-D image in its stored units and dtype.

    Axis order is canonical: (y, x) for 2-D and (z, y, x) for 3-D, so axis 0 of a volume walks the axial
    slices. ``spacing`` follows the same order (mm). ``meta`` holds non-identifying facts only (modality,
    bits stored, the source's rescale); readers never put patient identifiers in it.
    """

    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    meta: dict = field(default_factory=dict)
    name: str = "image"

    def __post_init__(self):
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def nbytes(self) -> int:
        """Bytes of the original array in its stored dtype (the numerator of CR)."""
        return int(self.array.size * self.array.itemsize)

    @property
    def data_range(self) -> float:
        """max - min of the original array: the R in PSNR (DESIGN.md)."""
        return float(np.max(self.array)) - float(np.min(self.array))


def validate_image(image: Image, source: str, allowed_ndim=(2, 3)) -> Image:
    """Reject what no codec can honestly compress, with a message that names the file."""
    a = image.array
    if a.size == 0:
        raise MedcompError(f"{source}: image is empty (shape {a.shape})")
    if a.ndim not in allowed_ndim:
        raise MedcompError(
            f"{source}: expected a {' or '.join(f'{d}-D' for d in allowed_ndim)} grayscale image, got shape {a.shape}"
        )
    if a.dtype.kind not in "uif":
        raise MedcompError(f"{source}: unsupported pixel type {a.dtype}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise MedcompError(f"{source}: contains {bad} NaN/Inf values")
    if image.data_range == 0:
        raise MedcompError(f"{source}: image is constant (zero intensity range), PSNR is undefined")
    return image
