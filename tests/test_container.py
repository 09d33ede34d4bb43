import pytest

from medcomp.codecs.container import MAGIC, Container, read_container
from medcomp.errors import CorruptFileError, MedcompError


def make():
    return Container("jpeg2000", {"shape": [4, 5], "dtype": "<i2", "knob": 40.5}, {"index": b"\x01\x02", "stream": b"x" * 100})


def test_round_trip():
    c = make()
    back = Container.from_bytes(c.to_bytes())
    assert back.codec == "jpeg2000"
    assert back.header == c.header
    assert back.sections == c.sections


def test_starts_with_magic_and_is_compact():
    data = make().to_bytes()
    assert data.startswith(MAGIC)
    # magic 4 + version/len 3 + codec 8 + header len 4 + header + count 2 + 2 sections framing + payload + crc 4
    header_len = len(b'{"dtype":"<i2","knob":40.5,"shape":[4,5]}')
    assert len(data) == 4 + 3 + 8 + 4 + header_len + 2 + (1 + 5 + 8 + 2) + (1 + 6 + 8 + 100) + 4


@pytest.mark.parametrize("pos", [0, 5, 20, -10, -1])
def test_flipped_byte_is_detected(pos):
    data = bytearray(make().to_bytes())
    data[pos] ^= 0x40
    with pytest.raises(CorruptFileError):
        Container.from_bytes(bytes(data))


def test_truncated_is_detected():
    data = make().to_bytes()
    for n in (0, 3, 10, len(data) - 1):
        with pytest.raises(CorruptFileError):
            Container.from_bytes(data[:n])


def test_error_names_the_file(tmp_path):
    p = tmp_path / "x.mcz"
    p.write_bytes(b"MCZ\x89garbage")
    with pytest.raises(CorruptFileError, match="x.mcz"):
        read_container(p)
    with pytest.raises(MedcompError, match="no such file"):
        read_container(tmp_path / "missing.mcz")
