"""Lossless reference: the stored voxels through zlib, what a general-purpose compressor makes of an image (the
rate target is not used; the ratio is what deflate reaches). It is also the README's "add a codec" example."""

import zlib

import numpy as np

from medcomp.codecs.base import Codec, image_header
from medcomp.codecs.container import Container


class Deflate(Codec):
    name = "deflate"

    def __init__(self, level: int = 9):
        self.level = level

    def encode(self, image, target) -> Container:  # lossless: the target is not used
        voxels = zlib.compress(np.ascontiguousarray(image.array).tobytes(), self.level)
        return Container(self.name, image_header(image), {"voxels": voxels})

    def decode(self, container) -> np.ndarray:
        h = container.header
        size = int(np.prod(h["shape"])) * np.dtype(h["dtype"]).itemsize  # inflate no more than the header says
        voxels = zlib.decompressobj().decompress(container.sections["voxels"], size)
        return np.frombuffer(bytearray(voxels), h["dtype"]).reshape(h["shape"])  # writable, like every decode

    def is_lossless(self, container) -> bool:
        return True
