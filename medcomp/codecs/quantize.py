"""Uniform per-tensor quantisation of network weights, and the packing of integer symbols into bytes."""

from __future__ import annotations

import struct

import numpy as np

from medcomp.codecs.entropy import (
    MAX_ALPHABET,
    decode_symbols,
    decode_uniform,
    encode_symbols,
    encode_uniform,
    min_encoded_size,
    uniform_size_estimate,
)
from medcomp.errors import CorruptFileError, MedcompError


def top_for_bits(bits: int) -> int:
    """Largest magnitude of a symmetric ``bits``-bit integer: 2^(bits−1) − 1."""
    return 2 ** (bits - 1) - 1


def quantize(tensors: list[np.ndarray], top: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-tensor scale: ints in [−top, top] (any integer top, not only 2^(bits−1)−1, so that a file can be
    filled to its byte target). Returns (all ints, float32 scales)."""
    if not all(np.isfinite(t).all() for t in tensors):  # NaN would become int64's minimum and a corrupt file
        raise MedcompError("the fitted network's weights are not finite (the fit diverged); try a lower "
                           "learning rate (-o model.lr=...) or fewer steps")
    scales = np.array([max(float(np.abs(t).max()), 1e-12) / top for t in tensors], dtype=np.float32)
    ints = [np.clip(np.rint(t.astype(np.float64) / s), -top, top).astype(np.int64).ravel()
            for t, s in zip(tensors, scales)]
    return np.concatenate(ints), scales


def dequantize(ints: np.ndarray, scales: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The inverse of :func:`quantize`; a section cut short or padded (one scale a tensor, every integer used
    exactly once) is a corrupt file, not a network with some weights missing."""
    if len(scales) != len(shapes):
        raise CorruptFileError(f"corrupt .mcz: {len(scales)} weight scales for {len(shapes)} tensors")
    if not np.all(np.isfinite(scales)):
        raise CorruptFileError("corrupt .mcz: a weight scale is not finite")
    if ints.size != sum(int(np.prod(s)) for s in shapes):
        raise CorruptFileError(f"corrupt .mcz: {ints.size} weights for a network of "
                               f"{sum(int(np.prod(s)) for s in shapes)}")
    out, pos = [], 0
    for shape, s in zip(shapes, scales):
        n = int(np.prod(shape))
        if pos + n > ints.size:
            raise CorruptFileError("corrupt .mcz: fewer weights than the header's network needs")
        out.append((ints[pos : pos + n].astype(np.float32) * np.float32(s)).reshape(shape))
        pos += n
    return out


RAW, RANS, FLAT = 0, 1, 2


def pack_symbols(symbols: np.ndarray) -> bytes:
    """The smallest of: fixed-width bit packing, rANS with a frequency table (small sections can't afford one), and
    rANS under a flat distribution (no table, log2(levels) bits a symbol rather than whole bits)."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    raw = bytes([RAW]) + _bitpack(symbols)
    alphabet = int(symbols.max()) - int(symbols.min()) + 1 if symbols.size else 0
    candidates = [raw]
    # Skip building a frequency table that cannot win: rANS can't code the alphabet, or its header and table alone
    # are no smaller than the packed bits (the choice is the same as encoding both and comparing).
    if alphabet <= MAX_ALPHABET and 1 + min_encoded_size(alphabet) < len(raw):
        candidates.append(bytes([RANS]) + encode_symbols(symbols))
    if 2 <= alphabet <= MAX_ALPHABET and 1 + uniform_size_estimate(alphabet, symbols.size) < len(raw):
        candidates.append(bytes([FLAT]) + encode_uniform(symbols))
    return min(candidates, key=len)  # the first of equals: files whose choice is unchanged keep their bytes


def unpack_symbols(data: bytes) -> np.ndarray:
    if not data:
        raise CorruptFileError("corrupt .mcz: empty symbol section")
    if data[0] == RANS:
        return decode_symbols(data[1:])
    if data[0] == RAW:
        return _bitunpack(data[1:])
    if data[0] == FLAT:
        return decode_uniform(data[1:])
    raise CorruptFileError(f"corrupt .mcz: unknown symbol packing {data[0]}")


BIT_RUN = 1 << 16  # symbols bit-packed at a time


def _bitpack(symbols: np.ndarray) -> bytes:
    lo = int(symbols.min()) if symbols.size else 0
    span = int(symbols.max()) - lo if symbols.size else 0
    bits = max(1, span.bit_length())
    shifted = (symbols - lo).astype(np.uint64)
    # each symbol's bits, least significant first, packed MSB-first into bytes; a run of BIT_RUN symbols (a multiple
    # of 8, so every run ends on a byte) at a time: the (symbols × bits) uint64 array whole was 64 bytes a bit
    # (≈ 2 GB for the 15 M weights of a 300-slice CT's SIREN file)
    shifts = np.arange(bits, dtype=np.uint64)
    packed = [np.packbits(((shifted[i : i + BIT_RUN, None] >> shifts) & 1).astype(np.uint8).ravel())
              for i in range(0, symbols.size, BIT_RUN)]
    return struct.pack("<iBI", lo, bits, symbols.size) + b"".join(p.tobytes() for p in packed)


def _bitunpack(data: bytes) -> np.ndarray:
    if len(data) < 9:
        raise CorruptFileError("corrupt .mcz: packed section too short")
    lo, bits, n = struct.unpack_from("<iBI", data, 0)
    if not 1 <= bits <= 63 or (n * bits + 7) // 8 != len(data) - 9:
        raise CorruptFileError("corrupt .mcz: packed section size does not match its header")
    packed = np.frombuffer(data, dtype=np.uint8, offset=9)
    out = np.empty(n, dtype=np.int64)
    shifts = np.arange(bits, dtype=np.int64)
    step = BIT_RUN * bits // 8  # bytes of a run of BIT_RUN symbols
    for k, i in enumerate(range(0, n, BIT_RUN)):
        m = min(BIT_RUN, n - i)
        flat = np.unpackbits(packed[k * step : k * step + step])[: m * bits].reshape(m, bits).astype(np.int64)
        out[i : i + m] = (flat << shifts).sum(axis=1) + lo
    return out
