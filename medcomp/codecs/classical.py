"""Still-image codecs from imagecodecs: JPEG (12-bit), JPEG 2000, JPEG XL and JPEG-LS (16-bit).

A volume is coded slice by slice along axis 0, the slices on every core, with one shared quality knob set so the
whole ``.mcz`` meets the rate target: searched on a sample of slices, then checked (and if need be corrected) on
the whole volume, a few whole encodes in all (``target.fit_by_sample``).
"""

from __future__ import annotations

import imagecodecs
import numpy as np

from medcomp.codecs.base import (
    Accepts,
    Codec,
    check_number,
    check_planes,
    image_header,
    join_planes,
    split_planes,
)
from medcomp.codecs.container import Container
from medcomp.codecs.mapping import from_unsigned, to_unsigned, to_unsigned_exactly
from medcomp.data.image import Image
from medcomp.errors import CorruptFileError
from medcomp.target import RATE_TOLERANCE, Target, WholeEncodes, fit_by_sample, fit_to_budget, spread
from medcomp.utils.parallel import thread_map

SAMPLE_FROM, SAMPLE_EVERY = 48, 16  # volumes of 48 slices and more: the rate searched on every 16th slice first


class SliceCodec(Codec):
    """Shared machinery: intensity mapping, per-slice streams, knob search. Subclasses code one 2-D plane."""

    bits = 16
    knob_lo, knob_hi, increasing, integer = 0.0, 1.0, True, False

    def encode_plane(self, plane: np.ndarray, knob: float) -> bytes:
        raise NotImplementedError

    def decode_plane(self, data: bytes) -> np.ndarray:
        raise NotImplementedError

    def plane_size(self, data: bytes) -> tuple[int, int] | None:
        """(rows, columns) that a plane's codestream header claims, without decoding; None where not parsed."""
        return None

    def _streams(self, planes: np.ndarray, code) -> list[bytes]:
        """``code`` of every plane, the planes coded on ``threads`` threads (the libraries let go of the GIL)."""
        return thread_map(lambda p: code(np.ascontiguousarray(p)), list(planes), self.threads)

    def _container(self, image: Image, coded: np.ndarray, mapping: dict, knob: float) -> Container:
        planes = coded if coded.ndim == 3 else coded[None]
        streams = self._streams(planes, lambda p: self.encode_plane(p, knob))
        header = {**image_header(image), "mapping": mapping, "knob": knob}
        return Container(self.name, header, join_planes(streams))

    def encode(self, image: Image, target: Target) -> Container:
        self.check_input(image)
        coded, mapping = to_unsigned(image.array, self.bits)
        budget = target.target_bytes(image)
        encodes = WholeEncodes(lambda k: self._container(image, coded, mapping, k), budget)
        knobs = {"lo": self.knob_lo, "hi": self.knob_hi, "increasing": self.increasing, "integer": self.integer}
        if coded.ndim == 3 and coded.shape[0] >= SAMPLE_FROM:
            # the knob searched on every SAMPLE_EVERY-th slice, then checked on the whole volume (target.py)
            sample = coded[spread(coded.shape[0], coded.shape[0] // SAMPLE_EVERY)]
            knob = fit_by_sample(encodes.size, encodes.counted(
                lambda k: sum(map(len, self._streams(sample, lambda p: self.encode_plane(p, k))))),
                budget, share=len(sample) / coded.shape[0], **knobs)
        else:
            knob = fit_to_budget(encodes.size, budget, **knobs, tolerance=RATE_TOLERANCE)
        self.rate_search = encodes.report()
        return encodes.chosen(knob)

    def encode_at(self, image: Image, knob: float) -> Container:
        """One encode at ``knob``, no rate search (what a benchmark calls a plain encode)."""
        coded, mapping = to_unsigned(image.array, self.bits)
        return self._container(image, coded, mapping, knob)

    def encode_plane_lossless(self, plane: np.ndarray) -> bytes:
        raise NotImplementedError

    def encode_bounded(self, image: Image, max_error: float) -> Container:
        """Bit-exact (the reversible mode) or, for JPEG-LS, near-lossless with NEAR = ⌊max_error⌋: only for integer
        images whose range the codec's bits hold unscaled (a scaled or float image cannot come back exactly)."""
        if max_error > 0 and not self.bounds_error:
            return super().encode_bounded(image, max_error)
        if max_error == 0 and not self.lossless:
            return super().encode_bounded(image, max_error)
        self.check_input(image)
        coded, mapping = to_unsigned_exactly(image, self.bits, self.name, max_error)
        if max_error == 0 and not self.bounds_error:  # the reversible mode (JPEG-LS: NEAR = 0, below)
            streams = self._streams(coded if coded.ndim == 3 else coded[None], self.encode_plane_lossless)
            header = {**image_header(image), "mapping": mapping, "knob": self.knob_hi, "lossless": True}
            return Container(self.name, header, join_planes(streams))
        return self._container(image, coded, mapping, min(int(max_error), int(self.knob_hi)))

    def decode(self, container: Container) -> np.ndarray:
        header = container.header
        check_number(header.get("knob"), f"{self.name} quality", self.knob_lo, self.knob_hi, self.integer)
        check_number(header["mapping"].get("bits"), "mapping bits", self.bits, self.bits, integer=True)
        hw = tuple(header["shape"][-2:])
        planes = []
        for data in split_planes(container):
            # the size the codestream claims, read before the decoder allocates it (a 2 KB stream can claim GBs)
            claimed = self.plane_size(data)
            if claimed is not None and claimed != hw:
                raise CorruptFileError(f"corrupt .mcz: a {self.name} stream is {claimed[0]}×{claimed[1]}, the header's "
                                       f"slices {hw[0]}×{hw[1]}")
            planes.append(self.decode_plane(data))
        check_planes(planes, header["shape"])  # never a reshape of planes of another size
        return from_unsigned(np.stack(planes).reshape(header["shape"]), header["mapping"], header["dtype"])


class JPEG(SliceCodec):
    """Baseline-process JPEG with 12-bit samples (libjpeg-turbo); quality 1..100."""

    name, bits, dicom_method = "jpeg", 12, "ISO_10918_1"
    knob_lo, knob_hi, increasing, integer = 1, 100, True, True

    def encode_plane(self, plane, knob):
        return imagecodecs.jpeg8_encode(plane, level=int(knob), bitspersample=12)

    def plane_size(self, data):
        return jpeg_frame_size(data)

    def decode_plane(self, data):
        if not data.endswith(b"\xff\xd9"):  # libjpeg fills a cut stream with grey and says nothing
            raise CorruptFileError("corrupt .mcz: a JPEG stream has no end-of-image marker (cut short)")
        return imagecodecs.jpeg8_decode(data)


class JPEG2000(SliceCodec):
    """OpenJPEG, irreversible 9/7 wavelet. imagecodecs' ``level`` is a target PSNR in dB, not a rate."""

    name, bits, dicom_method = "jpeg2000", 16, "ISO_15444_1"
    lossless = True
    accepts = Accepts(min_side=4)  # the 9/7 wavelet on 2×2 slices: 31 dB at its best quality
    knob_lo, knob_hi, increasing = 5.0, 140.0, True

    def encode_plane(self, plane, knob):
        return imagecodecs.jpeg2k_encode(plane, level=float(knob), codecformat="j2k", reversible=False, numthreads=1)

    def plane_size(self, data):
        # SOC (FF4F), then SIZ (FF51): Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz (ISO 15444-1 A.5.1)
        if len(data) < 24 or data[:4] != b"\xff\x4f\xff\x51":
            raise CorruptFileError("corrupt .mcz: a JPEG 2000 stream does not start with SOC and SIZ")
        xsiz, ysiz, xo, yo = (int.from_bytes(data[i : i + 4], "big") for i in (8, 12, 16, 20))
        return ysiz - yo, xsiz - xo

    def encode_plane_lossless(self, plane):
        return imagecodecs.jpeg2k_encode(plane, level=0, codecformat="j2k", reversible=True, numthreads=1)

    def decode_plane(self, data):
        return imagecodecs.jpeg2k_decode(data)


class JPEGXL(SliceCodec):
    """libjxl at 16 bits; the knob is the Butteraugli distance (larger = smaller file)."""

    name, bits, dicom_method = "jpegxl", 16, "ISO_18181_1"
    lossless = True
    knob_lo, knob_hi, increasing = 0.01, 25.0, False

    def encode_plane(self, plane, knob):
        return imagecodecs.jpegxl_encode(plane, distance=float(knob), effort=7, numthreads=1)

    def encode_plane_lossless(self, plane):
        return imagecodecs.jpegxl_encode(plane, lossless=True, effort=7, numthreads=1)

    def decode_plane(self, data):
        return imagecodecs.jpegxl_decode(data)


class JPEGLS(SliceCodec):
    """CharLS near-lossless; the knob is NEAR (max absolute error in coded units). Lossless at NEAR=0, so it
    reaches only modest ratios: at a high target it returns its largest NEAR and reports the actual ratio."""

    name, bits, dicom_method = "jpegls", 16, "ISO_14495_1"
    lossless = bounds_error = True  # NEAR = 0, and NEAR = the bound
    knob_lo, knob_hi, increasing, integer = 0, 255, False, True

    def is_lossless(self, container):
        return container.header.get("knob") == 0 and container.header["mapping"].get("scale") == 1.0

    def encode_plane_lossless(self, plane):
        return imagecodecs.jpegls_encode(plane, level=0)

    def encode_plane(self, plane, knob):
        return imagecodecs.jpegls_encode(plane, level=int(knob))

    def plane_size(self, data):
        return jpeg_frame_size(data)

    def decode_plane(self, data):
        return imagecodecs.jpegls_decode(data)


# Start-of-frame markers of ISO 10918-1 (B.1.1.3; C4, C8 and CC are other segments) and JPEG-LS's SOF55 (F7).
SOF_MARKERS = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}


def jpeg_frame_size(data: bytes) -> tuple[int, int]:
    """(rows, columns) of a JPEG or JPEG-LS stream's frame header, walking its marker segments; hand-written because
    the decoders allocate what the header says before they look any further."""
    if data[:2] != b"\xff\xd8":
        raise CorruptFileError("corrupt .mcz: a JPEG stream does not start with SOI")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in SOF_MARKERS and pos + 9 <= len(data):
            return int.from_bytes(data[pos + 5 : pos + 7], "big"), int.from_bytes(data[pos + 7 : pos + 9], "big")
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            break
        pos += 2 + length
    raise CorruptFileError("corrupt .mcz: a JPEG stream has no frame header")


class HTJ2K(SliceCodec):
    """High-Throughput JPEG 2000 (ISO/IEC 15444-15, OpenJPH through imagecodecs), 16-bit: the block coder PACS and
    viewers are moving to (DICOM transfer syntaxes 1.2.840.10008.1.2.4.201–203). The knob is log10 of OpenJPH's
    quantisation step (larger = smaller file)."""

    name, bits, dicom_method = "htj2k", 16, "ISO_15444_15"
    lossless = True
    accepts = Accepts(min_side=4)
    knob_lo, knob_hi, increasing = -6.0, 0.0, False

    def encode_plane(self, plane, knob):
        return imagecodecs.htj2k_encode(plane, level=float(10.0**knob))

    def encode_plane_lossless(self, plane):
        return imagecodecs.htj2k_encode(plane, reversible=True)

    def plane_size(self, data):
        return JPEG2000.plane_size(self, data)  # the same SOC + SIZ main header (15444-15 keeps part 1's)

    def decode_plane(self, data):
        if not data.endswith(b"\xff\xd9"):  # OpenJPH decodes a codestream cut short without a word
            raise CorruptFileError("corrupt .mcz: an HTJ2K codestream has no end-of-codestream marker (cut short)")
        return imagecodecs.htj2k_decode(data)
