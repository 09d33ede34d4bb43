"""--lossless and --max-error (issue 36, build 2): bit-exact round trips for every codec and dtype it accepts, bounds
checked on the decode, and a one-line refusal for what a codec cannot keep exactly (never an approximation)."""

import numpy as np
import pytest

from medcomp.codecs.container import Container
from medcomp.codecs.registry import available_codecs, codec_class, decode_container, get_codec
from medcomp.data.image import Image
from medcomp.errors import MedcompError

LOSSLESS = [n for n in available_codecs() if codec_class(n).lossless]
BOUNDED = [n for n in available_codecs() if codec_class(n).bounds_error]
DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "float32"]


def noise(dtype: str, shape=(3, 24, 20)) -> np.ndarray:
    """Full-range noise of the dtype (the case whose lossless file is larger than its raw bytes); int32 and float32
    within 16 bits' span, plus a float32 with fractions."""
    rng = np.random.default_rng(0)
    if dtype == "float32":
        return (rng.normal(size=shape) * 300).astype(np.float32)
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -30000), min(info.max, 30000) if dtype == "int32" else info.max
    return rng.integers(lo, hi, shape, endpoint=True).astype(dtype)


def test_the_declared_sets():
    assert set(LOSSLESS) == {"deflate", "jpegls", "jpeg2000", "htj2k", "jpegxl", "zfp", "h264", "hevc"}
    assert set(BOUNDED) == {"deflate", "jpegls", "sz3", "zfp", "sperr"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("codec", LOSSLESS)
def test_lossless_is_bit_exact_or_refused(codec, dtype):
    values = noise(dtype)
    image = Image(values, (2.0, 0.5, 0.5), name="noise")
    try:
        container = get_codec(codec).encode_bounded(image, 0.0)
    except MedcompError as exc:  # only what the codec cannot keep: floats, or integers wider than its bits
        # 16-bit codecs refuse float32 and int32 (30000-wide); H.264 (10 bits) and HEVC (12) the 16-bit noise too
        assert dtype in ("float32", "int32") + (("int16", "uint16") if codec in ("h264", "hevc") else ()), str(exc)
        assert codec not in ("deflate", "zfp"), str(exc)
        assert "cannot be kept exactly" in str(exc)
        return
    decoded = decode_container(Container.from_bytes(container.to_bytes()))
    assert decoded.array.dtype == values.dtype and np.array_equal(decoded.array, values)
    assert get_codec(codec).is_lossless(container)


@pytest.mark.parametrize("bound", [1.0, 4.0, 25.0])
@pytest.mark.parametrize("codec", BOUNDED)
def test_max_error_holds_on_the_decode(codec, bound):
    values = noise("int16") // 4
    decoded = decode_container(get_codec(codec).encode_bounded(Image(values, name="n"), bound)).array
    assert np.max(np.abs(decoded.astype(np.int64) - values)) <= bound


def test_cli_lossless_on_noise_and_refusals(cli, refused, tmp_path):
    np.save(tmp_path / "noise.npy", noise("uint8", (64, 64)))
    (tmp_path / "out").mkdir()
    code, out, err = cli("compress", tmp_path / "noise.npy", tmp_path / "out" / "x.mcz", "--codec", "jpegls",
                         "--lossless")
    assert code == 0, err
    assert '"max_error": 0.0' in out
    assert cli("decompress", tmp_path / "out" / "x.mcz", tmp_path / "out" / "x.npy")[0] == 0
    assert np.array_equal(np.load(tmp_path / "out" / "x.npy"), np.load(tmp_path / "noise.npy"))
    refused("compress", tmp_path / "noise.npy", tmp_path / "y.mcz", "--codec", "jpeg", "--lossless",
            match="codec 'jpeg' cannot guarantee a lossless file")
    refused("compress", tmp_path / "noise.npy", tmp_path / "y.mcz", "--codec", "jpeg2000", "--max-error", "2",
            match="codec 'jpeg2000' cannot guarantee an error bound")
    np.save(tmp_path / "f.npy", noise("float32", (32, 32)))
    refused("compress", tmp_path / "f.npy", tmp_path / "y.mcz", "--codec", "jpegls", "--lossless",
            match="float32 image .* cannot be kept exactly")


def test_video_lossless_keeps_ct_in_12_bits():
    """A CT's HU span (−1024…3071) fits HEVC's 12 bits: x265's lossless mode gives it back exactly, in a file smaller
    than the raw int16 bytes; H.264's 10 bits cannot hold it and refuse."""
    rng = np.random.default_rng(1)
    smooth = np.cumsum(rng.integers(-3, 4, (6, 40, 48)), axis=2)  # compressible, like tissue
    values = np.clip(smooth * 20 + rng.integers(-1024, 3072, (6, 1, 1)), -1024, 3071).astype(np.int16)
    values[0, 0, :2] = -1024, 3071  # the full 12-bit span
    container = get_codec("hevc").encode_bounded(Image(values, name="ct"), 0.0)
    assert container.header["lossless"] is True and len(container.to_bytes()) < values.nbytes
    assert np.array_equal(decode_container(Container.from_bytes(container.to_bytes())).array, values)
    with pytest.raises(MedcompError, match="'h264' keeps 10-bit integers exactly; this int16 image .* cannot be kept"):
        get_codec("h264").encode_bounded(Image(values, name="ct"), 0.0)
