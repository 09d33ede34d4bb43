from medcomp.metrics.quality import psnr, ssim
from medcomp.metrics.rate import bits_per_pixel, compression_ratio

__all__ = ["psnr", "ssim", "bits_per_pixel", "compression_ratio"]
