"""Metrics of a compressed image, every one measured on the bytes a decoder reads, and their summary per codec."""

from __future__ import annotations

import time

import numpy as np

from medcomp.codecs.base import Codec
from medcomp.codecs.container import Container
from medcomp.codecs.registry import decode_container
from medcomp.data.image import Image
from medcomp.metrics import bits_per_pixel, compression_ratio, ms_ssim, psnr, ssim
from medcomp.target import Target


def evaluate(image: Image, container: Container, codec: Codec, encode_s: float, target: Target,
             label: str | None = None) -> tuple[dict, Image]:
    """Serialise ``container``, decode the bytes with ``codec``, compare with ``image``. Returns (row, decoded);
    the row is named ``label`` (default: the file's codec; run.py names its model's rows by ``model_name``)."""
    data = container.to_bytes()
    t0 = time.perf_counter()
    decoded = decode_container(Container.from_bytes(data), codec)
    decode_s = time.perf_counter() - t0
    row = {
        "codec": label or container.codec, "image": image.name, "shape": list(image.array.shape),
        "dtype": image.array.dtype.name, "original_bytes": image.nbytes, "file_bytes": len(data),
        "ratio_target": target.ratio_for(image) if target is not None else None, "ratio_actual": compression_ratio(image.nbytes, len(data)),
        "bpp": bits_per_pixel(len(data), image.array.size),
        "psnr": psnr(image.array, decoded.array), "ssim": ssim(image.array, decoded.array),
        "ms_ssim": ms_ssim(image.array, decoded.array) if image.array.ndim == 2 else None,
        "encode_s": encode_s, "decode_s": decode_s,
    }
    return row, decoded


def timed_encode(codec: Codec, image: Image, target: Target | None, bound: float | None = None) -> tuple[Container, float]:
    """(file, encode wall seconds): ``codec.encode`` at ``target``, or ``encode_bounded`` to a max-error ``bound``."""
    t0 = time.perf_counter()
    container = codec.encode(image, target) if bound is None else codec.encode_bounded(image, bound)
    return container, time.perf_counter() - t0


def encode_and_measure(codec: Codec, image: Image, target: Target | None, label: str | None = None,
                       bound: float | None = None) -> tuple[Container, dict, Image]:
    """The one encode-and-measure path of the CLI, the tasks and the benchmarks: (file, metrics row, decoded)."""
    container, encode_s = timed_encode(codec, image, target, bound)
    row, decoded = evaluate(image, container, codec, encode_s, target, label)
    return container, row, decoded


def aggregate(rows: list[dict]) -> list[dict]:
    """One line per codec: ratio from summed bytes, quality averaged over images, times summed."""
    out = []
    for codec in dict.fromkeys(r["codec"] for r in rows):
        rs = [r for r in rows if r["codec"] == codec]
        orig, file = sum(r["original_bytes"] for r in rs), sum(r["file_bytes"] for r in rs)
        n_pix = sum(int(np.prod(r["shape"])) for r in rs)
        out.append({
            "codec": codec, "images": len(rs),
            "ratio_target": float(np.mean([r["ratio_target"] for r in rs])),
            "ratio_actual": compression_ratio(orig, file), "bpp": bits_per_pixel(file, n_pix),
            "psnr": float(np.mean([r["psnr"] for r in rs])), "ssim": float(np.mean([r["ssim"] for r in rs])),
            "encode_s": float(sum(r["encode_s"] for r in rs)), "decode_s": float(sum(r["decode_s"] for r in rs)),
        })
    return out
