"""One interface for every codec, classical or learned, and the registry the CLI and configs use."""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medcomp.codecs.container import Container
from medcomp.data.image import Image
from medcomp.errors import CorruptFileError, MedcompError


@dataclass(frozen=True)
class Target:
    """A rate target: a compression ratio or a bits-per-pixel figure (exactly one)."""

    ratio: float | None = None
    bpp: float | None = None

    def __post_init__(self):
        if (self.ratio is None) == (self.bpp is None):
            raise MedcompError("give exactly one rate target: a ratio (--ratio) or bits per pixel (--bpp)")
        value = self.ratio if self.ratio is not None else self.bpp
        if not value > 0:
            raise MedcompError(f"rate target must be positive, got {value}")

    def target_bytes(self, image: Image) -> float:
        if self.ratio is not None:
            return image.nbytes / self.ratio
        return self.bpp * image.array.size / 8.0

    def ratio_for(self, image: Image) -> float:
        return image.nbytes / self.target_bytes(image)

    def describe(self) -> str:
        return f"cr{self.ratio:g}" if self.ratio is not None else f"bpp{self.bpp:g}"


class Codec(ABC):
    """Encodes an :class:`Image` into a :class:`Container` and decodes it back to the original dtype."""

    name: str = ""

    @abstractmethod
    def encode(self, image: Image, target: Target) -> Container: ...

    @abstractmethod
    def decode(self, container: Container) -> np.ndarray: ...


def image_header(image: Image) -> dict:
    """What every decoder needs to rebuild the array; nothing identifying (no names, no DICOM tags)."""
    return {
        "shape": list(image.array.shape),
        "dtype": image.array.dtype.str,
        "spacing": list(image.spacing) if image.spacing else None,
    }


def join_planes(streams: list[bytes]) -> dict[str, bytes]:
    """Sections of a per-slice codec: the byte length of every slice's stream, then the streams back to back."""
    return {"index": np.asarray([len(s) for s in streams], dtype="<u4").tobytes(), "stream": b"".join(streams)}


def split_planes(container: Container) -> list[bytes]:
    """The slice streams written by :func:`join_planes`, checked against the stream's length."""
    lengths = np.frombuffer(container.sections["index"], dtype="<u4")
    stream = container.sections["stream"]
    if int(lengths.sum()) != len(stream):
        raise CorruptFileError("corrupt .mcz: slice index does not match the stream length")
    ends = np.cumsum(lengths.astype(np.int64))
    return [stream[int(e - n) : int(e)] for n, e in zip(lengths, ends)]


def restore_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Round and clip decoded float values into the original dtype."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.rint(values), info.min, info.max).astype(dt)
    return values.astype(dt)


CODECS: dict[str, Callable[[], Codec]] = {}


def register(name: str):
    def wrap(factory):
        CODECS[name] = factory
        return factory

    return wrap


LEARNED: set[str] = set()


def register_learned(name: str, decode: Callable[[Container], np.ndarray]) -> None:
    """Registry entry for a learned codec: decoding is self-contained; encoding fits the model through the Hydra
    pipeline (``model=<name>``), the same path as run.py."""

    class LearnedCodec(Codec):
        def encode(self, image: Image, target: Target) -> Container:
            from medcomp.pipeline import encode_learned

            return encode_learned(name, image, target)

        def decode(self, container: Container) -> np.ndarray:
            return decode(container)

    LearnedCodec.name = name
    LEARNED.add(name)
    register(name)(LearnedCodec)


def learned_codecs() -> set[str]:
    _load_builtin_codecs()
    return set(LEARNED)


def is_learned(name: str) -> bool:
    """Whether ``name`` is fitted through the pipeline (imports only that codec's module)."""
    _load_builtin_codecs(name)
    return name in LEARNED


def trained_codecs() -> set[str]:
    """Codecs that code with a trained network's weights file (``--ckpt``)."""
    _load_builtin_codecs()
    return {n for n in CODECS if is_trained(n)}


def is_trained(name: str) -> bool:
    _load_builtin_codecs(name)
    # Only medcomp.models.codec2d registers trained codecs; not imported yet means none is registered.
    codec2d = sys.modules.get("medcomp.models.codec2d")
    factory = CODECS.get(name)
    return codec2d is not None and isinstance(factory, type) and issubclass(factory, codec2d.TrainedCodec)


def get_codec(name: str, **kwargs) -> Codec:
    _load_builtin_codecs(name)
    if name not in CODECS:
        _load_builtin_codecs()  # for the list in the message
        raise MedcompError(f"unknown codec '{name}' (available: {', '.join(sorted(CODECS))})")
    return CODECS[name](**kwargs)


def available_codecs() -> list[str]:
    _load_builtin_codecs()
    return sorted(CODECS)


# The module whose @register names each built-in codec. Imported on first use of that name, so a JPEG 2000
# compress or `medcomp info` does not import CompressAI, Lightning or the models (seconds per CLI call).
_BUILTIN_MODULES = {
    "jpeg": "medcomp.codecs.classical", "jpeg2000": "medcomp.codecs.classical", "jpegxl": "medcomp.codecs.classical",
    "jpegls": "medcomp.codecs.classical", "h264": "medcomp.codecs.video", "hevc": "medcomp.codecs.video",
    "cal_vae": "medcomp.models.cal_vae", "rnn_conv": "medcomp.models.rnn_conv", "siren": "medcomp.models.siren",
    "unicompress": "medcomp.models.unicompress",
}


def _load_builtin_codecs(name: str | None = None):
    """Import the module that registers ``name`` (all built-in codec modules when None)."""
    import importlib

    if name is not None and name in CODECS:
        return
    for module in ([_BUILTIN_MODULES[name]] if name in _BUILTIN_MODULES else
                   sorted(set(_BUILTIN_MODULES.values())) if name is None else []):
        importlib.import_module(module)


MAX_DECODED_VOXELS = 1 << 32  # a header asking for more is corrupt, not a reason to allocate terabytes


def decode_container(container: Container, **kwargs) -> Image:
    """Decode with the codec the file names. A file whose CRC is right but whose header or payload does not fit
    its codec (hand-edited, or written by a buggy encoder) gives a CorruptFileError, never another exception."""
    from medcomp.errors import CorruptFileError

    header = container.header
    shape = header.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise CorruptFileError(f".mcz header: shape {shape!r} is not a list of 1–4 positive integers")
    if math.prod(shape) > MAX_DECODED_VOXELS:
        raise CorruptFileError(f".mcz header: shape {shape} is larger than any image medcomp writes")
    codec = get_codec(container.codec, **kwargs)
    try:
        array = codec.decode(container)
    except MedcompError:
        raise
    except MemoryError as exc:
        raise CorruptFileError(f".mcz payload of codec {container.codec!r} asks for more memory than there is") from exc
    except Exception as exc:  # noqa: BLE001 — any other failure means the header and payload do not agree
        raise CorruptFileError(f".mcz payload does not decode as {container.codec!r} "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    expected = tuple(shape)
    if array.shape != expected:
        raise MedcompError(f"decoded shape {array.shape} differs from the header's {expected}: corrupt .mcz")
    return Image(array, tuple(header["spacing"]) if header.get("spacing") else None, {"codec": container.codec})


def search_knob(size_of: Callable[[float], int], target_bytes: float, lo: float, hi: float, *,
                increasing: bool, integer: bool = False, iterations: int = 18):
    """Bisection on a codec's quality knob so that the encoded size meets ``target_bytes``.

    ``size_of(knob)`` returns the encoded size; it must be monotone in the knob (``increasing`` says which way).
    Returns the knob whose size is closest to the target in log ratio. Every classical codec uses this, because
    none of them exposes "give me exactly N bytes".
    """
    best = None
    cache: dict[float, int] = {}

    def probe(k):
        k = round(k) if integer else k
        if k not in cache:
            cache[k] = size_of(k)
        return k, cache[k]

    for _ in range(iterations):
        mid = (lo + hi) / 2.0
        k, size = probe(mid)
        err = abs(math.log(max(size, 1) / target_bytes))
        if best is None or err < best[2]:
            best = (k, size, err)
        if (size < target_bytes) == increasing:
            lo = mid
        else:
            hi = mid
        if integer and hi - lo <= 1:
            for edge in (lo, hi):
                k, size = probe(edge)
                err = abs(math.log(max(size, 1) / target_bytes))
                if err < best[2]:
                    best = (k, size, err)
            break
    return best[0]
