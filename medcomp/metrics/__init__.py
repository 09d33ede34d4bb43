from medcomp.metrics.quality import ms_ssim, psnr, ssim
from medcomp.metrics.rate import bits_per_pixel, compression_ratio

__all__ = ["ms_ssim", "psnr", "ssim", "bits_per_pixel", "compression_ratio"]
