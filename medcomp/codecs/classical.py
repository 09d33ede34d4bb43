"""Still-image codecs from imagecodecs: JPEG (12-bit), JPEG 2000, JPEG XL and JPEG-LS (16-bit).

A volume is coded slice by slice along axis 0 with one shared quality knob, which bisection sets so the whole
``.mcz`` meets the rate target.
"""

from __future__ import annotations

import imagecodecs
import numpy as np

from medcomp.codecs.base import (
    Codec,
    image_header,
    join_planes,
    split_planes,
)
from medcomp.codecs.container import Container
from medcomp.codecs.mapping import from_unsigned, to_unsigned
from medcomp.data.image import Image
from medcomp.target import Target, fit_to_budget


class SliceCodec(Codec):
    """Shared machinery: intensity mapping, per-slice streams, knob search. Subclasses code one 2-D plane."""

    bits = 16
    knob_lo, knob_hi, increasing, integer = 0.0, 1.0, True, False

    def encode_plane(self, plane: np.ndarray, knob: float) -> bytes:
        raise NotImplementedError

    def decode_plane(self, data: bytes) -> np.ndarray:
        raise NotImplementedError

    def _container(self, image: Image, coded: np.ndarray, mapping: dict, knob: float) -> Container:
        planes = coded if coded.ndim == 3 else coded[None]
        streams = [self.encode_plane(np.ascontiguousarray(p), knob) for p in planes]
        header = {**image_header(image), "mapping": mapping, "knob": knob}
        return Container(self.name, header, join_planes(streams))

    def encode(self, image: Image, target: Target) -> Container:
        coded, mapping = to_unsigned(image.array, self.bits)
        knob = fit_to_budget(
            lambda k: len(self._container(image, coded, mapping, k).to_bytes()),
            target.target_bytes(image), self.knob_lo, self.knob_hi, increasing=self.increasing, integer=self.integer,
        )
        return self._container(image, coded, mapping, knob)

    def decode(self, container: Container) -> np.ndarray:
        header = container.header
        coded = np.stack([self.decode_plane(data) for data in split_planes(container)])
        shape = tuple(header["shape"])
        coded = coded.reshape(shape)
        return from_unsigned(coded, header["mapping"], header["dtype"])


class JPEG(SliceCodec):
    """Baseline-process JPEG with 12-bit samples (libjpeg-turbo); quality 1..100."""

    name, bits, dicom_method = "jpeg", 12, "ISO_10918_1"
    knob_lo, knob_hi, increasing, integer = 1, 100, True, True

    def encode_plane(self, plane, knob):
        return imagecodecs.jpeg8_encode(plane, level=int(knob), bitspersample=12)

    def decode_plane(self, data):
        return imagecodecs.jpeg8_decode(data)


class JPEG2000(SliceCodec):
    """OpenJPEG, irreversible 9/7 wavelet. imagecodecs' ``level`` is a target PSNR in dB, not a rate."""

    name, bits, dicom_method = "jpeg2000", 16, "ISO_15444_1"
    knob_lo, knob_hi, increasing = 5.0, 140.0, True

    def encode_plane(self, plane, knob):
        return imagecodecs.jpeg2k_encode(plane, level=float(knob), codecformat="j2k", reversible=False, numthreads=1)

    def decode_plane(self, data):
        return imagecodecs.jpeg2k_decode(data)


class JPEGXL(SliceCodec):
    """libjxl at 16 bits; the knob is the Butteraugli distance (larger = smaller file)."""

    name, bits, dicom_method = "jpegxl", 16, "ISO_18181_1"
    knob_lo, knob_hi, increasing = 0.01, 25.0, False

    def encode_plane(self, plane, knob):
        return imagecodecs.jpegxl_encode(plane, distance=float(knob), effort=7, numthreads=1)

    def decode_plane(self, data):
        return imagecodecs.jpegxl_decode(data)


class JPEGLS(SliceCodec):
    """CharLS near-lossless; the knob is NEAR (max absolute error in coded units). Lossless at NEAR=0, so it
    reaches only modest ratios: at a high target it returns its largest NEAR and reports the actual ratio."""

    name, bits, dicom_method = "jpegls", 16, "ISO_14495_1"
    knob_lo, knob_hi, increasing, integer = 0, 255, False, True

    def is_lossless(self, container):
        return int(container.header.get("knob", -1)) == 0 and float(container.header["mapping"]["scale"]) == 1.0

    def encode_plane(self, plane, knob):
        return imagecodecs.jpegls_encode(plane, level=int(knob))

    def decode_plane(self, data):
        return imagecodecs.jpegls_decode(data)
