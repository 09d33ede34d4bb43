from medcomp.metrics.quality import max_abs_error, ms_ssim, psnr, ssim
from medcomp.metrics.rate import bits_per_pixel, compression_ratio

__all__ = ["max_abs_error", "ms_ssim", "psnr", "ssim", "bits_per_pixel", "compression_ratio"]
