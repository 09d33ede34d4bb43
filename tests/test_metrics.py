import math

import numpy as np
import pytest

from medcomp.metrics import bits_per_pixel, compression_ratio, psnr, ssim


def test_psnr_uses_range_of_original_in_stored_units():
    original = np.array([[-1000, 0], [500, 1000]], dtype=np.int16)  # R = 2000
    decoded = original + 10  # MSE = 100
    assert psnr(original, decoded) == pytest.approx(10 * math.log10(2000**2 / 100))


def test_psnr_exact_match_is_infinite():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert psnr(a, a.copy()) == math.inf


def test_psnr_is_float64_for_16_bit_extremes():
    a = np.array([0, 65535], dtype=np.uint16)
    b = np.array([1, 65534], dtype=np.uint16)
    assert psnr(a, b) == pytest.approx(20 * math.log10(65535))


def test_ssim_identity_and_degradation():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4096, (64, 64)).astype(np.uint16)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-9)
    noisy = a + rng.normal(0, 200, a.shape)
    assert 0.0 < ssim(a, noisy) < 0.99


def test_ssim_map_equals_scikit_image_away_from_the_border():
    """An independent reference: scikit-image's SSIM (Gaussian σ 1.5, population covariance, as Wang et al.). The two
    pad the border differently (numpy's reflect vs scipy's), so the maps are compared where no padding is read."""
    from skimage.metrics import structural_similarity

    from medcomp.metrics.quality import _ssim_maps

    rng = np.random.default_rng(2)
    a = rng.integers(0, 4096, (48, 56)).astype(np.float64)
    b = a + rng.normal(0, 300, a.shape)
    r = float(a.max() - a.min())
    _, ref = structural_similarity(a, b, data_range=r, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                   full=True)
    full, _, pad = _ssim_maps(a[None], b[None], r)
    assert pad == 5
    np.testing.assert_allclose(full[0][pad:-pad, pad:-pad], ref[pad:-pad, pad:-pad], rtol=1e-9, atol=1e-12)
    assert 0.3 < float(full.mean()) < 0.99


def test_ssim_volume_is_mean_over_axial_slices():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 1000, (3, 32, 32)).astype(np.int16)
    b = a.copy()
    b[1] = b[1] + rng.normal(0, 100, (32, 32)).astype(np.int16)
    per_slice = []
    for i in range(3):
        # data range of the whole original volume, as for the volume metric
        import torch
        from torchmetrics.functional.image import structural_similarity_index_measure

        x = torch.from_numpy(a[i].astype(np.float64))[None, None]
        y = torch.from_numpy(b[i].astype(np.float64))[None, None]
        per_slice.append(float(structural_similarity_index_measure(y, x, data_range=float(a.max() - a.min()))))
    assert ssim(a, b) == pytest.approx(np.mean(per_slice))
    assert per_slice[0] == pytest.approx(1.0) and per_slice[1] < 0.99


def test_ratio_and_bpp_from_bytes():
    assert compression_ratio(512 * 512 * 2, 4096) == 128.0
    assert bits_per_pixel(4096, 512 * 512) == 0.125


def test_ssim_and_ms_ssim_equal_torchmetrics():
    """The numpy SSIM and MS-SSIM (no torch in a classical codec's process) give torchmetrics' numbers, on an odd-sized
    slice (MS-SSIM's pooling drops the last row and column) and a volume (mean over axial slices)."""
    import torch
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        structural_similarity_index_measure,
    )

    from medcomp.metrics import ms_ssim

    rng = np.random.default_rng(3)
    a = np.cumsum(rng.normal(0, 40, (2, 181, 187)), axis=2).astype(np.float32)
    b = a + rng.normal(0, 25, a.shape).astype(np.float32)
    r = float(a.max() - a.min())
    x, y = (torch.from_numpy(v.astype(np.float64))[:, None] for v in (a, b))
    ref_ms = [float(multiscale_structural_similarity_index_measure(y[k : k + 1], x[k : k + 1], data_range=r))
              for k in range(2)]
    ref_ssim = [float(structural_similarity_index_measure(y[k : k + 1], x[k : k + 1], data_range=r)) for k in range(2)]
    # float64 sums in another order (conv2d vs correlate1d): equal to 1e-10
    assert ms_ssim(a, b) == pytest.approx(np.mean(ref_ms), rel=1e-9)
    assert ssim(a, b) == pytest.approx(np.mean(ref_ssim), rel=1e-9)
    assert 0.2 < ms_ssim(a, b) < 0.999
