"""One-level orthonormal Haar DWT in 2-D or 3-D, with its exact inverse.

Written in torch (rather than pywavelets) so it runs batched on the GPU inside training steps.
Input (B, C, *spatial) with even spatial sizes; output low (B, C, *spatial/2) and highs (B, C·(2^d−1), *spatial/2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _split(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    even = x.narrow(axis, 0, x.shape[axis] // 2 * 2)
    a, b = even.unflatten(axis, (-1, 2)).unbind(axis + 1)
    return (a + b) / math.sqrt(2.0), (a - b) / math.sqrt(2.0)


def haar_dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = x.ndim - 2
    bands = [x]
    for axis in range(2, 2 + d):
        bands = [half for band in bands for half in _split(band, axis)]
    low, highs = bands[0], torch.cat(bands[1:], dim=1)
    return low, highs


def haar_idwt(low: torch.Tensor, highs: torch.Tensor) -> torch.Tensor:
    d = low.ndim - 2
    c = low.shape[1]
    bands = [low] + list(highs.split(c, dim=1))
    for axis in reversed(range(2, 2 + d)):
        merged = []
        for lo, hi in zip(bands[0::2], bands[1::2]):
            a, b = (lo + hi) / math.sqrt(2.0), (lo - hi) / math.sqrt(2.0)
            merged.append(torch.stack([a, b], dim=axis + 1).flatten(axis, axis + 1))
        bands = merged
    return bands[0]


def pad_even(x: torch.Tensor) -> torch.Tensor:
    pads = []
    for n in reversed(x.shape[2:]):
        pads += [0, n % 2]
    return F.pad(x, pads, mode="replicate") if any(pads) else x
