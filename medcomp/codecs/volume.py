"""Error-bounded scientific volume codecs from imagecodecs: SPERR (3-D wavelets), SZ3 (prediction and
quantisation) and ZFP (transform blocks of 4³). They code the whole volume at once (a 2-D image as one plane), the
way the INR-compression literature compares with them, not slice by slice.

The stored values go in as float32 (exact for 8/16-bit data, and float32 images) or float64 (wider integers and
float64), and come back rounded and clipped into the stored dtype and the input's range. Rate control: SPERR and
ZFP have a bits-per-value mode (one pass, a few more where the output overshoots); SZ3's absolute error bound is
searched on a log scale, on slabs of a large volume first (``target.fit_by_sample``).
"""

from __future__ import annotations

import imagecodecs
import numpy as np

from medcomp.codecs.base import Accepts, Codec, check_number, image_header
from medcomp.codecs.container import Container
from medcomp.data.image import Image, restore_dtype
from medcomp.errors import CorruptFileError
from medcomp.target import RATE_TOLERANCE, Target, WholeEncodes, fit_by_sample, fit_to_budget, spread

SAMPLE_FROM, SAMPLE_RUN = 64, 16  # volumes of 64 slices and more: SZ3's bound searched on a slab of 16 in 64 first


def work_dtype(dtype: np.dtype) -> np.dtype:
    """float32 where it holds every stored value exactly (8/16-bit integers, float32), float64 otherwise."""
    return np.dtype(np.float32 if dtype.itemsize <= 2 or dtype == np.float32 else np.float64)


class VolumeCodec(Codec):
    """Shared machinery: float working copy, one stream for the whole image, a knob searched for the target.
    Subclasses code an array with ``encode_array(values, knob)`` and decode into ``out``."""

    # rate_knob: the knob is bits per value, set from the target in one pass (SPERR, ZFP); otherwise log2 of an
    # absolute error bound as a fraction of the input's range (SZ3: a larger bound makes a smaller file), bisected
    rate_knob = False
    knob_lo, knob_hi, increasing = -24.0, 0.0, False

    def encode_array(self, values: np.ndarray, knob: float, span: float) -> bytes:
        """``values`` coded at ``knob``; ``span``: their max − min, known once (an error bound is a fraction of it)."""
        raise NotImplementedError

    def decode_into(self, data: bytes, out: np.ndarray) -> None:
        """Decode ``data`` into ``out`` (in place)."""
        raise NotImplementedError

    def check_stream(self, data: bytes, shape: tuple[int, ...]) -> None:
        """What can be checked of the stream against the header's shape before decoding (SZ3: its dimensions)."""

    def _container(self, image: Image, values: np.ndarray, knob: float, lo: float, hi: float,
                   stream: bytes | None = None, **extra) -> Container:
        """The file of ``stream`` (default: ``encode_array`` at ``knob``); ``extra``: header keys of a bounded file."""
        if stream is None:
            stream = self.encode_array(values, knob, hi - lo)
        header = {**image_header(image), "knob": knob, "work": values.dtype.str, "range": [lo, hi],
                  "stream_bytes": len(stream), **extra}
        return Container(self.name, header, {"stream": stream})

    def encode_exact(self, values: np.ndarray) -> bytes:
        raise NotImplementedError

    def encode_within(self, values: np.ndarray, max_error: float) -> bytes:
        raise NotImplementedError

    def encode_bounded(self, image: Image, max_error: float) -> Container:
        """The library's own guarantee: a reversible mode (ZFP) or an absolute error bound (SZ3, ZFP, SPERR), in the
        float working type; the decode is rounded into the stored dtype, which keeps an integer bound."""
        if (max_error == 0 and not self.lossless) or (max_error > 0 and not self.bounds_error):
            return super().encode_bounded(image, max_error)
        self.check_input(image)
        values = np.ascontiguousarray(image.array, dtype=work_dtype(image.array.dtype))
        stream = self.encode_exact(values) if max_error == 0 else self.encode_within(values, float(max_error))
        lo, hi = float(image.array.min()), float(image.array.max())
        return self._container(image, values, self.knob_hi, lo, hi, stream,
                               **({"lossless": True} if max_error == 0 else {"max_error": max_error}))

    def encode(self, image: Image, target: Target) -> Container:
        self.check_input(image)
        values = np.ascontiguousarray(image.array, dtype=work_dtype(image.array.dtype))
        lo, hi = float(image.array.min()), float(image.array.max())
        budget = target.target_bytes(image)
        encodes = WholeEncodes(lambda k: self._container(image, values, k, lo, hi), budget)
        knob = self.choose_knob(encodes, values, lo, hi, budget)
        self.rate_search = encodes.report()
        return encodes.chosen(knob)

    def encode_at(self, image: Image, knob: float) -> Container:
        """One encode at ``knob``, no rate search (what a benchmark calls a plain encode)."""
        values = np.ascontiguousarray(image.array, dtype=work_dtype(image.array.dtype))
        return self._container(image, values, knob, float(image.array.min()), float(image.array.max()))

    def choose_knob(self, encodes: WholeEncodes, values: np.ndarray, lo: float, hi: float, budget: float) -> float:
        if self.rate_knob:
            return self._fill_rate(encodes, values.size, budget)
        knobs = {"lo": self.knob_lo, "hi": self.knob_hi, "increasing": self.increasing}
        if values.ndim == 3 and values.shape[0] >= SAMPLE_FROM:
            # the error bound searched on a few slabs of consecutive slices (the predictor works in 3-D), coded as
            # one volume, then checked on the whole one (target.fit_by_sample)
            sample = np.ascontiguousarray(values[spread(values.shape[0], values.shape[0] // SAMPLE_FROM, SAMPLE_RUN)])
            return fit_by_sample(encodes.size, encodes.counted(lambda k: len(self.encode_array(sample, k, hi - lo))),
                                 budget, share=len(sample) / values.shape[0], **knobs)
        return fit_to_budget(encodes.size, budget, **knobs, iterations=14, tolerance=RATE_TOLERANCE)

    def _fill_rate(self, encodes: WholeEncodes, n_values: int, budget: float) -> float:
        """The bits-per-value knob (SPERR, ZFP): first the budget less the smallest file, spread over the values
        (one pass when the library lands where asked); then, while the file is over the budget or more than
        RATE_TOLERANCE under it (SPERR's bpp mode writes up to 12 % less than asked on an 8-bit EM stack), scaled by
        what it missed by, or interpolated between the largest fitting and the smallest overshooting knob once both
        are known, halved where the file did not move (ZFP's rate comes in steps, ~8.5 KB apart on the abdomen CT,
        and has a floor). The largest fitting file is kept."""
        floor = encodes.size(self.knob_lo)
        if floor > budget:
            return self.knob_lo  # the smallest file the codec makes (its real ratio is reported)
        aim = budget * (1 - RATE_TOLERANCE / 2)
        fit_k, fit_s, over_k, over_s, seen = self.knob_lo, floor, None, None, {floor}
        knob = float(np.clip(8 * (budget - floor) / n_values, self.knob_lo, self.knob_hi))
        for _ in range(12):
            size = encodes.size(knob)
            if size <= budget:
                if size >= fit_s:
                    fit_k, fit_s = knob, size
                if size >= budget * (1 - RATE_TOLERANCE) or knob >= self.knob_hi:
                    break
            elif over_k is None or knob < over_k:
                over_k, over_s = knob, size
            repeated = size in seen  # the knob moved and the file did not: ZFP's rate steps
            seen.add(size)
            if over_k is None:
                if repeated:
                    break
                knob = float(min(self.knob_hi, knob * (aim - floor) / max(size - floor, 1)))
            else:  # inside the bracket: linear in bytes (bits per value), halved where the file did not move
                share = 0.5 if repeated else float(np.clip((aim - fit_s) / max(over_s - fit_s, 1), 0.05, 0.95))
                knob = fit_k + (over_k - fit_k) * share
            if over_k is not None and over_k - fit_k < 1e-6 * over_k:
                break
        return fit_k

    def decode(self, container: Container) -> np.ndarray:
        h = container.header
        check_number(h.get("knob"), f"{self.name} knob", self.knob_lo, self.knob_hi)
        work = h.get("work")
        if work not in ("<f4", "<f8"):
            raise CorruptFileError(f".mcz header: {self.name} working type {work!r} is not <f4 or <f8")
        rng = h.get("range")
        if not isinstance(rng, list) or len(rng) != 2:
            raise CorruptFileError(f".mcz header: {self.name} range {rng!r} is not [low, high]")
        lo = check_number(rng[0], "range low", -1.8e308, 1.8e308)
        hi = check_number(rng[1], "range high", lo, 1.8e308)
        stream = container.sections["stream"]
        if h.get("stream_bytes") != len(stream):
            raise CorruptFileError(f"corrupt .mcz: the {self.name} stream is {len(stream)} bytes, the header says "
                                   f"{h.get('stream_bytes')!r} (cut or padded)")
        # decoded into an array of the header's shape (the library cannot allocate what its own stream claims), in a
        # forked child: SPERR's decoder aborts and SZ3's segfaults on some damaged streams (found by the fuzz test)
        shape = tuple(h["shape"])
        self.check_stream(stream, shape)
        out = in_child_process(lambda o: self.decode_into(stream, o), shape, np.dtype(work))
        if not np.all(np.isfinite(out)):
            raise CorruptFileError(f"corrupt .mcz: the {self.name} stream decodes to NaN or infinite values")
        return restore_dtype(np.clip(out, lo, hi, out=out), h["dtype"])  # clipped in place: one working copy


def _error_bound(knob: float, span: float) -> float:
    return float(np.exp2(knob)) * (span if span > 0 else 1.0)


SPERR_CHUNK_FROM, SPERR_CHUNK = 1 << 25, (64, 512, 512)


def sperr_chunks(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """SPERR's chunks for a volume of ``shape``: the whole volume up to 2^25 voxels, chunks of at most 64×512×512
    above. The library holds a chunk as float64 and its wavelet buffers beside it (≈ 20 bytes a voxel): on the
    300×512×512 CT one chunk peaked at 2.09 GB in the encoder and 2.36 in the decoder, 64-slice chunks at 1.00 and
    1.52 (and 61.2 dB instead of 61.0 at CR 10: each chunk gets the same bits a voxel)."""
    if len(shape) != 3 or int(np.prod(shape)) <= SPERR_CHUNK_FROM:
        return None
    return tuple(min(n, c) for n, c in zip(shape, SPERR_CHUNK))


class SPERR(VolumeCodec):
    """SPERR (Li, Lindstrom, Clyne 2023): 3-D CDF 9/7 wavelets and SPECK coding, in its bits-per-value mode."""

    name, dicom_method = "sperr", "MEDCOMP_SPERR"
    rate_knob, knob_lo, knob_hi = True, 0.001, 64.0
    bounds_error = True

    def encode_within(self, values, max_error):
        return imagecodecs.sperr_encode(values, max_error, "pwe", chunks=sperr_chunks(values.shape), numthreads=1)

    def encode_array(self, values, knob, span):
        return imagecodecs.sperr_encode(values, float(knob), "bpp", chunks=sperr_chunks(values.shape), numthreads=1)

    def decode_into(self, data, out):
        imagecodecs.sperr_decode(data, out=out, numthreads=1)


class SZ3(VolumeCodec):
    """SZ3 (Liang et al. 2022): interpolation prediction and error-bounded quantisation. Knob: log2 of the absolute
    error bound as a fraction of the input's range."""

    name, dicom_method = "sz3", "MEDCOMP_SZ3"
    bounds_error = True

    def encode_within(self, values, max_error):
        return imagecodecs.sz3_encode(values, "abs", max_error)

    def encode_array(self, values, knob, span):
        return imagecodecs.sz3_encode(values, "abs", _error_bound(knob, span))

    def check_stream(self, data, shape):
        # SZ3 decodes a stream into any shape it is given: its own dimensions must be the header's
        dims = sz3_dims(data)
        if dims != shape:
            raise CorruptFileError(f"corrupt .mcz: the sz3 stream is {'×'.join(map(str, dims))}, the header's image "
                                   f"{'×'.join(map(str, shape))}")

    def decode_into(self, data, out):
        out[...] = imagecodecs.sz3_decode(data, out.shape, out.dtype)


def in_child_process(decode, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``decode(out)`` in a forked child, ``out`` an array of ``shape`` and ``dtype`` in shared memory, which is
    returned (not copied: the volume is held once): a decoder that aborts or segfaults on a damaged stream (SPERR,
    SZ3) cannot be caught by any exception handler. A child that does not exit cleanly is a corrupt file; the parent
    is never at risk. A fork costs milliseconds."""
    import mmap
    import os

    count = int(np.prod(shape))
    shared = mmap.mmap(-1, max(count * np.dtype(dtype).itemsize, 1))  # anonymous, MAP_SHARED: the child writes here
    out = np.frombuffer(shared, dtype=dtype, count=count).reshape(shape)
    pid = os.fork()
    if pid == 0:  # the child: decode, and leave without running any of the parent's cleanup
        code = 1
        try:
            decode(out)
            code = 0
        finally:
            os._exit(code)
    status = _wait(pid, CHILD_TIMEOUT_S)
    if status is None:
        raise CorruptFileError(f"corrupt .mcz: the decoder did not finish in {CHILD_TIMEOUT_S} s")
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        raise CorruptFileError(f"corrupt .mcz: the stream does not decode (the decoder failed: {how})")
    return out


SZ3_MAGIC = bytes.fromhex("10f342")  # bytes 1–3 of every stream seen (byte 0 varies with the data)


def sz3_dims(data: bytes) -> tuple[int, ...]:
    """The dimensions an SZ3 stream (imagecodecs 2026.1.14's SZ3) was encoded with: after the magic and version,
    byte 9 is their count and byte 10 their bit width (read off streams of known shapes), then the dimensions bit-packed least significant bit first.
    Hand-written: the library has no call that reads them."""
    if len(data) < 11 or data[1:4] != SZ3_MAGIC:
        raise CorruptFileError("corrupt .mcz: not an SZ3 stream this medcomp reads")
    n, width = data[9], data[10]
    if not 1 <= n <= 4 or not 1 <= width <= 64 or len(data) < 11 + (n * width + 7) // 8:
        raise CorruptFileError("corrupt .mcz: the sz3 stream's dimensions are not readable")
    bits = int.from_bytes(data[11 : 11 + (n * width + 7) // 8], "little")
    return tuple((bits >> (i * width)) & ((1 << width) - 1) for i in range(n))


class ZFP(VolumeCodec):
    """ZFP (Lindstrom 2014): decorrelating transform of 4³ blocks, embedded coding, in its fixed-rate mode (bits per
    value; its floor is about 0.19 bits a value, CR ≈ 160 on int32)."""

    name, dicom_method = "zfp", "MEDCOMP_ZFP"
    rate_knob, knob_lo, knob_hi = True, 0.01, 64.0
    # volumes only: on a 2-D image its 4×4 blocks at a useful rate are poor (a 512² uint8 radiograph at 1 bit a value:
    # max error 160 of 255; below 0.57 bits it decodes to zeros)
    accepts = Accepts(ndims=(3,))
    lossless = bounds_error = True

    def encode_exact(self, values):
        return imagecodecs.zfp_encode(values, mode="reversible", numthreads=1)

    def encode_within(self, values, max_error):
        return imagecodecs.zfp_encode(values, max_error, mode="accuracy", numthreads=1)

    def encode_array(self, values, knob, span):
        return imagecodecs.zfp_encode(values, float(knob), mode="rate", numthreads=1)

    def decode_into(self, data, out):
        imagecodecs.zfp_decode(data, out=out, numthreads=1)


CHILD_TIMEOUT_S = 600  # a 300×512×512 volume decodes in seconds; a child stuck on a damaged stream is not waited for


def _wait(pid: int, timeout_s: float) -> int | None:
    """The child's exit status, or None (and the child killed) after ``timeout_s``: a decoder looping on a damaged
    stream, or a lock the fork copied held, must not hang the command."""
    import os
    import signal
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.002)
