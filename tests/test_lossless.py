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
    assert set(LOSSLESS) == {"deflate", "jpegls", "jpeg2000", "htj2k", "jpegxl", "zfp"}
    assert set(BOUNDED) == {"deflate", "jpegls", "sz3", "zfp", "sperr"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("codec", LOSSLESS)
def test_lossless_is_bit_exact_or_refused(codec, dtype):
    values = noise(dtype)
    image = Image(values, (2.0, 0.5, 0.5), name="noise")
    try:
        container = get_codec(codec).encode_bounded(image, 0.0)
    except MedcompError as exc:  # only what the codec cannot keep: floats, or integers wider than its bits
        assert dtype in ("float32", "int32") and codec not in ("deflate", "zfp"), str(exc)
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
    refused("compress", tmp_path / "noise.npy", tmp_path / "y.mcz", "--codec", "hevc", "--lossless",
            match="codec 'hevc' cannot guarantee a lossless file")
    refused("compress", tmp_path / "noise.npy", tmp_path / "y.mcz", "--codec", "jpeg2000", "--max-error", "2",
            match="codec 'jpeg2000' cannot guarantee an error bound")
    np.save(tmp_path / "f.npy", noise("float32", (32, 32)))
    refused("compress", tmp_path / "f.npy", tmp_path / "y.mcz", "--codec", "jpegls", "--lossless",
            match="float32 image .* cannot be kept exactly")
