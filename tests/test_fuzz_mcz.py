"""Fuzzing the .mcz reader and decoders with hypothesis: any byte string gives a clean medcomp error (or, for an
untouched file, the image), never another exception or a hang. Three kinds of input: arbitrary bytes; arbitrary
bodies behind the right magic with a correct CRC (so the parser itself is exercised); and real files of every
codec (classical, video, trained 2-D, SIREN, UniCompress) with bytes changed and the CRC recomputed (so every
decoder is exercised). No per-example deadline: a busy machine is not a failure; pytest-timeout bounds a hang."""

import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcomp.codecs.container import MAGIC, Container
from medcomp.codecs.registry import decode_container, get_codec
from medcomp.data.image import Image
from medcomp.errors import MedcompError
from medcomp.target import Target

# 300 examples a test in `make test` (a few seconds each), 2,000 in `make test-full` (MEDCOMP_FUZZ_FULL=1)
EXAMPLES = 2000 if os.environ.get("MEDCOMP_FUZZ_FULL") else 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def parse_and_decode(data: bytes):
    try:
        decode_container(Container.from_bytes(data, "fuzz.mcz"))
    except MedcompError as exc:
        assert "\n" not in str(exc)  # one line, as the CLI prints it


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data):
    parse_and_decode(data)


@FUZZ
@given(st.binary(max_size=512))
def test_bodies_with_valid_magic_and_crc(body):
    parse_and_decode(with_crc(MAGIC + body))


@FUZZ
@given(version=st.integers(0, 3), codec=st.sampled_from(["jpeg2000", "jpeg", "siren", "hevc", "nope", ""]),
       header=st.recursive(st.none() | st.booleans() | st.integers(-10, 10**12) | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                           max_leaves=12),
       payload=st.binary(max_size=256))
def test_structured_containers_with_garbage_headers(version, codec, header, payload):
    c = codec.encode()
    import json

    h = json.dumps({"shape": header} if not isinstance(header, dict) else header).encode()
    body = (MAGIC + struct.pack("<HB", version, len(c)) + c + struct.pack("<I", len(h)) + h + struct.pack("<H", 1)
            + struct.pack("<B", 4) + b"data" + struct.pack("<Q", len(payload)) + payload)
    parse_and_decode(with_crc(body))


def _real_files() -> list[bytes]:
    """A file of every codec: classical and video ones encoded; the trained 2-D codecs encoded with their shipped
    weights; SIREN and UniCompress written with random weights (a fit would add seconds and change nothing the
    decoder sees)."""
    from medcomp.codecs.siren import siren_container
    from medcomp.codecs.unicompress import unicompress_container
    from medcomp.data.blocks import plan_blocks
    from medcomp.nn.siren import siren_param_count, siren_shapes

    rng = np.random.default_rng(0)
    image = Image((np.add.outer(np.arange(24), np.arange(20)) * 40 + rng.integers(0, 30, (24, 20))).astype(np.uint16),
                  (1.0, 1.0), {}, "fuzz")
    files = [get_codec(name).encode(image, Target(ratio=4))
             for name in ("jpeg", "jpeg2000", "jpegxl", "jpegls", "h264", "hevc", "deflate", "htj2k", "sperr", "sz3")]
    files.append(get_codec("zfp").encode(Image(
        np.stack([image.array + 7 * k for k in range(4)]), (1.0, 1.0, 1.0), {}, "fuzz"), Target(ratio=4)))  # 3-D only
    files += [get_codec(name).encode(image, Target(bpp=2)) for name in ("cal_vae", "rnn_conv")]
    layout = plan_blocks(image.array.shape, (12, 10))
    weights = rng.normal(0, 0.3, layout.n_blocks * siren_param_count(6, 3, 2)).astype("<f2").tobytes()
    ranges = np.tile(np.array([[0.0, 1500.0]]), (layout.n_blocks, 1))
    files.append(siren_container(image, layout, ranges, 6, 3, 30.0, "float16", weights))
    params = [rng.normal(0, 0.3, s).astype(np.float32) for s in siren_shapes(6, 3, 2 + 3)]
    files.append(unicompress_container(image, layout, (0.0, 1500.0), 6, 3, 30.0, 3, 511, 8, params,
                                       rng.normal(0, 1, (4, 3)).astype(np.float32), np.array([0, 1, 1, 3]),
                                       coordinates="image"))
    return [c.to_bytes() for c in files]


REAL = _real_files()


@FUZZ
@given(which=st.integers(0, len(REAL) - 1), edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                           min_size=1, max_size=6), cut=st.integers(0, 64))
def test_mutated_real_files(which, edits, cut):
    body = bytearray(REAL[which][:-4])
    for pos, value in edits:
        body[pos % len(body)] = value
    parse_and_decode(with_crc(bytes(body[: max(len(MAGIC), len(body) - cut)])))


def test_untouched_real_files_decode():
    for data in REAL:
        c = Container.from_bytes(data)
        assert decode_container(c).array.shape == tuple(c.header["shape"]) and c.header["shape"][-2:] == [24, 20]


@pytest.mark.parametrize("shape", [[0, 4], [-1], "big", [2**20, 2**20, 2**20], [1.5, 2], [True, 3]])
def test_header_shapes_are_checked_before_allocating(shape):
    with pytest.raises(MedcompError, match="shape"):
        decode_container(Container("jpeg", {"shape": shape, "dtype": "uint8"}, {"data": b""}))


# Header values a decoder does not expect, behind a correct CRC: every image field of a real file replaced by junk of
# every JSON kind. The result is a one-line MedcompError, or (for values that happen to be valid) the right image.
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**12) | st.floats(allow_nan=True)
                           | st.text(max_size=6), lambda kids: st.lists(kids, max_size=10), max_leaves=12)
IMAGE_FIELDS = ["shape", "dtype", "spacing", "origin", "direction", "rescale", "photometric", "modality", "mapping"]


@FUZZ
@given(which=st.integers(0, len(REAL) - 1), field=st.sampled_from(IMAGE_FIELDS),
       value=JSON_VALUES | st.sampled_from(["|O", "<U4", "V8", "x", "abc", "<f2", ">c16", "M8[s]", "MONOCHROME3"])
       | st.fixed_dictionaries({"offset": st.floats(allow_nan=True), "scale": st.floats(allow_nan=True)}))
def test_real_files_with_junk_header_values(which, field, value):
    c = Container.from_bytes(REAL[which])
    bad = Container(c.codec, {**c.header, field: value}, c.sections)
    try:
        image = decode_container(Container.from_bytes(bad.to_bytes()))
    except MedcompError as exc:
        assert "\n" not in str(exc)
        return
    assert image.array.shape == tuple(bad.header["shape"]) and image.array.dtype == np.dtype(bad.header["dtype"])
    assert all(np.isfinite(image.array.astype(np.float64)).ravel())
