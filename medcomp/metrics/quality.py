"""Distortion metrics on the original stored units (DESIGN.md conventions)."""

from __future__ import annotations

import numpy as np
import torch


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """10·log10(R²/MSE) in float64, R = max − min of the *original*. Infinite for an exact match.

    Hand-written because torchmetrics' PSNR takes R from its arguments or a fixed value and runs in float32;
    the convention here needs float64 and R from the original only.
    """
    original = np.asarray(original, dtype=np.float64)
    decoded = np.asarray(decoded, dtype=np.float64)
    if original.shape != decoded.shape:
        raise ValueError(f"shape mismatch {original.shape} vs {decoded.shape}")
    data_range = original.max() - original.min()
    mse = np.mean((original - decoded) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim(original: np.ndarray, decoded: np.ndarray) -> float:
    """2-D SSIM (torchmetrics, Gaussian window 11, σ 1.5) with data_range R of the original;
    for volumes, the mean over axial slices (axis 0)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b, data_range = _axial_slices(original, decoded)
    return float(structural_similarity_index_measure(b, a, data_range=data_range, reduction="none").mean())


def ms_ssim(original: np.ndarray, decoded: np.ndarray) -> float | None:
    """Multi-scale SSIM (torchmetrics, 5 scales, Gaussian window 11) with data_range R of the original; volumes: the
    mean over axial slices. None when a slice is too small for five scales (under 161 px a side)."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    if min(np.shape(original)[-2:]) < 161:
        return None
    a, b, data_range = _axial_slices(original, decoded)
    return float(multiscale_structural_similarity_index_measure(b, a, data_range=data_range, reduction="none").mean())


def _axial_slices(original, decoded) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Both arrays as float64 (N, 1, H, W) batches of axial slices, and R of the original."""
    original = np.asarray(original, dtype=np.float64)
    decoded = np.asarray(decoded, dtype=np.float64)
    data_range = float(original.max() - original.min())
    if original.ndim == 2:
        original, decoded = original[None], decoded[None]
    return torch.from_numpy(original)[:, None], torch.from_numpy(decoded)[:, None], data_range
