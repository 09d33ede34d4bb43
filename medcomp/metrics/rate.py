"""Rate from the bytes of the file, never from a likelihood (docs/command-line.md, Conventions)."""

from __future__ import annotations


def compression_ratio(original_bytes: int, file_bytes: int) -> float:
    return float(original_bytes) / float(file_bytes)


def bits_per_pixel(file_bytes: int, n_pixels: int) -> float:
    return 8.0 * float(file_bytes) / float(n_pixels)
