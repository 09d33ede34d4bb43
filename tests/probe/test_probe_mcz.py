"""Crafted .mcz files with a valid CRC (issue 35, build 3): a section cut short, header numbers no image has, a header
that disagrees with its payload, knob values of every JSON kind, shapes no writer takes, codestreams that claim more
memory than their header. Each is one line and exit 2, never a decode to another image; a big-endian dtype decodes
to the right values."""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcomp.codecs.container import Container
from medcomp.codecs.registry import decode_container, get_codec
from medcomp.data.image import Image
from medcomp.errors import MedcompError
from medcomp.target import Target
from tests.test_fuzz_mcz import REAL

CODECS = [Container.from_bytes(data).codec for data in REAL]


def cut_section(data: bytes, section: str, cut: int) -> bytes:
    """The file with ``cut`` bytes taken off the end of one section, everything else (the CRC too) consistent. A
    per-slice index is kept consistent with the cut stream, as a careless writer would leave it."""
    c = Container.from_bytes(data)
    sections = dict(c.sections)
    sections[section] = sections[section][: len(sections[section]) - cut]
    if section == "stream" and "index" in sections:
        index = np.frombuffer(sections["index"], "<u4").copy()
        index[-1] -= cut
        sections["index"] = index.tobytes()
    return Container(c.codec, c.header, sections).to_bytes()


def one_line_error(data: bytes) -> str:
    with pytest.raises(MedcompError) as info:
        decode_container(Container.from_bytes(data, "crafted.mcz"))
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("which", range(len(REAL)), ids=CODECS)
def test_every_section_cut_short_is_an_error(which):
    for name, payload in Container.from_bytes(REAL[which]).sections.items():
        for cut in sorted({1, 2, 8, len(payload) // 2} - {0}):
            if cut < len(payload):
                one_line_error(cut_section(REAL[which], name, cut))


FUZZ_FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
FUZZ_FULL = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _cut_any_section(which, pick, cut):
    sections = list(Container.from_bytes(REAL[which]).sections)
    name = sections[pick % len(sections)]
    size = len(Container.from_bytes(REAL[which]).sections[name])
    if size < 2:
        return
    one_line_error(cut_section(REAL[which], name, 1 + cut % (size - 1)))


CUTS = dict(which=st.integers(0, len(REAL) - 1), pick=st.integers(0, 10), cut=st.integers(0, 10**6))


@FUZZ_FAST
@given(**CUTS)
def test_cut_sections_fuzz(which, pick, cut):
    _cut_any_section(which, pick, cut)


@pytest.mark.slow
@FUZZ_FULL
@given(**CUTS)
def test_cut_sections_fuzz_full(which, pick, cut):
    _cut_any_section(which, pick, cut)


# Codec parameters of every kind, in every codec's file: junk is one line, a value that happens to be valid decodes
JUNK = st.sampled_from([None, True, "7", [1], {"a": 1}, float("inf"), float("nan"), -1, 1e300, 0.5, 2**40])
PARAMS = ["knob", "crf", "frames", "coded_hw", "stream_bytes", "tile", "gain", "iterations", "layout", "width",
          "depth", "w0", "range", "weight_levels", "code_dim", "n_codes", "weights_sha256", "weight_dtype"]


def _junk_param(which, key, value):
    c = Container.from_bytes(REAL[which])
    if key not in c.header:
        return
    data = Container(c.codec, {**c.header, key: value}, c.sections).to_bytes()
    try:
        image = decode_container(Container.from_bytes(data))
    except MedcompError as exc:
        assert "\n" not in str(exc)
        return
    assert image.array.shape == tuple(c.header["shape"])


@FUZZ_FAST
@given(which=st.integers(0, len(REAL) - 1), key=st.sampled_from(PARAMS), value=JUNK)
def test_junk_codec_parameters_fuzz(which, key, value):
    _junk_param(which, key, value)


@pytest.mark.slow
@FUZZ_FULL
@given(which=st.integers(0, len(REAL) - 1), key=st.sampled_from(PARAMS), value=JUNK)
def test_junk_codec_parameters_fuzz_full(which, key, value):
    _junk_param(which, key, value)


def _file(codec="deflate", image=None, **header_changes) -> bytes:
    image = image or Image(np.add.outer(np.arange(24), np.arange(20)).astype(np.int16) * 9, (1.0, 1.0), {}, "t")
    c = get_codec(codec).encode(image, Target(ratio=2))
    return Container(c.codec, {**c.header, **header_changes}, c.sections).to_bytes()


@pytest.mark.parametrize("change", [{"spacing": [1e300, 1.0]}, {"origin": [1e300, 0.0, 0.0]},
                                    {"rescale": [1e300, 0.0]}, {"rescale": [1e-300, 0.0]}, {"rescale": [1.0, 1e300]},
                                    {"spacing": [1e-300, 1.0]}])
def test_header_numbers_no_image_has(refused, tmp_path, change):
    (tmp_path / "x.mcz").write_bytes(_file(**change))
    for out in ("x.nii.gz", "x.nrrd", "x.npy"):
        refused("decompress", tmp_path / "x.mcz", tmp_path / out, match=r"x\.mcz: \.mcz header: ")


def test_header_shape_that_disagrees_with_the_payload(refused, tmp_path):
    (tmp_path / "x.mcz").write_bytes(_file("jpeg2000", shape=[20, 24]))  # the same voxels, another shape
    refused("decompress", tmp_path / "x.mcz", tmp_path / "x.npy", match="x.mcz: corrupt .mcz: a jpeg2000 stream is 24×20")


@pytest.mark.parametrize("knob", [float("inf"), float("nan"), None, [3], "3", 1e9, -1, 2.5])
def test_junk_jpegls_knob(refused, tmp_path, knob):
    (tmp_path / "x.mcz").write_bytes(_file("jpegls", knob=knob))
    refused("decompress", tmp_path / "x.mcz", tmp_path / "x.nii.gz", match="x.mcz: .mcz header: jpegls quality")


@pytest.mark.parametrize("shape", [[480], [1, 2, 12, 20]])
@pytest.mark.parametrize("out", ["x.dcm", "x.mha", "x.nrrd", "x.png"])
def test_shapes_no_writer_takes(refused, tmp_path, shape, out):
    (tmp_path / "x.mcz").write_bytes(_file(shape=shape))
    refused("decompress", tmp_path / "x.mcz", tmp_path / out, match="shape .* medcomp writes 2-D and 3-D images only")


@pytest.mark.parametrize("out", ["x.nrrd", "x.mha", "x.nii.gz", "x.dcm", "x.png"])
def test_big_endian_dtype_decodes_to_its_values(cli, tmp_path, out):
    values = np.add.outer(np.arange(24), np.arange(20)).astype(np.uint16) * 9
    header = {"shape": [24, 20], "dtype": ">u2", "spacing": [1.0, 1.0]}
    c = Container("deflate", header, {"voxels": zlib.compress(values.astype(">u2").tobytes())})
    (tmp_path / "x.mcz").write_bytes(c.to_bytes())
    code, _, err = cli("decompress", tmp_path / "x.mcz", tmp_path / out)
    assert code == 0, err
    from medcomp.data.readers import read_image

    np.testing.assert_array_equal(read_image(tmp_path / out).array, values)


def _with_jpegls_size(rows: int, cols: int) -> bytes:
    """A real JPEG-LS file whose frame header (SOF55) claims rows × cols."""
    c = Container.from_bytes(_file("jpegls"))
    stream = bytearray(c.sections["stream"])
    sof = stream.index(b"\xff\xf7")
    stream[sof + 5 : sof + 9] = struct.pack(">HH", rows, cols)
    return Container(c.codec, c.header, {"index": np.array([len(stream)], "<u4").tobytes(),
                                         "stream": bytes(stream)}).to_bytes()


def test_jpegls_stream_claiming_another_size_is_refused_before_decoding():
    assert "a jpegls stream is 60000×60000" in one_line_error(_with_jpegls_size(60000, 60000))


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_video_stream_claiming_a_larger_frame_is_refused_before_decoding(codec):
    """A stream of 1024² frames behind a header for 24×20: FFmpeg refuses it (max_pixels) before allocating."""
    big = get_codec(codec, preset="ultrafast").encode(
        Image(np.add.outer(np.arange(1024), np.arange(1024)).astype(np.uint16)), Target(ratio=50))
    small = Container.from_bytes(_file(codec))
    header = {**small.header, "stream_bytes": len(big.sections["stream"])}
    one_line_error(Container(codec, header, big.sections).to_bytes())


def test_forged_nifti_gz_is_refused_before_inflating(refused, tmp_path):
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 256))
    header.set_data_dtype(np.int16)
    raw = header.binaryblock + b"\0" * 4
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(raw + b"\0" * 64))
    refused("compress", tmp_path / "bomb.nii.gz", tmp_path / "x.mcz", "--codec", "deflate", "--ratio", "1",
            match="bomb.nii.gz: header claims .* more than .* compressed bytes can hold")
