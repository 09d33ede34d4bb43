"""Entropy coding of integer symbols (quantised weights, codebook indices) with CompressAI's rANS coder.

CompressAI's entropy *models* learn a density for latents; quantised INR weights have no learned density, so the
model here is the empirical histogram, quantised to a 16-bit CDF exactly as CompressAI's ``pmf_to_quantized_cdf``
does it, and stored in the stream (LEB128 varints), so the decoder rebuilds the identical CDF. All integer arithmetic:
decoding is exact on any machine.
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

from medcomp.errors import CorruptFileError

PRECISION = 16
HEADER = struct.Struct("<iII")  # offset, alphabet size, symbol count
# Every symbol of the alphabet and the escape symbol need a count of at least 1 out of 2^PRECISION.
MAX_ALPHABET = (1 << PRECISION) - 1


def min_encoded_size(alphabet: int) -> int:
    """Bytes ``encode_symbols`` writes at the least for this alphabet size, before any rANS stream: its header, and
    for two or more symbols the frequency table (one varint byte at least per symbol and for the escape)."""
    return HEADER.size + (alphabet + 1 if alphabet > 1 else 0)


def _varints(values) -> bytes:
    out = bytearray()
    for v in values:
        v = int(v)
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def _read_varints(data: bytes, pos: int, n: int) -> tuple[list[int], int]:
    values = []
    for _ in range(n):
        v, shift = 0, 0
        while True:
            if pos >= len(data):
                raise CorruptFileError("corrupt entropy-coded section (frequency table truncated)")
            b = data[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift > 35:
                raise CorruptFileError("corrupt entropy-coded section (bad varint)")
        values.append(v)
    return values, pos


def _quantized_cdf(counts: np.ndarray) -> list[int]:
    """The 16-bit CDF that CompressAI's ``pmf_to_quantized_cdf`` gives for this histogram, bit for bit.

    Written out because CompressAI's version rescans the whole alphabet for every zero-frequency symbol (O(k²)): a
    sparse 16-bit weight alphabet took 10 s per call, most of a UniCompress encode. Same steps, same float32
    rounding, but the "steal one count from the smallest frequency > 1" loop uses a heap (O(k log k)).
    tests/test_unicompress.py checks equality with CompressAI's function; the stored tables, and so every file
    written before this change, are unchanged.
    """
    # CompressAI takes the pmf as float32 and rounds half away from zero (std::round); the scale is a power of two,
    # so the product is exact.
    pmf = np.append(counts / counts.sum(), 1.0 / (1 << PRECISION)).astype(np.float32)
    scaled = pmf * np.float32(1 << PRECISION)
    floor = np.floor(scaled)
    freq = (floor + (scaled - floor >= 0.5)).astype(np.int64)
    freq = ((1 << PRECISION) * freq) // int(freq.sum())
    freq[-1] += (1 << PRECISION) - int(freq.sum())  # CompressAI sets cdf.back() = 2^precision
    freq = freq.tolist()
    # Each zero (in index order) takes one count from the smallest frequency > 1, the lowest index on ties. Moving
    # the CDF entries between the two symbols changes only those two frequencies.
    donors = [(f, j) for j, f in enumerate(freq) if f > 1]
    heapq.heapify(donors)
    for i, f in enumerate(freq):
        if f == 0:
            if not donors:
                raise ValueError(f"alphabet of {len(freq) - 1} symbols is over MAX_ALPHABET = {MAX_ALPHABET}")
            fj, j = heapq.heappop(donors)
            freq[j], freq[i] = fj - 1, 1
            if fj - 1 > 1:
                heapq.heappush(donors, (fj - 1, j))
    return [0] + np.cumsum(freq).tolist()


def encode_symbols(symbols: np.ndarray) -> bytes:
    """Integers (any range) → self-describing bytes: offset, alphabet size, frequency table, rANS stream."""
    from compressai.ans import RansEncoder

    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size == 0:
        return HEADER.pack(0, 0, 0)
    lo = int(symbols.min())
    shifted = symbols - lo
    k = int(shifted.max()) + 1
    if k == 1:  # one distinct value: the header says it all (and the rANS coder rejects one-symbol alphabets)
        return HEADER.pack(lo, 1, symbols.size)
    cdf = _quantized_cdf(np.bincount(shifted, minlength=k).astype(np.float64))
    freqs = np.diff(cdf)
    stream = RansEncoder().encode_with_indexes(shifted.tolist(), [0] * symbols.size, [cdf], [len(cdf)], [0])
    return HEADER.pack(lo, k, symbols.size) + _varints(freqs) + stream


def _uniform_cdf(k: int) -> list[int]:
    """A flat 16-bit CDF over ``k`` symbols (counts differ by at most one, so a symbol costs log2(k) bits to within
    1 % for k ≤ 2^12, and never more than 16), then the escape with count 0: the encoder never needs it, and a decoder
    that can't land on it never enters CompressAI's bypass decoding, whose shifts are undefined on a corrupt stream
    (measured: the same bad bytes decoded differently from call to call)."""
    total = 1 << PRECISION
    freq = np.full(k, total // k, dtype=np.int64)
    freq[: total % k] += 1
    return [0] + np.cumsum(np.append(freq, 0)).tolist()


def encode_uniform(symbols: np.ndarray) -> bytes:
    """Integers → header and a rANS stream under a flat distribution that the decoder rebuilds from the alphabet
    size alone. Fixed-width packing spends whole bits (2^b levels); this spends log2(levels), so a file's size
    follows the number of quantiser levels smoothly and small sections, which can't afford a frequency table,
    still meet their byte target closely. Needs 2 ≤ alphabet ≤ MAX_ALPHABET."""
    from compressai.ans import RansEncoder

    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    lo = int(symbols.min())
    k = int(symbols.max()) - lo + 1
    if not 2 <= k <= MAX_ALPHABET:
        raise ValueError(f"flat rANS needs 2..{MAX_ALPHABET} symbols, got {k}")
    cdf = _uniform_cdf(k)
    stream = RansEncoder().encode_with_indexes((symbols - lo).tolist(), [0] * symbols.size, [cdf], [len(cdf)], [0])
    return HEADER.pack(lo, k, symbols.size) + stream


def uniform_size_estimate(alphabet: int, n: int) -> float:
    """Bytes ``encode_uniform`` writes for ``n`` symbols spread over the alphabet (rANS flushes 8 bytes)."""
    freq = np.diff(_uniform_cdf(alphabet))[:-1]
    return HEADER.size + 8 + n * float(np.mean(PRECISION - np.log2(freq))) / 8


def decode_uniform(data: bytes) -> np.ndarray:
    from compressai.ans import RansDecoder

    if len(data) < HEADER.size:
        raise CorruptFileError("corrupt entropy-coded section (too short)")
    lo, k, n = HEADER.unpack_from(data, 0)
    # A flat symbol costs at least one bit (k ≥ 2): more symbols than bits is a corrupt header, not a big network.
    if not 2 <= k <= MAX_ALPHABET or n > 8 * (len(data) - HEADER.size):
        raise CorruptFileError("corrupt entropy-coded section (implausible sizes)")
    cdf = _uniform_cdf(k)
    decoded = RansDecoder().decode_with_indexes(with_tail(data[HEADER.size :], n), [0] * n, [cdf], [len(cdf)], [0])
    return np.asarray(decoded, dtype=np.int64) + lo


def with_tail(stream: bytes, n: int) -> bytes:
    """The stream followed by zeros: CompressAI's rANS decoder reads a 32-bit word per symbol at most and does not
    check the end of its buffer, so a cut stream would read whatever memory follows (different garbage each run).
    Valid streams never reach the zeros."""
    return stream + bytes(4 * n + 8)


def decode_symbols(data: bytes) -> np.ndarray:
    from compressai.ans import RansDecoder

    if len(data) < HEADER.size:
        raise CorruptFileError("corrupt entropy-coded section (too short)")
    lo, k, n = HEADER.unpack_from(data, 0)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if k == 1:
        return np.full(n, lo, dtype=np.int64)
    if k > 1 << 20 or n > 1 << 31:
        raise CorruptFileError("corrupt entropy-coded section (implausible sizes)")
    freqs, pos = _read_varints(data, HEADER.size, k + 1)
    cdf = [0] + np.cumsum(freqs).tolist()
    if cdf[-1] != 1 << PRECISION:
        raise CorruptFileError("corrupt entropy-coded section (frequency table does not sum to 2^16)")
    decoded = RansDecoder().decode_with_indexes(with_tail(data[pos:], n), [0] * n, [cdf], [len(cdf)], [0])
    return np.asarray(decoded, dtype=np.int64) + lo
