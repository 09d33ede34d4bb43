"""Linear intensity mapping between an image's stored values and the unsigned integers a codec accepts.

Both directions walk the array in slabs of rows, so the float64 working copy is one slab, not the volume (nor one
20000² slice).
This is not min–max normalisation (medcomp.data.image.to_unit): integer data whose range fits is only shifted,
so a lossless codec gives back the very values, and the scale is in code units, as the header stores it.
"""

from __future__ import annotations

import numpy as np

from medcomp.data.image import Image, restore_dtype
from medcomp.errors import MedcompError
from medcomp.utils.memory import as_rows, slabs

SLAB_VOXELS = 1 << 22


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
    coded = np.empty(array.shape, dtype=np.uint16 if bits > 8 else np.uint8)
    flat_in, flat_out = as_rows(array), as_rows(coded)
    for s in slabs(flat_in.shape[0], flat_in.shape[1], SLAB_VOXELS):
        flat_out[s] = np.clip(np.rint((flat_in[s].astype(np.float64) - lo) / scale), 0, top)
    # hi: decoding clips into the input's range, so a codec at its coarsest (a target it cannot reach on a tiny
    # image) still decodes inside [lo, hi], never to a mid-grey of its code range far outside the input's
    return coded, {"offset": lo, "scale": scale, "bits": bits, "hi": hi}


def to_unsigned_exactly(image: Image, bits: int, codec: str, max_error: float = 0.0) -> tuple[np.ndarray, dict]:
    """:func:`to_unsigned` for a lossless (or near-lossless) mode: only an integer image whose range ``bits`` hold
    unscaled comes back exactly; a float or wider one is refused in one line, never approximated."""
    coded, mapping = to_unsigned(image.array, bits)
    if image.array.dtype.kind == "f" or mapping["scale"] != 1.0:
        raise MedcompError(f"{image.name}: codec '{codec}' keeps {bits}-bit integers exactly; this "
                           f"{image.array.dtype.name} image (range {image.data_range:g}) cannot be kept "
                           f"{'exactly' if max_error == 0 else f'within {max_error:g}'}")
    return coded, mapping


def from_unsigned(coded: np.ndarray, mapping: dict, dtype: str | np.dtype = np.float64) -> np.ndarray:
    """The inverse of :func:`to_unsigned`, rounded and clipped into ``dtype`` (float64 by default)."""
    out = np.empty(coded.shape, dtype=np.dtype(dtype))
    flat_in, flat_out = as_rows(coded), as_rows(out)
    scale, offset = float(mapping["scale"]), float(mapping["offset"])
    hi = float(mapping.get("hi", np.inf))  # files written before the range was stored are not clipped
    for s in slabs(flat_in.shape[0], flat_in.shape[1], SLAB_VOXELS):
        flat_out[s] = restore_dtype(np.clip(flat_in[s].astype(np.float64) * scale + offset, offset, hi), out.dtype.str)
    return out
