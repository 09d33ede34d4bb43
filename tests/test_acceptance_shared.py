"""The issue's acceptance commands on the shared real CT (slow; `make test-full`). Skipped without ../shared/data."""

import json

import pytest

from medcomp.data.readers import read_image
from medcomp.metrics import psnr
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_siren_ratio_64_decoded_elsewhere(shared, tmp_path):
    src = shared / "ct" / "abdomen_ct_122x101x112.nii.gz"
    r = run_cli("compress", src, tmp_path / "a.mcz", "--codec", "siren", "--ratio", 64, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    reported = json.loads(r.stdout.strip().splitlines()[-1])
    assert run_cli("decompress", tmp_path / "a.mcz", tmp_path / "a.nii.gz").returncode == 0
    original, decoded = read_image(src), read_image(tmp_path / "a.nii.gz")
    assert psnr(original.array, decoded.array) == pytest.approx(reported["psnr"], abs=0.01)
    info = json.loads(run_cli("info", tmp_path / "a.mcz").stdout)
    assert info["ratio"] == pytest.approx(original.nbytes / (tmp_path / "a.mcz").stat().st_size)
    assert 64 <= info["ratio"] <= 64 * 1.03


@pytest.mark.parametrize("codec", ["jpeg2000", "hevc"])
def test_classical_ratio_128_within_5_percent(shared, tmp_path, codec):
    src = shared / "ct" / "abdomen_ct_122x101x112.nii.gz"
    r = run_cli("compress", src, tmp_path / "a.mcz", "--codec", codec, "--ratio", 128)
    assert r.returncode == 0, r.stderr[-2000:]
    original = read_image(src)
    assert original.nbytes / (tmp_path / "a.mcz").stat().st_size == pytest.approx(128, rel=0.05)


def test_dicom_series_with_jpeg2000_transfer_syntax(shared):
    img = read_image(shared / "ct" / "abdomen_ct_dicom_series")
    assert img.array.shape == (20, 512, 512) and img.array.dtype.kind == "i"
    assert img.array.min() < -900  # HU, air
    assert img.spacing[0] == pytest.approx(2.0, abs=0.05)
