"""Lossless reference: the stored voxels through zlib, what a general-purpose compressor makes of an image (the
rate target is not used; the ratio is what deflate reaches). It is also the "add a codec" example of docs/adding-a-codec.md."""

import zlib

import numpy as np

from medcomp.codecs.base import Codec, image_header
from medcomp.codecs.container import Container
from medcomp.errors import CorruptFileError


class Deflate(Codec):
    name, lossless, bounds_error = "deflate", True, True  # always exact: --lossless and any --max-error

    def __init__(self, level: int = 9):
        self.level = level

    def encode(self, image, target) -> Container:  # lossless: the target is not used
        self.check_input(image)
        voxels = zlib.compress(np.ascontiguousarray(image.array).tobytes(), self.level)
        return Container(self.name, image_header(image), {"voxels": voxels})

    def decode(self, container) -> np.ndarray:
        h = container.header
        size = int(np.prod(h["shape"])) * np.dtype(h["dtype"]).itemsize  # inflate no more than the header says
        inflate = zlib.decompressobj()
        voxels = inflate.decompress(container.sections["voxels"], size)
        if len(voxels) != size or not inflate.eof or inflate.unused_data:  # cut short, or more than the image
            raise CorruptFileError(f"corrupt .mcz: the deflate stream does not hold the header's {size} bytes")
        return np.frombuffer(bytearray(voxels), h["dtype"]).reshape(h["shape"])  # writable, like every decode

    def encode_bounded(self, image, max_error) -> Container:
        return self.encode(image, None)  # always exact

    def is_lossless(self, container) -> bool:
        return True
