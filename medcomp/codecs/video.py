"""Video codecs through PyAV: H.264 (x264, 10-bit gray) and HEVC (x265, 12-bit gray).

A volume is a sequence of frames along axis 0; a 2-D image is one frame. Frames are padded to a multiple of 8
and at least 64 pixels (edge-replicated, cropped after decoding: libx265 corrupts its heap on 12-bit gray frames
narrower than 64) and coded as a raw Annex-B stream: no MP4 box overhead in the file. SEI NAL units (the encoders'
version/options text, ~700 bytes for x264) are dropped: decoders do not need them. The knob is CRF (float), set to
meet the rate target on a sample of runs of frames and checked on the whole volume (``target.fit_by_sample``).
``--lossless``: x264 at QP 0 and x265's lossless mode (transform and quantisation bypassed) give back every sample of
an integer image that 10 (H.264) or 12 (HEVC) bits hold unshifted in scale.
"""

from __future__ import annotations

import fractions
import re

import numpy as np

from medcomp.codecs.base import Accepts, Codec, check_number, image_header
from medcomp.codecs.container import Container
from medcomp.codecs.mapping import from_unsigned, to_unsigned, to_unsigned_exactly
from medcomp.data.image import Image
from medcomp.errors import CorruptFileError
from medcomp.target import RATE_TOLERANCE, Target, WholeEncodes, fit_by_sample, fit_to_budget, spread

PAD, MIN_SIDE = 8, 64
SAMPLE_FROM, SAMPLE_RUN = 64, 8  # volumes of 64 frames and more: the rate searched on a run of 8 frames in 64 first
START_CODE = re.compile(b"\x00\x00\x01")


def _padded(n: int) -> int:
    return max(MIN_SIDE, -(-n // PAD) * PAD)


def drop_nal_units(stream: bytes, is_dropped) -> bytes:
    """Remove the NAL units whose header byte ``is_dropped`` flags from an Annex-B stream."""
    starts = [m.end() for m in START_CODE.finditer(stream)]
    kept = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(stream)
        nal = stream[start:end].rstrip(b"\x00") if i + 1 < len(starts) else stream[start:end]
        if nal and not is_dropped(nal[0]):
            kept.append(b"\x00\x00\x00\x01" + nal)
    return b"".join(kept)


class VideoCodec(Codec):
    encoder, decoder, pix_fmt, bits = "", "", "", 8
    accepts = Accepts(min_side=8)  # padded frames of 2×2–6×6 pixels: 28–45 dB at CRF 0 (HEVC)
    crf_lo, crf_hi = 0.0, 51.0
    lossless = True

    def __init__(self, preset: str = "medium"):
        """``preset``: the x264/x265 speed/quality preset (medium for everyday use; benchmarks compare at veryslow)."""
        self.preset = preset

    @staticmethod
    def is_sei(nal_header: int) -> bool:
        raise NotImplementedError

    def _options(self, crf: float | None) -> dict:
        """The encoder's options at ``crf``; None: lossless (x264 codes QP 0 losslessly, High 4:4:4 Predictive)."""
        rate = {"crf": f"{crf:.3f}"} if crf is not None else {"qp": "0"}
        return {**rate, "preset": self.preset, **({"threads": str(self.threads)} if self.threads else {})}

    def _encode_frames(self, frames: np.ndarray, crf: float | None) -> bytes:
        import av

        ctx = av.CodecContext.create(self.encoder, "w")
        ctx.height, ctx.width = frames.shape[1:]
        ctx.pix_fmt = self.pix_fmt
        ctx.time_base = fractions.Fraction(1, 25)
        ctx.options = self._options(crf)
        packets = []
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=self.pix_fmt)
            vf.pts = i
            packets += ctx.encode(vf)
        packets += ctx.encode(None)
        return drop_nal_units(b"".join(bytes(p) for p in packets), self.is_sei)

    def _framed(self, image: Image, exact: bool = False):
        """The padded frames and a function that codes them at a CRF (None: lossless) into a container; ``exact``:
        only an image the codec's bits hold unscaled (refused in one line otherwise)."""
        coded, mapping = (to_unsigned_exactly(image, self.bits, self.name) if exact
                          else to_unsigned(image.array, self.bits))
        frames = coded if coded.ndim == 3 else coded[None]
        h, w = frames.shape[1:]
        ph, pw = _padded(h) - h, _padded(w) - w
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw)), mode="edge")
        header = {**image_header(image), "mapping": mapping, "frames": int(frames.shape[0]), "coded_hw": [h + ph, w + pw]}

        def build(crf):
            stream = self._encode_frames(frames, crf)
            # the stream's length: an Annex-B stream cut short still decodes (the last frame concealed)
            knob = {"crf": crf} if crf is not None else {"crf": self.crf_lo, "lossless": True}
            return Container(self.name, {**header, **knob, "stream_bytes": len(stream)}, {"stream": stream})

        return frames, build

    def encode_at(self, image: Image, crf: float) -> Container:
        """One encode at ``crf``, no rate search (what a benchmark calls a plain encode)."""
        return self._framed(image)[1](crf)

    def encode(self, image: Image, target: Target) -> Container:
        self.check_input(image)
        frames, build = self._framed(image)
        budget = target.target_bytes(image)
        encodes = WholeEncodes(build, budget)
        knobs = {"lo": self.crf_lo, "hi": self.crf_hi, "increasing": False}
        if frames.shape[0] >= SAMPLE_FROM:
            # CRF searched on a few runs of consecutive frames (inter prediction needs neighbours), coded as one
            # sequence, then checked on the whole volume (target.fit_by_sample)
            sample = frames[spread(frames.shape[0], frames.shape[0] // SAMPLE_FROM, SAMPLE_RUN)]
            crf = fit_by_sample(encodes.size, encodes.counted(lambda c: len(self._encode_frames(sample, c))), budget,
                                share=len(sample) / frames.shape[0], **knobs)
        else:
            crf = fit_to_budget(encodes.size, budget, **knobs, iterations=16, tolerance=RATE_TOLERANCE)
        self.rate_search = encodes.report()
        return encodes.chosen(crf)

    def encode_bounded(self, image: Image, max_error: float) -> Container:
        """Lossless only (an error bound is not what CRF or QP controls)."""
        if max_error > 0:
            return super().encode_bounded(image, max_error)
        self.check_input(image)
        return self._framed(image, exact=True)[1](None)

    def check_params(self, header: dict) -> None:
        shape = header["shape"]
        check_number(header.get("crf"), "crf", self.crf_lo, self.crf_hi)
        check_number(header["mapping"].get("bits"), "mapping bits", self.bits, self.bits, integer=True)
        check_number(header.get("frames"), "frames", shape[0] if len(shape) == 3 else 1,
                     shape[0] if len(shape) == 3 else 1, integer=True)
        if header.get("coded_hw") != [_padded(shape[-2]), _padded(shape[-1])]:
            raise CorruptFileError(f".mcz header: coded frame size {header.get('coded_hw')!r} does not fit the image's "
                                   f"{shape[-2]}×{shape[-1]}")

    def decode(self, container: Container) -> np.ndarray:
        import av

        header = container.header
        self.check_params(header)
        if "stream_bytes" in header and header["stream_bytes"] != len(container.sections["stream"]):
            raise CorruptFileError(f"corrupt .mcz: the {self.name} stream is {len(container.sections['stream'])} "
                                   f"bytes, the header says {header['stream_bytes']!r} (cut or padded)")
        ctx = av.CodecContext.create(self.decoder, "r")
        ch, cw = header["coded_hw"]
        # FFmpeg refuses, before allocating, a frame larger than this (a 35 KB stream can claim gigabytes); the
        # decoders align frames to their coding blocks (16 for H.264, up to 64 for HEVC), hence the margin
        ctx.options = {"max_pixels": str((ch + 128) * (cw + 128))}
        frames = []
        try:
            for packet in ctx.parse(container.sections["stream"]) + ctx.parse(None):
                frames += ctx.decode(packet)
                if len(frames) > header["frames"]:
                    break
            frames += ctx.decode(None)
        except av.error.FFmpegError as exc:
            raise CorruptFileError(f"corrupt {self.name} stream: {exc}") from exc
        if len(frames) != header["frames"]:
            raise CorruptFileError(f"corrupt {self.name} stream: {len(frames)} frames decoded, {header['frames']} expected")
        out = []
        for f in frames:
            # Read the luma plane directly: to_ndarray(format="gray") would rescale 10/12-bit samples.
            plane = f.planes[0]
            row = np.frombuffer(plane, dtype=np.uint16).reshape(-1, plane.line_size // 2)
            out.append(row[:ch, :cw])
        coded = np.stack(out)
        shape = tuple(header["shape"])
        coded = coded[:, : shape[-2], : shape[-1]].reshape(shape)
        return from_unsigned(coded, header["mapping"], header["dtype"])


class H264(VideoCodec):
    name, encoder, decoder, pix_fmt, bits = "h264", "libx264", "h264", "gray10le", 10
    dicom_method = "ISO_14496_10"

    @staticmethod
    def is_sei(nal_header):
        return nal_header & 0x1F == 6


class HEVC(VideoCodec):
    name, encoder, decoder, pix_fmt, bits = "hevc", "libx265", "hevc", "gray12le", 12
    dicom_method = "ISO_23008_2"

    @staticmethod
    def is_sei(nal_header):
        return (nal_header >> 1) & 0x3F in (39, 40)

    def _options(self, crf):
        options = {"crf": f"{crf:.3f}", "preset": self.preset} if crf is not None else {"preset": self.preset}
        # x265 sizes its own thread pool (pools=N), one a core unless --threads says otherwise
        params = "log-level=error" + (f":pools={self.threads}" if self.threads else "") + (
            ":lossless=1" if crf is None else "")
        return {**options, "x265-params": params}
