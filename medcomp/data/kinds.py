"""Kinds of image a learned start can be shared across, and the intensity window each reaches a network in."""

from __future__ import annotations

import numpy as np

KINDS = ("ct3d", "em3d", "2d")
# Fixed intensity windows that make images of one kind reach the network on one scale (the range used is this window
# widened to the image's own min/max, so nothing is clipped): CT in HU, 8-bit microscopy in grey levels. 2-D images
# mix modalities of arbitrary units (MR, CR of 10–15 bits): min–max of the image.
FIXED_RANGES = {"ct3d": (-1024.0, 3071.0), "em3d": (0.0, 255.0), "2d": None}


def image_kind(image) -> str | None:
    """The prior kind of an image: 2-D slices and radiographs; 3-D CT in HU (modality CT, or signed integers reaching
    below −500 — air in HU); 3-D 8-bit volumes (EM, microscopy). None: no prior applies."""
    a = image.array
    if a.ndim == 2:
        return "2d"
    if a.ndim != 3:
        return None
    if a.dtype == np.uint8:
        return "em3d"
    if image.modality == "CT" or (np.issubdtype(a.dtype, np.signedinteger) and float(a.min()) < -500):
        return "ct3d"
    return None


def covering_range(array, fixed) -> tuple[float, float]:
    """``fixed`` (lo, hi) widened to cover the array's own values; the array's min/max when ``fixed`` is None."""
    lo, hi = float(array.min()), float(array.max())
    return (lo, hi) if fixed is None else (min(lo, fixed[0]), max(hi, fixed[1]))
