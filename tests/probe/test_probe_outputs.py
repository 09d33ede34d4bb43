"""Outputs, signals, overrides, disks and sizes (issue 35, build 5): every case ends in a result or one line, and
leaves no output behind."""

import errno
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from medcomp.metrics import quality
from tests.conftest import ROOT


def _ramp(tmp_path, name="a.npy", shape=(64, 64), dtype=np.uint16):
    rng = np.random.default_rng(0)
    np.save(tmp_path / name, (np.add.outer(np.arange(shape[-2]), np.arange(shape[-1])) * 5
                              + rng.integers(0, 40, shape)).astype(dtype))
    return tmp_path / name


BAD_OVERRIDES = [("model.no_such_key=5", "model.no_such_key"), ("model.fit_steps", "expected KEY=VALUE"),
                 ("model.fit_steps=-3", "model.fit_steps=-3: must be a positive integer"),
                 ("model.fit_steps=abc", "model.fit_steps=abc: must be a positive integer"),
                 ("data.block_size=[0,0,0]", "data.block_size=.*positive integers"),
                 ("data.block_size=[8,8]", r"data.block_size=\[8, 8\]: 2 axes, the image is 3-D"),
                 ("model.depth=0", "model.depth=0: must be a positive integer"),
                 ("trainer=nonexistent", "trainer/nonexistent"),
                 ("model=unicompress", "the model of codec 'siren' cannot be switched"),
                 ("data=msd_liver", "the data of codec 'siren' cannot be switched")]


@pytest.mark.parametrize("override,match", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_overrides_are_one_line_naming_the_key(refused, tmp_path, override, match):
    volume = _ramp(tmp_path, "v.npy", (8, 16, 16), np.int16)
    refused("compress", volume, tmp_path / "x.mcz", "--codec", "siren", "--ratio", "4", "-o", override, match=match)


def test_disk_without_room_is_refused_before_the_work(refused, tmp_path, monkeypatch):
    import shutil

    from medcomp.codecs import classical

    image = _ramp(tmp_path)
    monkeypatch.setattr(classical.SliceCodec, "encode", lambda *a: pytest.fail("encoded before the disk check"))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    refused("compress", image, tmp_path / "x.mcz", "--codec", "jpeg2000", "--ratio", "8",
            match="x.mcz: 0 MiB free on the disk, the output may need up to")


def test_inode_table_full_is_refused_before_a_series_is_written(refused, cli, tmp_path, monkeypatch):
    volume = _ramp(tmp_path, "v.npy", (6, 16, 16), np.int16)
    assert cli("compress", volume, tmp_path / "v.mcz", "--codec", "deflate", "--ratio", "1")[0] == 0
    real = os.statvfs

    class Full:
        def __init__(self, s):
            self.__dict__.update({k: getattr(s, k) for k in dir(s) if k.startswith("f_")})
            self.f_favail = 3

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    refused("decompress", tmp_path / "v.mcz", tmp_path / "series/", match="3 free inodes on the disk, the output needs 8")


def test_a_write_that_fails_names_the_output_and_leaves_nothing(tmp_path):
    """A real failing write: the file-size limit (RLIMIT_FSIZE) stops the .mcz at 4 KB, as a full disk would."""
    image = _ramp(tmp_path, shape=(128, 128))
    (tmp_path / "out").mkdir()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    r = subprocess.run([sys.executable, "-m", "medcomp.cli", "compress", image, tmp_path / "out" / "x.mcz",
                        "--codec", "deflate", "--ratio", "1"], cwd=ROOT, capture_output=True, text=True,
                       preexec_fn=limit, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"medcomp: error: {tmp_path / 'out' / 'x.mcz'}: cannot write "
                                             f"({os.strerror(errno.EFBIG)})"]
    assert list((tmp_path / "out").iterdir()) == []


def test_names_the_file_system_cannot_hold_are_refused_before_the_work(refused, tmp_path):
    image = _ramp(tmp_path)
    refused("compress", image, tmp_path / ("n" * 256 + ".mcz"), "--codec", "jpeg2000", "--ratio", "8",
            match="a name is longer than this file system's limit of 255 bytes")
    # a 250-character name fits, and is written: it used to fail after the encode, on its temporary name (268 bytes)
    from medcomp.cli import main

    assert main(["compress", str(image), str(tmp_path / ("n" * 250 + ".mcz")), "--codec", "jpeg", "--ratio", "4"]) == 0
    assert (tmp_path / ("n" * 250 + ".mcz")).stat().st_size > 0


def test_sigterm_ends_a_compress_at_once_and_leaves_nothing(tmp_path):
    """SIGTERM while a learned codec computes (native calls: a Python handler would wait for them to return)."""
    image = _ramp(tmp_path, shape=(3000, 3000))  # a radiograph's size: its encode takes far longer than the wait
    (tmp_path / "out").mkdir()
    p = subprocess.Popen([sys.executable, "-m", "medcomp.cli", "compress", image, tmp_path / "out" / "x.mcz",
                          "--codec", "cal_vae", "--bpp", "2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(6)  # imports, reading, into the network
    assert p.poll() is None, "the compress ended before the signal: make the image larger"
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    assert time.monotonic() - t0 < 5
    assert p.returncode in (-signal.SIGTERM, 130)
    assert list((tmp_path / "out").iterdir()) == []


def test_banded_metrics_equal_whole_slice_metrics(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4000, (300, 257)).astype(np.uint16)
    b = np.clip(a.astype(np.int32) + rng.integers(-60, 60, a.shape), 0, None).astype(np.uint16)
    whole = quality.ssim(a, b), quality.psnr(a, b)
    monkeypatch.setattr(quality, "CHUNK_VOXELS", 5000)  # bands of ~9 rows, with an 11-px window's halo
    banded = quality.ssim(a, b), quality.psnr(a, b)
    assert banded == pytest.approx(whole, rel=1e-12)


@pytest.mark.slow
def test_a_20000_square_tiff_compresses_in_bounded_memory(tmp_path):
    """A 400 MB uint8 slice in a ~0.5 MB zlib TIFF took 24.3 GB (the OOM killer): metrics now tile the slice."""
    import tifffile

    a = np.zeros((20000, 20000), np.uint8)
    a[::7, ::5] = 200
    a[5000:6000, 3000:9000] = 90
    tifffile.imwrite(tmp_path / "big.tif", a, compression="zlib")
    del a
    (tmp_path / "out").mkdir()
    r = subprocess.run([sys.executable, "-m", "medcomp.cli", "compress", tmp_path / "big.tif",
                        tmp_path / "out" / "big.mcz", "--codec", "deflate", "--ratio", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    assert peak < 3 * 2**30, f"peak {peak / 2**30:.1f} GiB"  # measured 1.7 GiB: the slice ~4 times over
    assert '"psnr": Infinity' in r.stdout
