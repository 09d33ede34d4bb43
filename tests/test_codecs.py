"""Every codec round-trips 16-bit data through a real .mcz file at a requested rate."""

import numpy as np
import pytest

from medcomp.codecs.container import Container
from medcomp.codecs.mapping import from_unsigned, to_unsigned
from medcomp.codecs.registry import decode_container, get_codec
from medcomp.data.image import Image
from medcomp.metrics import psnr
from medcomp.target import Target, fit_to_budget
from tests.conftest import smooth_volume

CT = Image(smooth_volume((64, 72), dtype=np.int16, lo=-1024, hi=3000), (0.7, 0.7), name="ct")
CR16 = Image(smooth_volume((64, 64), dtype=np.uint16, lo=100, hi=60000, seed=3), None, name="cr16")
VOL = Image(smooth_volume((6, 40, 44), dtype=np.int16), (2.0, 0.8, 0.8), name="vol")


def round_trip(codec_name, image, target):
    container = get_codec(codec_name).encode(image, target)
    data = container.to_bytes()
    decoded = decode_container(Container.from_bytes(data))
    return data, decoded


@pytest.mark.parametrize("codec", ["jpeg2000", "jpegxl", "h264", "hevc"])
@pytest.mark.parametrize("image", [CT, CR16, VOL], ids=lambda im: im.name)
def test_rate_controlled_codecs_hit_the_ratio(codec, image):
    data, decoded = round_trip(codec, image, Target(ratio=12))
    assert decoded.array.dtype == image.array.dtype and decoded.array.shape == image.array.shape
    assert 12 <= image.nbytes / len(data) < 12 * 1.08  # a ceiling on the bytes, close to it
    assert psnr(image.array, decoded.array) > 30
    if image.spacing:
        assert decoded.spacing == image.spacing


@pytest.mark.parametrize("codec", ["jpeg", "jpegls"])
def test_limited_range_codecs_round_trip(codec):
    data, decoded = round_trip(codec, CT, Target(ratio=6))
    assert decoded.array.dtype == np.int16
    assert 6 <= image_ratio(CT, data) < 6 * 1.1  # integer quality / NEAR steps: the highest quality that fits
    assert psnr(CT.array, decoded.array) > 35


def image_ratio(image, data):
    return image.nbytes / len(data)


def test_jpegls_near_zero_is_lossless():
    codec = get_codec("jpegls")
    coded, mapping = to_unsigned(CT.array, 16)
    c = codec._container(CT, coded, mapping, 0)
    np.testing.assert_array_equal(decode_container(Container.from_bytes(c.to_bytes())).array, CT.array)


def test_bpp_target():
    data, _ = round_trip("jpeg2000", CT, Target(bpp=1.0))
    assert 0.92 < 8 * len(data) / CT.array.size <= 1.0


def test_mapping_is_exact_for_integer_data_that_fits():
    coded, mapping = to_unsigned(CT.array, 16)
    assert mapping["scale"] == 1.0
    np.testing.assert_array_equal(from_unsigned(coded, mapping), CT.array)
    coded12, mapping12 = to_unsigned(CR16.array, 12)
    assert coded12.max() <= 4095 and mapping12["scale"] > 1
    assert np.abs(from_unsigned(coded12, mapping12) - CR16.array).max() <= mapping12["scale"] / 2 + 1e-9


def test_fit_to_budget_takes_the_largest_output_that_fits():
    """The one rate control: a ceiling. Real knobs by bisection, integer ones exactly; the smallest output's knob
    when nothing fits."""
    assert fit_to_budget(lambda k: int(k * 1000), 4321, 0.0, 10.0) == pytest.approx(4.321, abs=0.001)
    assert int(fit_to_budget(lambda k: int(k * 1000), 4321, 0.0, 10.0) * 1000) <= 4321
    assert fit_to_budget(lambda k: 100 - k, 60, 0, 100, increasing=False, integer=True) == 40
    assert fit_to_budget(lambda k: 3 * k, 61, 1, 95, integer=True) == 20  # 60 fits, 63 does not
    assert fit_to_budget(lambda k: 100 - k, 5, 0, 90, increasing=False, integer=True) == 90  # nothing fits
    assert fit_to_budget(lambda k: k, 1e9, 1, 95, integer=True) == 95  # everything fits


def test_unknown_codec():
    from medcomp.errors import MedcompError

    with pytest.raises(MedcompError, match="unknown codec 'webp'"):
        get_codec("webp")


@pytest.mark.parametrize("image", [CT, CR16, VOL], ids=lambda im: im.name)
def test_deflate_is_lossless(image):
    data, decoded = round_trip("deflate", image, Target(ratio=8))
    assert np.array_equal(decoded.array, image.array) and decoded.array.dtype == image.array.dtype
    assert decoded.spacing == image.spacing
    assert get_codec("deflate").is_lossless(Container.from_bytes(data))


def test_docs_add_a_codec_example_is_the_shipped_codec():
    """docs/adding-a-codec.md's 20-line example is medcomp/codecs/deflate.py and conf/codec/deflate.yaml, word for word."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    section = (root / "docs" / "adding-a-codec.md").read_text().split("## Adding a codec", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    assert python.strip() in (root / "medcomp" / "codecs" / "deflate.py").read_text()
    assert yaml.strip() == (root / "conf" / "codec" / "deflate.yaml").read_text().strip()
    code = [line for line in python.splitlines() if line.strip() and not line.lstrip().startswith(("import", "from"))]
    assert len(code) <= 20


def test_a_codecs_id_is_its_yaml_file_name(tmp_path, monkeypatch):
    """Every registered codec builds with its file name as its name; a YAML that names it otherwise is refused."""
    from medcomp.codecs import registry
    from medcomp.errors import MedcompError

    for name in registry.available_codecs():
        assert registry.get_codec(name).name == name
    (tmp_path / "jpeg2.yaml").write_text("_target_: medcomp.codecs.classical.JPEG\n")  # a class named 'jpeg'
    (tmp_path / "fit2.yaml").write_text("_target_: medcomp.codecs.fitted.FittedCodec\nname: siren\ndecoder: x.y\n")
    monkeypatch.setattr(registry, "CODEC_DIR", tmp_path)
    registry.codec_config.cache_clear()
    try:
        with pytest.raises(MedcompError, match=r"conf/codec/jpeg2.yaml builds a codec named 'jpeg'"):
            registry.get_codec("jpeg2")
        with pytest.raises(MedcompError, match=r"conf/codec/fit2.yaml sets 'name'"):
            registry.get_codec("fit2")
    finally:
        registry.codec_config.cache_clear()
