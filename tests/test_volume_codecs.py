"""SPERR, SZ3, ZFP (whole-volume error-bounded codecs) and HTJ2K (issue 36): round trips on real data of every kind
the harness reads, with the geometry kept, the file under its ceiling, and the quality their papers lead one to
expect; each decoder refuses a file whose stream and header disagree."""

import numpy as np
import pytest

from medcomp.codecs.container import Container
from medcomp.codecs.registry import decode_container, get_codec
from medcomp.data.block_datamodules import sample_files
from medcomp.data.image import Image
from medcomp.data.readers import read_image
from medcomp.errors import MedcompError
from medcomp.metrics import psnr
from medcomp.target import Target

NEW = ["sperr", "sz3", "zfp", "htj2k"]
# PSNR floors at CR 8 (CT, series, radiograph) and on a noisy uint8 stack at CR 2, from measured values with a
# margin: ZFP's fixed rate spends bits evenly over 4³ blocks (32 dB on the DICOM series, 27.6 dB on the EM stack)
FLOOR = {"sperr": (35, 30), "sz3": (35, 30), "zfp": (28, 25), "htj2k": (35, 30)}


def _inputs(shared):
    ct = read_image(shared / "ct" / "abdomen_ct_122x101x112.nii.gz")
    series = read_image(shared / "ct" / "abdomen_ct_dicom_series")
    cxr = read_image(shared / "cxr" / "samples" / "00000001_000.png")
    radiograph = read_image(sample_files(["RG1_UNCR.dcm"])[0])  # CR chest, 1955×1841, 15-bit
    em = read_image(shared / "em" / "isbi2012" / "train" / "image")  # serial-section EM, 30 × 512², uint8
    return {"abdomen_ct": ct, "dicom_series": series.like(np.ascontiguousarray(series.array[:, ::2, ::2])),
            "cxr": cxr, "radiograph_15bit": radiograph, "em_stack": em.like(np.ascontiguousarray(em.array[:6]))}


@pytest.mark.parametrize("codec", NEW)
def test_round_trips_keep_geometry_and_meet_the_ceiling(shared, codec):
    for name, image in _inputs(shared).items():
        if image.ndim not in get_codec(codec).accepts.ndims:
            with pytest.raises(MedcompError, match=f"codec '{codec}' codes 3-D images"):
                get_codec(codec).encode(image, Target(ratio=8))
            continue
        target = Target(ratio=8)
        container = get_codec(codec).encode(image, target)
        data = container.to_bytes()
        assert len(data) <= target.target_bytes(image), (name, len(data))
        decoded = decode_container(Container.from_bytes(data))
        assert decoded.array.dtype == image.array.dtype and decoded.array.shape == image.array.shape
        assert decoded.spacing == image.spacing and decoded.origin == image.origin
        assert decoded.direction == image.direction and decoded.rescale == image.rescale
        assert image.array.min() <= decoded.array.min() and decoded.array.max() <= image.array.max()
        # EM texture at CR 8: SPERR 31.0, SZ3 26.8, ZFP 19.4 dB
        floor = ({"zfp": 18}.get(codec, 24)) if name == "em_stack" else FLOOR[codec][0]
        assert psnr(image.array, decoded.array) > floor, (name, psnr(image.array, decoded.array))


def test_sperr_beats_slice_by_slice_jpeg2000_at_high_ratios(shared):
    """The reason to have it: at CR 256 a 3-D wavelet codec uses the third axis (issue 36: 37.35 dB)."""
    ct = _inputs(shared)["abdomen_ct"]
    got = {c: psnr(ct.array, decode_container(get_codec(c).encode(ct, Target(ratio=256))).array)
           for c in ("sperr", "jpeg2000")}
    assert got["sperr"] > got["jpeg2000"] + 2 and got["sperr"] > 36


@pytest.mark.parametrize("codec", ["sperr", "zfp"])
def test_bits_per_value_codecs_fill_their_budget(shared, codec):
    """SPERR's bpp mode wrote up to 12 % less than asked on the EM stack (CR 1024 → 1163), ZFP's rate comes in steps:
    the file is under its ceiling and within 3 % of it where the knob reaches it (ZFP's steps and floor excepted)."""
    em = read_image(shared / "em" / "isbi2012" / "train" / "image")
    em = em.like(np.ascontiguousarray(em.array[:, 128:384, 128:384]))
    for ratio in (16, 256, 1024) if codec == "sperr" else (10,):
        budget = Target(ratio=ratio).target_bytes(em)
        size = len(get_codec(codec).encode(em, Target(ratio=ratio)).to_bytes())
        assert 0.97 * budget <= size <= budget, (ratio, size / budget)


@pytest.mark.parametrize("codec", NEW)
def test_em_stack_uint8(codec):
    rng = np.random.default_rng(0)
    stack = (np.add.outer(np.arange(48), np.arange(40))[None] + rng.integers(0, 30, (6, 48, 40))).astype(np.uint8)
    image = Image(stack, (40.0, 4.0, 4.0), name="em")
    decoded = decode_container(get_codec(codec).encode(image, Target(ratio=2))).array
    assert decoded.dtype == np.uint8 and psnr(stack, decoded) > FLOOR[codec][1]


@pytest.mark.parametrize("codec", ["sperr", "sz3", "zfp"])
def test_a_stream_for_another_shape_is_refused(codec):
    a = Image(np.stack([np.add.outer(np.arange(24), np.arange(20)).astype(np.uint16) * 9] * 3), name="a")
    b = Image(np.stack([np.add.outer(np.arange(20), np.arange(24)).astype(np.uint16) * 9] * 3), name="b")
    ca, cb = (get_codec(codec).encode(i, Target(ratio=2)) for i in (a, b))
    crafted = Container(codec, ca.header, cb.sections)  # 20×24's stream behind 24×20's header (lengths agree)
    crafted.header["stream_bytes"] = len(cb.sections["stream"])
    with pytest.raises(MedcompError):
        decode_container(Container.from_bytes(crafted.to_bytes()))


def test_a_decoder_that_crashes_or_hangs_is_a_corrupt_file(monkeypatch):
    """The volume decoders run in a forked child: SPERR's aborts and SZ3's segfaults on some damaged streams."""
    import os
    import time

    from medcomp.codecs import volume
    from medcomp.errors import CorruptFileError

    with pytest.raises(CorruptFileError, match="the decoder failed: signal 6"):
        volume.in_child_process(lambda out: os.abort(), (4,), np.float64)
    monkeypatch.setattr(volume, "CHILD_TIMEOUT_S", 0.5)
    with pytest.raises(CorruptFileError, match="did not finish in 0.5 s"):
        volume.in_child_process(lambda out: time.sleep(30), (4,), np.float64)
    assert volume.in_child_process(lambda out: out.__setitem__(..., 3.0), (2, 2), np.float32).tolist() == [[3.0] * 2] * 2
