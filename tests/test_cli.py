"""The CLI in separate processes: compress, then decompress elsewhere; info; corruption; bad input."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from medcomp.data.readers import read_image
from medcomp.metrics import psnr
from tests.conftest import ROOT, run_cli, smooth_volume


@pytest.fixture
def ct_nifti(tmp_path):
    vol = smooth_volume((10, 48, 52))
    nib.save(nib.Nifti1Image(vol.T.copy(), np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / "ct.nii.gz")
    return tmp_path / "ct.nii.gz", vol


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("codec", ["jpeg2000", "hevc"])
def test_compress_decompress_info_round_trip(tmp_path, ct_nifti, codec):
    src, vol = ct_nifti
    r = run_cli("compress", src, tmp_path / "a.mcz", "--codec", codec, "--ratio", 20)
    assert r.returncode == 0, r.stderr
    reported = last_json(r.stdout)
    r = run_cli("decompress", tmp_path / "a.mcz", tmp_path / "a.nii.gz")
    assert r.returncode == 0, r.stderr
    decoded = read_image(tmp_path / "a.nii.gz")
    assert decoded.array.dtype == vol.dtype and decoded.spacing == pytest.approx((2.0, 0.8, 0.8))
    assert psnr(vol, decoded.array) == pytest.approx(reported["psnr"], abs=0.01)
    info = json.loads(run_cli("info", tmp_path / "a.mcz").stdout)
    size = (tmp_path / "a.mcz").stat().st_size
    assert info["bytes"] == size and info["codec"] == codec
    assert info["ratio"] == pytest.approx(vol.nbytes / size) == pytest.approx(reported["ratio_actual"])
    assert info["ratio"] == pytest.approx(20, rel=0.05)


def test_siren_cli_same_numbers_in_another_process(tmp_path, ct_nifti):
    src, vol = ct_nifti
    r = run_cli("compress", src, tmp_path / "s.mcz", "--codec", "siren", "--ratio", 16,
                "-o", "model.fit_steps=100", "-o", "data.block_size=[10,24,26]")
    assert r.returncode == 0, r.stderr[-2000:]
    reported = last_json(r.stdout)
    assert run_cli("decompress", tmp_path / "s.mcz", tmp_path / "s.npy").returncode == 0
    decoded = np.load(tmp_path / "s.npy")
    assert psnr(vol, decoded) == pytest.approx(reported["psnr"], abs=0.01)
    assert vol.nbytes / (tmp_path / "s.mcz").stat().st_size == pytest.approx(reported["ratio_actual"])
    assert 16 <= reported["ratio_actual"] <= 16 * 1.03


def test_flipped_byte_fails_and_writes_nothing(tmp_path, ct_nifti):
    src, _ = ct_nifti
    assert run_cli("compress", src, tmp_path / "a.mcz", "--codec", "jpeg2000", "--ratio", 20).returncode == 0
    data = bytearray((tmp_path / "a.mcz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "bad.mcz").write_bytes(bytes(data))
    r = run_cli("decompress", tmp_path / "bad.mcz", tmp_path / "out.nii.gz")
    assert r.returncode == 2
    assert "corrupt" in r.stderr and "bad.mcz" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.nii.gz").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("case", ["missing", "truncated_nifti", "nan", "4d"])
def test_bad_input_one_line_exit_2_no_output(tmp_path, ct_nifti, case):
    src, _ = ct_nifti
    if case == "missing":
        bad = tmp_path / "nope.nii.gz"
    elif case == "truncated_nifti":
        bad = tmp_path / "t.nii.gz"
        bad.write_bytes(src.read_bytes()[:200])
    elif case == "nan":
        bad = tmp_path / "nan.npy"
        a = np.ones((16, 16), np.float32)
        a[0, 0] = np.inf
        np.save(bad, a)
    else:
        bad = tmp_path / "4d.npy"
        np.save(bad, np.zeros((2, 2, 8, 8), np.int16))
    r = run_cli("compress", bad, tmp_path / "o.mcz", "--codec", "jpeg2000", "--ratio", 10)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medcomp: error: ") and bad.name in lines[0]
    assert not (tmp_path / "o.mcz").exists()


def test_png_output_refuses_signed_data(tmp_path, ct_nifti):
    src, _ = ct_nifti
    run_cli("compress", src, tmp_path / "a.mcz", "--codec", "jpeg2000", "--ratio", 10)
    r = run_cli("decompress", tmp_path / "a.mcz", tmp_path / "a.png")
    assert r.returncode == 2 and "PNG" in r.stderr
    assert not (tmp_path / "a.png").exists()


def test_bench_rd_writes_json_and_plot(tmp_path, ct_nifti):
    src, _ = ct_nifti
    r = run_cli("bench", "rd", "--input", src, "--codecs", "jpeg2000", "hevc", "--ratios", 8, 16, 32, 64,
                "--reference", "jpeg2000", "--name", "t", "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "t.json").read_text())
    assert set(res["curves"]) == {"jpeg2000", "hevc"} and len(res["curves"]["hevc"]) == 4
    assert "bd_rate" in res["bd_vs_reference"]["hevc"] and res["command"]
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_bd_metrics_known_shift_and_refusal():
    from medcomp.bench import bd_metrics

    ref = [{"bpp": b, "psnr": 30 + 10 * __import__("math").log10(b)} for b in (0.25, 0.5, 1, 2)]
    better = [{"bpp": p["bpp"], "psnr": p["psnr"] + 1.0} for p in ref]
    res = bd_metrics(ref, better)
    assert res["bd_psnr"] == pytest.approx(1.0, abs=1e-6)
    assert res["bd_rate"] == pytest.approx((10 ** (-1 / 10) - 1) * 100, abs=0.5)  # 1 dB at 10 dB/decade
    far = [{"bpp": p["bpp"] * 100, "psnr": p["psnr"] + 40} for p in ref]
    assert bd_metrics(ref, far)["bd_rate"] is None
    # A saturated curve (PSNR not rising with rate) still has a BD-PSNR but no BD-rate, and says why.
    flat = [{"bpp": p["bpp"], "psnr": v} for p, v in zip(ref, (28.0, 27.5, 29.0, 28.5))]
    res = bd_metrics(ref, flat)
    assert res["bd_rate"] is None and "not computable" in res["notes"]["bd_rate"]
    assert res["bd_psnr"] is not None and res["bd_psnr"] < 0


def test_classical_codec_does_not_import_the_learned_models():
    """Each codec's module is imported on first use of its name: a JPEG 2000 call stays light."""
    code = ("import sys; from medcomp.codecs.registry import get_codec, is_fitted, is_trained;"
            "get_codec('jpeg2000'); assert not is_fitted('hevc') and not is_trained('jpeg2000');"
            "print(sorted(m for m in ('compressai', 'lightning', 'medcomp.models.compression.unicompress') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_bench_rd_never_writes_over_its_input_or_outside_its_folder(tmp_path):
    """`bench rd --name rd --out-dir .` beside rd.png replaced the image with its plot, and `--name ../x` wrote outside
    --out-dir (issue 35): both are one line, exit 2, before any encoding; the input is untouched."""
    from PIL import Image as PILImage

    src = tmp_path / "rd.png"
    PILImage.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype("uint8")).save(src)
    before = src.read_bytes()
    common = ["bench", "rd", "--input", src, "--codecs", "jpeg2000", "jpeg", "--ratios", "4", "8"]
    r = run_cli(*common, "--name", "rd", "--out-dir", tmp_path)
    assert r.returncode == 2 and src.read_bytes() == before
    assert r.stderr.strip().splitlines()[-1] == f"medcomp: error: {src}: the output is the input file; choose another output path"
    r = run_cli(*common, "--name", "../escaped", "--out-dir", tmp_path / "out")
    assert r.returncode == 2 and "a file name without folders" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "escaped.json").exists() and not (tmp_path / "escaped.png").exists()
    r = run_cli(*common, "--name", "ok", "--out-dir", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.json", "ok.png"]
