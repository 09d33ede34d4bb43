"""Distortion metrics on the original stored units (docs/command-line.md, Conventions), in bounded memory.

Every metric walks a volume in groups of axial slices of at most ``CHUNK_VOXELS`` voxels, so a 300×512×512 CT or a
3000×3000 radiograph costs a few hundred MB on top of the two arrays, whatever their size.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from medcomp.utils.memory import as_rows, slabs
from medcomp.utils.parallel import thread_map

CHUNK_VOXELS = 1 << 21  # ≈ 2 M voxels per group: ~16 MB per float64 map, ~250 MB for SSIM's working set
WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MAX_VOXELS = 4096 * 4096  # ≈ 2.5 GB of working set; a 3000² radiograph is well inside


def _slices(a: np.ndarray) -> np.ndarray:
    return a[None] if a.ndim == 2 else a.reshape((-1,) + a.shape[-2:])


def data_range(original: np.ndarray) -> float:
    return float(np.max(original)) - float(np.min(original))


def _unit(rng: float) -> float:
    """What SSIM's inputs are divided by: 1, or R where R² would overflow float64 (SSIM is the same for x/R, y/R and
    range 1; ordinary images keep their exact numbers)."""
    return rng if rng > 1e100 else 1.0


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """10·log10(R²/MSE) in float64, R = max − min of the *original*. Infinite for an exact match.

    Hand-written because torchmetrics' PSNR takes R from its arguments or a fixed value and runs in float32;
    the convention here needs float64 and R from the original only (and it has to stream over slices).
    """
    if np.shape(original) != np.shape(decoded):
        raise ValueError(f"shape mismatch {np.shape(original)} vs {np.shape(decoded)}")
    # rows, not slices: one 20000² slice is 3.2 GB as float64; the error is taken relative to R, so that a float
    # image whose range is near float64's limit (R² overflows) still has a PSNR
    a, b = as_rows(np.asarray(original)), as_rows(np.asarray(decoded))
    rng = data_range(original)
    sse = 0.0
    for g in slabs(a.shape[0], a.shape[1], CHUNK_VOXELS):
        d = a[g].astype(np.float64) / rng - b[g].astype(np.float64) / rng
        sse += float(np.dot(d.ravel(), d.ravel()))
    mse = sse / a.size
    if mse == 0:
        return float("inf")
    return float(-10.0 * np.log10(mse))


def max_abs_error(original: np.ndarray, decoded: np.ndarray) -> float:
    """max |original − decoded| in stored units (float64, a slab of rows at a time): what --max-error guarantees."""
    a, b = as_rows(np.asarray(original)), as_rows(np.asarray(decoded))
    worst = 0.0
    for g in slabs(a.shape[0], a.shape[1], CHUNK_VOXELS):
        worst = max(worst, float(np.max(np.abs(a[g].astype(np.float64) - b[g].astype(np.float64)))))
    return worst


def _window(h: int, w: int) -> tuple[int, float]:
    """The Gaussian window: 11 px, σ 1.5 (Wang et al. 2004, torchmetrics' default); an image with a side under 11 px
    gets the largest odd window that fits, σ scaled with it, instead of an error."""
    size = min(WINDOW, h, w)
    size -= 1 - size % 2
    return size, SIGMA * size / WINDOW


def _ssim_terms(x: np.ndarray, y: np.ndarray, rng: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and mean contrast-structure term per slice of (N, H, W) float64 batches, as torchmetrics computes
    them: SSIM averaged over the whole image, the contrast-structure term over the unpadded part."""
    full, cs, pad = _ssim_maps(x, y, rng)
    inner = cs[..., pad:cs.shape[-2] - pad, pad:cs.shape[-1] - pad] if pad else cs
    return full.mean(axis=(-2, -1)), inner.mean(axis=(-2, -1))


def _ssim_maps(x: np.ndarray, y: np.ndarray, rng: float, window: tuple[int, float] | None = None,
               rows_pad: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-pixel SSIM and contrast-structure maps, (N, H, W), and the padding: reflect padding by half a window,
    Gaussian-weighted local statistics (separable here), variances clamped at 0. ``window``: the slice's window
    (default: from this input's size); ``rows_pad``: reflect padding above and below (a band of a large slice
    brings its neighbours' rows instead, and is padded only where it meets the slice's edge). numpy, not torch
    (the arithmetic torchmetrics does, in float64): a classical codec's process then never loads torch."""
    size, sigma = window or _window(*x.shape[-2:])
    pad = (size - 1) // 2
    top, bottom = rows_pad if rows_pad is not None else (pad, pad)
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    if pad:
        x, y = (np.pad(v, ((0, 0), (top, bottom), (pad, pad)), mode="reflect") for v in (x, y))
    mx, my, sxx, syy, sxy = _gaussian_valid([x, y, x * x, y * y, x * y], g, pad)
    c1, c2 = (K1 * rng) ** 2, (K2 * rng) ** 2
    vx, vy, cov = np.maximum(sxx - mx * mx, 0), np.maximum(syy - my * my, 0), sxy - mx * my
    cs = (2 * cov + c2) / (vx + vy + c2)
    full = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs
    return full, cs, pad


def _gaussian_valid(maps: list[np.ndarray], g: np.ndarray, pad: int) -> list[np.ndarray]:
    """The separable Gaussian over the last two axes of each (N, H, W) map, keeping only the positions the whole
    window covers (a "valid" convolution). scipy's correlate1d, not torch's grouped conv2d: in float64 on a CPU it is
    ~8× faster, and it lets go of the GIL, so the maps are filtered on every core (a 300×512×512 CT's SSIM took 30 s,
    most of `medcomp compress`'s time for the fast codecs)."""

    def one(m: np.ndarray) -> np.ndarray:
        m = ndimage.correlate1d(m, g, axis=-1, mode="constant")[..., pad:m.shape[-1] - pad]
        return ndimage.correlate1d(m, g, axis=-2, mode="constant")[..., pad:m.shape[-2] - pad, :]

    return thread_map(one, maps)


def _per_slice(original, decoded, fn) -> list[float]:
    a, b = _slices(np.asarray(original)), _slices(np.asarray(decoded))
    rng = data_range(original)
    unit = _unit(rng)
    out: list[float] = []
    for g in slabs(a.shape[0], a[0].size, CHUNK_VOXELS):
        out += fn(a[g].astype(np.float64) / unit, b[g].astype(np.float64) / unit, rng / unit)
    return out


def ssim(original: np.ndarray, decoded: np.ndarray) -> float:
    """2-D SSIM (Gaussian window 11, σ 1.5, K = 0.01/0.03, as torchmetrics and Wang et al.) with data_range R of
    the original; for volumes, the mean over axial slices (axis 0). Equal to torchmetrics'
    ``structural_similarity_index_measure`` (tested), whose working set is ~5 KB per voxel: a 512×512×20 series
    needed 25 GB there. A slice larger than CHUNK_VOXELS is taken in bands of rows with a window's halo (a 20000²
    slice whole would need ~90 GB)."""
    a, b = _slices(np.asarray(original)), _slices(np.asarray(decoded))
    if a[0].size > CHUNK_VOXELS:
        rng = data_range(original)
        return float(np.mean([_banded_ssim(a[k], b[k], rng) for k in range(a.shape[0])]))
    return float(np.mean(_per_slice(original, decoded,
                                    lambda x, y, r: _ssim_terms(x, y, r)[0].tolist())))


def _banded_ssim(a: np.ndarray, b: np.ndarray, rng: float) -> float:
    """Mean SSIM of one large slice, a band of rows at a time; the same map as the whole slice at once (each band
    reads ``pad`` real rows beyond its edges, and is reflect-padded only at the slice's top and bottom)."""
    h, w = a.shape
    window = _window(h, w)
    pad = (window[0] - 1) // 2
    unit = _unit(rng)
    total = 0.0
    for band in slabs(h, w, CHUNK_VOXELS // 2):
        r0, r1 = max(band.start - pad, 0), min(band.stop + pad, h)
        rows_pad = (pad - (band.start - r0), pad - (r1 - band.stop))
        x, y = (v[r0:r1].astype(np.float64)[None] / unit for v in (a, b))
        full, _, _ = _ssim_maps(x, y, rng / unit, window, rows_pad)
        total += float(full.sum())
    return total / (h * w)


def _halved(x: np.ndarray) -> np.ndarray:
    """2× average pooling of (N, H, W), an odd last row or column dropped (torch's avg_pool2d(x, 2))."""
    n, h, w = x.shape
    return x[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def ms_ssim(original: np.ndarray, decoded: np.ndarray) -> float | None:
    """Multi-scale SSIM (5 scales, weights of Wang et al. 2003, 2× average pooling) with data_range R of the original;
    volumes: the mean over axial slices. None when a slice is too small for five scales (under 161 px a side).
    Equal to torchmetrics' ``multiscale_structural_similarity_index_measure`` (tested), in bounded memory: a slice
    above MS_SSIM_MAX_VOXELS (its five scales are taken whole, ~150 bytes a pixel) also gives None; PSNR and SSIM,
    which are tiled, still measure it."""
    if min(np.shape(original)[-2:]) < 161 or math.prod(np.shape(original)[-2:]) > MS_SSIM_MAX_VOXELS:
        return None

    def per_slice(x, y, rng):
        factors = []
        for level, w in enumerate(MS_WEIGHTS):
            s, cs = _ssim_terms(x, y, rng)
            with np.errstate(invalid="ignore"):  # a negative term to a fractional power: NaN, refused below
                factors.append((s if level == len(MS_WEIGHTS) - 1 else cs) ** w)
            x, y = _halved(x), _halved(y)
        return np.prod(factors, axis=0).tolist()

    values = _per_slice(original, decoded, per_slice)
    return float(np.mean(values)) if all(math.isfinite(v) for v in values) else None
