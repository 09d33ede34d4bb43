"""The one interface every codec implements, classical or learned, and the ``.mcz`` header they all write.

Which codecs exist is said by ``conf/codec/*.yaml`` (see :mod:`medcomp.codecs.registry`)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from medcomp.codecs.container import Container
from medcomp.data.image import Image
from medcomp.errors import CorruptFileError, MedcompError
from medcomp.target import Target

ALL_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Accepts:
    """What a codec codes honestly, declared by the codec and checked before any encoding (:meth:`Codec.check_input`):
    a refusal is one line naming the codec and the limit. The table of what each codec accepts (docs/command-line.md) is made
    from these declarations (``python -m medcomp.codecs.registry --accepts``)."""

    dtypes: tuple[str, ...] = ALL_DTYPES
    ndims: tuple[int, ...] = (2, 3)
    min_side: int = 1  # the smallest in-plane side (rows and columns) the codec reproduces at its best quality
    float32_values: bool = False  # the network computes in float32: values and their range must fit one

    def describe(self) -> str:
        parts = [", ".join(self.dtypes), " or ".join(f"{d}-D" for d in self.ndims)]
        if self.min_side > 1:
            parts.append(f"at least {self.min_side}×{self.min_side} pixels a slice")
        if self.float32_values:
            parts.append("float values within float32's range")
        return "; ".join(parts)

    def refusal(self, image: Image) -> str | None:
        """Why this codec cannot code ``image``, or None."""
        a = image.array
        if a.dtype.name not in self.dtypes:
            return f"does not code {a.dtype.name} images (it codes {', '.join(self.dtypes)})"
        if a.ndim not in self.ndims:
            return f"codes {' or '.join(f'{d}-D' for d in self.ndims)} images, this one is {a.ndim}-D {a.shape}"
        if min(a.shape[-2:]) < self.min_side:
            return (f"needs slices of at least {self.min_side}×{self.min_side} pixels, this image's are "
                    f"{a.shape[-2]}×{a.shape[-1]}")
        if self.float32_values and a.dtype.kind == "f":
            lo, hi = float(a.min()), float(a.max())
            if max(abs(lo), abs(hi), hi - lo) > FLOAT32_MAX:
                return f"computes in float32, and this image's values ({lo:.3g} … {hi:.3g}) do not fit one"
        return None


class Codec(ABC):
    """Encodes an :class:`Image` into a :class:`Container` and decodes it back to the original dtype."""

    accepts: Accepts = Accepts()

    def check_input(self, image: Image, source: str | None = None) -> None:
        """Refuse, before any encoding, an image this codec cannot code honestly (see :class:`Accepts`)."""
        why = self.accepts.refusal(image)
        if why:
            raise MedcompError(f"{source or image.name}: codec '{self.name}' {why}")

    name: str = ""
    # DICOM's LossyImageCompressionMethod term for what this codec does (PS3.3 C.7.6.1.1.5.1); codecs without a
    # standard term (the learned ones) use their own name, upper case.
    dicom_method: str = ""
    # How a codec comes by its network, for the CLI's --ckpt / --override: ``trained`` codecs code with a weights
    # file (CAL-VAE, RNN-Conv), ``fitted`` ones fit a network to each image as they encode (SIREN, UniCompress).
    trained: bool = False
    fitted: bool = False
    # Threads that code slices at once (CLI --threads; None: one a usable core), and what the last encode's rate
    # search cost ({"whole_encodes": n, "sample_encodes": m}, where the codec counts them)
    threads: int | None = None
    rate_search: dict | None = None

    @abstractmethod
    def encode(self, image: Image, target: Target) -> Container: ...

    @abstractmethod
    def decode(self, container: Container) -> np.ndarray: ...

    # What the codec can guarantee instead of a rate (CLI --lossless / --max-error): ``lossless``: a bit-exact mode;
    # ``bounds_error``: an absolute error bound in stored units. ``encode_bounded`` implements them.
    lossless: bool = False
    bounds_error: bool = False

    def encode_bounded(self, image: Image, max_error: float) -> Container:
        """A file whose decode differs from ``image`` by at most ``max_error`` stored units (0: bit-exact), or a
        MedcompError saying why this image cannot be kept so (the caller checks the decode as well)."""
        raise MedcompError(f"codec '{self.name}' has no {'lossless' if max_error == 0 else 'error-bounded'} mode")

    def is_lossless(self, container: Container) -> bool:
        """Whether decoding ``container`` gives back the original values exactly."""
        return bool(container.header.get("lossless") is True)

    def lossy_method(self) -> str:
        return self.dicom_method or f"MEDCOMP_{self.name.upper()}"[:16]


def check_number(value, what: str, lo: float, hi: float, integer: bool = False) -> float:
    """A header number a codec reads: a JSON number (not a bool, not NaN/inf) in [lo, hi], whole if ``integer``."""
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or not lo <= value <= hi or (integer and value != int(value))):
        raise CorruptFileError(f".mcz header: {what} {value!r} is not {'an integer' if integer else 'a number'} "
                               f"in [{lo:g}, {hi:g}]")
    return value


def check_planes(planes: list[np.ndarray], shape: list[int]) -> None:
    """Decoded slices against the header: one a slice (a 2-D image is one), each of the header's rows × columns."""
    count = shape[0] if len(shape) == 3 else 1
    if len(planes) != count:
        raise CorruptFileError(f"corrupt .mcz: {len(planes)} coded slices, the header's image has {count}")
    for p in planes:
        if p.shape != tuple(shape[-2:]):
            raise CorruptFileError(f"corrupt .mcz: a coded slice is {'×'.join(map(str, p.shape))}, the header says "
                                   f"{'×'.join(map(str, shape[-2:]))}")


def image_header(image: Image) -> dict:
    """What every decoder and writer needs to rebuild the image: voxels' shape and dtype, where they lie in the
    patient, how stored values map to real units, the photometric interpretation and modality. Nothing identifying
    (no names, no dates, no UIDs)."""
    header = {
        "shape": list(image.array.shape),
        "dtype": image.array.dtype.str,
        "spacing": list(image.spacing) if image.spacing else None,
        "origin": list(image.origin) if image.origin is not None else None,
        "direction": list(image.direction) if image.direction is not None else None,
        "rescale": list(image.rescale) if image.rescale is not None else None,
        "photometric": image.photometric,
        "modality": image.modality,
    }
    if image.meta.get("source_lossy"):
        header["source_lossy"] = True
    return header


DTYPES = {np.dtype(t).str for t in ("u1", "u2", "u4", "i1", "i2", "i4", "f4", "f8")} | {
    np.dtype(t).newbyteorder(">").str for t in ("u2", "u4", "i2", "i4", "f4", "f8")} | {"|u1", "|i1"}
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")


def _numbers(value, n: int | tuple, what: str, positive: bool = False) -> None:
    counts = n if isinstance(n, tuple) else (n,)
    if (not isinstance(value, list) or len(value) not in counts
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            or (positive and not all(v > 0 for v in value))):
        kind = "positive finite numbers" if positive else "finite numbers"
        raise CorruptFileError(f".mcz header: {what} {value!r} is not a list of {'/'.join(map(str, counts))} {kind}")


def check_header(header: dict) -> dict:
    """Validate what :func:`image_header` wrote, before anything is allocated or decoded: a file whose CRC is right
    but whose header is hand-edited or written by a buggy encoder is one clear error, never garbage."""
    shape = header.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise CorruptFileError(f".mcz header: shape {shape!r} is not a list of 2 or 3 positive integers")
    if len(shape) not in (2, 3):  # what every reader gives and every writer takes
        raise CorruptFileError(f".mcz header: shape {shape} is {len(shape)}-D; medcomp writes 2-D and 3-D images only")
    if math.prod(shape) > MAX_DECODED_VOXELS:
        raise CorruptFileError(f".mcz header: shape {shape} is larger than any image medcomp writes")
    dtype = header.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CorruptFileError(f".mcz header: dtype {dtype!r} is not an image pixel type "
                               "(unsigned/signed integers up to 32 bits, float32/64)")
    # Sane bounds, not only finite ones: a spacing of 1e300 mm is finite, and an affine built from it is not.
    if header.get("spacing") is not None:
        _numbers(header["spacing"], len(shape), "spacing", positive=True)
        _bounded(header["spacing"], "spacing (mm)", MAX_SPACING_MM, MIN_SPACING_MM)
    if header.get("origin") is not None:
        _numbers(header["origin"], 3, "origin")
        _bounded(header["origin"], "origin (mm)", MAX_ORIGIN_MM)
    if header.get("direction") is not None:
        _numbers(header["direction"], 9, "direction")
        if abs(abs(np.linalg.det(np.asarray(header["direction"]).reshape(3, 3))) - 1) > 1e-3:
            raise CorruptFileError(f".mcz header: direction {header['direction']} is not a rotation/reflection")
    if header.get("rescale") is not None:
        _numbers(header["rescale"], 2, "rescale (slope, intercept)")
        if header["rescale"][0] == 0:
            raise CorruptFileError(".mcz header: rescale slope is 0")
        _bounded(header["rescale"][:1], "rescale slope", MAX_RESCALE, 1 / MAX_RESCALE)
        _bounded(header["rescale"][1:], "rescale intercept", MAX_RESCALE)
    if header.get("photometric", "MONOCHROME2") not in PHOTOMETRIC:
        raise CorruptFileError(f".mcz header: photometric interpretation {header.get('photometric')!r} is not "
                               f"one of {', '.join(PHOTOMETRIC)}")
    modality = header.get("modality")
    if modality is not None and (not isinstance(modality, str) or not modality.isalnum() or len(modality) > 16):
        raise CorruptFileError(f".mcz header: modality {modality!r} is not a DICOM modality code")
    mapping = header.get("mapping")
    if mapping is not None:
        if not isinstance(mapping, dict):
            raise CorruptFileError(f".mcz header: intensity mapping {mapping!r} is not an object")
        for key, value in mapping.items():  # offset/scale (classical codecs), lo/hi (trained 2-D codecs)
            if key == "bits":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or (
                    key == "scale" and value <= 0):
                raise CorruptFileError(f".mcz header: intensity mapping {key} {value!r} is not a finite number")
        top = 2.0 ** min(int(mapping["bits"]), 32) - 1 if isinstance(mapping.get("bits"), int) else 1.0
        reach = float(mapping.get("offset", 0.0)) + float(mapping.get("scale", 1.0)) * top
        if not math.isfinite(reach) or any(
                mapping.get(h, math.inf) < mapping.get(lo, -math.inf) for lo, h in (("offset", "hi"), ("lo", "hi"))):
            raise CorruptFileError(f".mcz header: intensity mapping {mapping} does not map onto a finite range")
    return header


MIN_SPACING_MM, MAX_SPACING_MM, MAX_ORIGIN_MM, MAX_RESCALE = 1e-6, 1e6, 1e9, 1e30


def _bounded(values: list, what: str, largest: float, smallest: float = 0.0) -> None:
    """|v| ≤ largest, and |v| ≥ smallest where given (spacing, slope): beyond either the header is not a real image's."""
    if any(abs(v) > largest or abs(v) < smallest for v in values):
        raise CorruptFileError(f".mcz header: {what} {values} lies outside [{smallest:g}, {largest:g}] in magnitude")


def image_from_header(header: dict, array: np.ndarray, codec: str) -> Image:
    """The decoded voxels with everything else the header says about the image."""
    def tup(key):
        return tuple(header[key]) if header.get(key) is not None else None

    meta = {"codec": codec}
    if header.get("source_lossy"):
        meta["source_lossy"] = True
    return Image(array, tup("spacing"), meta, origin=tup("origin"), direction=tup("direction"),
                 rescale=tup("rescale"), photometric=header.get("photometric") or "MONOCHROME2",
                 modality=header.get("modality"))


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


MAX_DECODED_VOXELS = 1 << 32  # a header asking for more is corrupt, not a reason to allocate terabytes
