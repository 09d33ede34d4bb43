"""Linear intensity mapping between an image's stored values and the unsigned integers a codec accepts."""

from __future__ import annotations

import numpy as np


def to_unsigned(array: np.ndarray, bits: int) -> tuple[np.ndarray, dict]:
    """Map ``array`` onto [0, 2**bits − 1].

    Integer data whose range fits is only shifted (exactly invertible); wider or float data is scaled, and
    the scale goes in the header so decoding lands back in the original units.
    """
    lo, hi = float(array.min()), float(array.max())
    top = 2**bits - 1
    if array.dtype.kind in "iu" and hi - lo <= top:
        scale = 1.0
    else:
        scale = (hi - lo) / top if hi > lo else 1.0
    coded = np.rint((array.astype(np.float64) - lo) / scale)
    coded = np.clip(coded, 0, top).astype(np.uint16 if bits > 8 else np.uint8)
    return coded, {"offset": lo, "scale": scale, "bits": bits}


def from_unsigned(coded: np.ndarray, mapping: dict) -> np.ndarray:
    return coded.astype(np.float64) * float(mapping["scale"]) + float(mapping["offset"])
