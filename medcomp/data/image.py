"""The in-memory image every reader returns and every codec consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medcomp.errors import MedcompError


@dataclass
class Image:
    """A 2-D or 3-D image in its stored units and dtype.

    Axis order is canonical: (y, x) for 2-D and (z, y, x) for 3-D, so axis 0 of a volume walks the axial
    slices. ``spacing`` follows the same order (mm). ``meta`` holds non-identifying facts only; readers never put
    patient identifiers in it.

    The rest is part of the image as much as the voxels, and travels through the ``.mcz`` header to every writer:
    ``origin``/``direction`` place it in the patient (LPS, ITK convention: see :mod:`medcomp.data.geometry`);
    ``rescale`` = (slope, intercept) maps stored values to real units when that is not the identity and could not
    be applied in the stored dtype (a non-integral slope); ``photometric`` keeps MONOCHROME1 (high = dark);
    ``modality`` is the DICOM modality (CT, MR, CR, ...) when the source said.
    """

    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    meta: dict = field(default_factory=dict)
    name: str = "image"
    origin: tuple[float, float, float] | None = None
    direction: tuple[float, ...] | None = None
    rescale: tuple[float, float] | None = None
    photometric: str = "MONOCHROME2"
    modality: str | None = None

    def __post_init__(self):
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)
        if self.origin is not None:
            self.origin = tuple(float(s) for s in self.origin)
        if self.direction is not None:
            self.direction = tuple(float(s) for s in self.direction)
        if self.rescale is not None:
            self.rescale = (float(self.rescale[0]), float(self.rescale[1]))
            if self.rescale == (1.0, 0.0):
                self.rescale = None

    def like(self, array: np.ndarray) -> Image:
        """The same image (geometry, intensity mapping, modality) with other voxels."""
        from dataclasses import replace

        return replace(self, array=array)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def nbytes(self) -> int:
        """Bytes of the original array in its stored dtype (the numerator of CR)."""
        return int(self.array.size * self.array.itemsize)

    @property
    def data_range(self) -> float:
        """max - min of the original array: the R in PSNR (docs/command-line.md, Conventions)."""
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
    if not np.isfinite(image.data_range):  # max − min overflows float64 (values near ±1.8e308): no PSNR, no scale
        raise MedcompError(f"{source}: value range {float(a.min()):.3g} … {float(a.max()):.3g} is wider than float64 "
                           "can hold; rescale the image first")
    if image.data_range == 0:
        raise MedcompError(f"{source}: image is constant (zero intensity range), PSNR is undefined")
    return image


def restore_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Round and clip decoded float values into the original dtype, a slab of rows at a time (a decoded CT's rounded
    and clipped float copies would be two more volumes)."""
    from medcomp.utils.memory import as_rows, slabs

    dt = np.dtype(dtype)
    if dt.kind not in "iu":
        return values.astype(dt)
    info = np.iinfo(dt)
    if values.ndim < 2:
        return np.clip(np.rint(values), info.min, info.max).astype(dt)
    out = np.empty(values.shape, dtype=dt)
    rows_in, rows_out = as_rows(np.ascontiguousarray(values)), as_rows(out)
    for s in slabs(rows_in.shape[0], rows_in.shape[1], RESTORE_SLAB_VOXELS):
        rows_out[s] = np.clip(np.rint(rows_in[s]), info.min, info.max)
    return out


RESTORE_SLAB_VOXELS = 1 << 22


def _span(lo, hi):
    """hi − lo, or 1 where the range is empty, so a constant image maps to the bottom of the range, not to NaN."""
    if isinstance(hi, np.ndarray):
        return np.where(hi > lo, hi - lo, 1.0)
    return hi - lo if hi > lo else 1.0


def to_unit(values, lo, hi, *, signed: bool = False):
    """Min–max normalisation, the one every model and data module uses: [lo, hi] → [0, 1] ([−1, 1] if ``signed``).

    Works on NumPy arrays and torch tensors alike, in their own precision (callers that keep bytes stable cast to
    float64 first); ``lo``/``hi`` may be scalars or arrays that broadcast (per-block ranges).
    """
    unit = (values - lo) / _span(lo, hi)
    return unit * 2.0 - 1.0 if signed else unit


def from_unit(unit, lo, hi, *, signed: bool = False):
    """The inverse of :func:`to_unit` (floats; :func:`restore_dtype` rounds into the stored dtype)."""
    if signed:
        unit = (unit + 1.0) / 2.0
    return unit * _span(lo, hi) + lo
