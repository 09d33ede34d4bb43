"""Every codec declares what it accepts and refuses the rest before encoding; none writes a file that decodes
outside the input's range (issue 35, builds 2 and 4)."""

import re
from pathlib import Path

import numpy as np
import pytest

from medcomp.codecs.registry import accepts_table, available_codecs, decode_container, get_codec, is_fitted
from medcomp.data.image import Image
from medcomp.errors import MedcompError
from medcomp.metrics import psnr
from medcomp.target import Target

ROOT = Path(__file__).resolve().parents[2]
CODING = [c for c in available_codecs() if not is_fitted(c)]  # the fitted ones are checked through the CLI below


def ramp(shape, dtype, lo=100, step=7):
    return (lo + np.add.outer(np.arange(shape[-2]), np.arange(shape[-1])) * step).astype(dtype).reshape(shape)


def test_docs_list_what_each_codec_declares():
    readme = (ROOT / "docs" / "command-line.md").read_text()
    table = re.search(r"<!-- accepts:begin -->\n(.*?)\n<!-- accepts:end -->", readme, re.S).group(1)
    assert table == accepts_table()
    assert all(f"`{name}`" in table for name in available_codecs())


@pytest.mark.parametrize("codec", CODING)
@pytest.mark.parametrize("side", [2, 5])
def test_tiny_images_are_refused_or_decode_inside_the_input_range(codec, side):
    """2×2 and 5×5 at a target no codec can reach on so few pixels: a refusal naming the limit, or the coarsest
    output, clipped into the input's range (it used to decode to 32,770 or 2,048)."""
    image = Image(ramp((side, side), np.uint16), name="tiny")
    c = get_codec(codec)
    try:
        container = c.encode(image, Target(ratio=2))
    except MedcompError as exc:
        if 2 not in c.accepts.ndims:  # a volume codec
            assert f"codec '{codec}' codes 3-D images" in str(exc)
            return
        assert f"codec '{codec}' needs slices of at least" in str(exc)
        assert side < c.accepts.min_side
        return
    decoded = decode_container(container, c).array
    assert image.array.min() <= decoded.min() and decoded.max() <= image.array.max()


@pytest.mark.parametrize("codec", ["jpeg2000", "jpeg", "jpegxl", "jpegls", "hevc"])
def test_int8_is_coded_in_its_own_range(codec):
    image = Image(ramp((48, 40), np.int8, lo=-60, step=1), name="i8")
    decoded = decode_container(get_codec(codec).encode(image, Target(ratio=1.5))).array
    assert decoded.dtype == np.int8
    assert psnr(image.array, decoded) > 30  # it was 5.3 dB, every value 127


def test_an_unreachable_target_decodes_inside_the_range_and_says_so(cli, tmp_path):
    """32×32 int8 at CR 4 through JPEG 2000: 256 bytes, less than its header and streams. It used to decode every
    value to 127 with exit 0 and no word; now the coarsest file decodes inside the input's range, with a note."""
    values = ramp((32, 32), np.int8, lo=-60, step=1)
    np.save(tmp_path / "i8.npy", values)
    code, out, err = cli("compress", tmp_path / "i8.npy", tmp_path / "x.mcz", "--codec", "jpeg2000", "--ratio", "4")
    assert code == 0, err
    assert "target CR 4 not reached: jpeg2000 wrote its smallest file" in err
    assert cli("decompress", tmp_path / "x.mcz", tmp_path / "x.npy")[0] == 0
    decoded = np.load(tmp_path / "x.npy")
    assert values.min() <= decoded.min() and decoded.max() <= values.max()


def test_float_range_beyond_float64_is_refused(refused, tmp_path):
    np.save(tmp_path / "huge.npy", np.array([[-1.7e308, 1.7e308], [0.0, 1.0]] * 8).reshape(8, 4).repeat(2, 1))
    for codec in ("jpeg2000", "cal_vae", "siren"):
        refused("compress", tmp_path / "huge.npy", tmp_path / "x.mcz", "--codec", codec, "--bpp", "4",
                match="huge.npy: value range .* is wider than float64")


def test_float_range_beyond_float32_is_refused_by_networks_and_coded_by_the_rest(cli, refused, tmp_path):
    np.save(tmp_path / "wide.npy", np.linspace(-1e300, 1e300, 32 * 32).reshape(32, 32))
    for codec in ("siren", "unicompress", "cal_vae", "rnn_conv"):
        refused("compress", tmp_path / "wide.npy", tmp_path / "x.mcz", "--codec", codec, "--ratio", "4",
                match=f"codec '{codec}' computes in float32")
    (tmp_path / "out").mkdir()
    code, out, err = cli("compress", tmp_path / "wide.npy", tmp_path / "out" / "x.mcz", "--codec", "jpeg2000",
                         "--ratio", "2")
    assert code == 0, err
    assert np.isfinite(float(re.search(r'"psnr": ([^,]+)', out).group(1)))


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-4"])
def test_rate_targets_must_be_positive_and_finite(refused, tmp_path, value):
    np.save(tmp_path / "a.npy", ramp((16, 16), np.uint16))
    refused("compress", tmp_path / "a.npy", tmp_path / "x.mcz", "--codec", "jpeg", "--ratio", value,
            match="rate target must be a positive finite number")


def test_unicompress_on_a_volume_that_is_one_block(cli, tmp_path):
    """One block has no spread to standardise its features by: the fit used to give NaN weights (struct.error)."""
    rng = np.random.default_rng(0)
    volume = (np.add.outer(np.arange(32), np.arange(32))[None] * 10 + rng.integers(0, 50, (32, 32, 32))).astype(np.int16)
    np.save(tmp_path / "one_block.npy", volume)
    code, out, err = cli("compress", tmp_path / "one_block.npy", tmp_path / "x.mcz", "--codec", "unicompress",
                         "--ratio", "8", "-o", "model.fit_steps=30")
    assert code == 0, err
    code, _, err = cli("decompress", tmp_path / "x.mcz", tmp_path / "x.npy")
    assert code == 0, err
    decoded = np.load(tmp_path / "x.npy")
    assert decoded.shape == volume.shape and psnr(volume, decoded) > 10


def test_learned_codecs_refuse_slices_too_small_for_them(refused, tmp_path):
    np.save(tmp_path / "five.npy", ramp((5, 5), np.uint16))
    for codec in ("cal_vae", "rnn_conv", "hevc", "h264"):
        refused("compress", tmp_path / "five.npy", tmp_path / "x.mcz", "--codec", codec, "--ratio", "2",
                match=f"codec '{codec}' needs slices of at least 8×8 pixels, this image's are 5×5")
