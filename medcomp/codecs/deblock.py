"""Deblocking for the block-wise INR codecs (per-block SIREN, UniCompress): each block is its own fit, so its edges
do not meet their neighbours' and a reader sees every seam. The encoder, which holds the original, tries a few
strengths on its own decoded file and writes the best one to the header (``deblock``, 0 = off), as HEVC signals its
in-loop filters; the decoder applies that strength. No bytes beyond the header key.

Written here because the filter is a few lines around scipy's Gaussian: smooth along one axis, inside a band
around each seam only, with a weight that falls linearly from the seam, so block interiors are untouched."""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.ndimage import gaussian_filter1d

from medcomp.data.blocks import BlockLayout
from medcomp.data.image import restore_dtype
from medcomp.errors import CorruptFileError
from medcomp.metrics.quality import psnr

log = logging.getLogger(__name__)

STRENGTHS = (0, 1, 2, 3, 4, 6, 8)  # band half-width in voxels; the Gaussian's σ is half of it


def check_strength(strength, source: str = ".mcz") -> int:
    if not isinstance(strength, int) or isinstance(strength, bool) or not 0 <= strength <= max(STRENGTHS):
        raise CorruptFileError(f"corrupt {source}: deblocking strength {strength!r} is not an integer in "
                               f"0..{max(STRENGTHS)}")
    return strength


def deblock(array: np.ndarray, layout: BlockLayout, strength: int) -> np.ndarray:
    """``array`` with its block seams smoothed, in place. Works one seam at a time on a slab a few voxels thick,
    so the extra memory is one slab (a 512² plane × ~20 for a CT), whatever the image's size."""
    if not strength:
        return array
    sigma = strength / 2
    margin = math.ceil(4 * sigma)  # scipy's Gaussian reaches 4σ
    work = np.result_type(array.dtype, np.float32)
    for axis, (size, block) in enumerate(zip(layout.shape, layout.block)):
        def along(a, b, axis=axis):  # index [a, b) along this axis
            return (slice(None),) * axis + (slice(a, b),)

        for seam in range(block, size, block):
            # the band: voxels nearer the seam (between seam − 1 and seam) than ``strength``; the slab adds the
            # Gaussian's reach on each side so the band is smoothed with real neighbours, not edge padding
            band_lo, band_hi = max(0, seam - strength), min(size, seam + strength)
            lo, hi = max(0, band_lo - margin), min(size, band_hi + margin)
            slab = array[along(lo, hi)].astype(work)
            smooth = gaussian_filter1d(slab, sigma, axis=axis, mode="nearest")[along(band_lo - lo, band_hi - lo)]
            near = slab[along(band_lo - lo, band_hi - lo)]
            weight = 1 - np.abs(np.arange(band_lo, band_hi) - (seam - 0.5)) / strength
            weight = weight.reshape((-1,) + (1,) * (array.ndim - axis - 1))
            array[along(band_lo, band_hi)] = restore_dtype(near + weight * (smooth - near), array.dtype.str)
    return array


def best_strength(original: np.ndarray, decoded: np.ndarray, layout: BlockLayout) -> tuple[int, dict[int, float]]:
    """The strength whose deblocked ``decoded`` has the highest PSNR against ``original`` (0 when none helps), and
    the PSNR of each one tried."""
    scores = {s: psnr(original, deblock(decoded.copy(), layout, s) if s else decoded) for s in STRENGTHS}
    return max(scores, key=lambda s: (scores[s], -s)), scores


def signal_best_strength(container, original: np.ndarray, layout: BlockLayout, decode):
    """``container`` (written with ``deblock`` 0) with the header's strength set to the best one for its decoded
    file. A one-digit value, so the file's size does not change after rate control."""
    container.header["deblock"] = 0
    best, scores = best_strength(original, decode(container), layout)
    log.info("deblocking: PSNR %s dB by strength; writing %d",
             " ".join(f"{s}:{v:.2f}" for s, v in scores.items()), best)
    container.header["deblock"] = best
    return container
