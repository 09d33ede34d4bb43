"""An image is more than its voxels: world geometry (LPS and oblique), slope/intercept (non-integral too) and
MONOCHROME1 survive a lossless round trip through every format; decoded DICOM validates (dciodvfy) and says when it
is lossy; hospital encodings are read; bad headers, bomb headers and dangerous output paths are one line, exit 2."""

import json
import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage

from medcomp.codecs.container import Container, read_container
from medcomp.data.readers import read_image
from tests.conftest import run_cli, smooth_volume
from tests.test_readers import write_ct_slice


def rotation(ax_deg: float, az_deg: float) -> np.ndarray:
    a, b = np.radians(ax_deg), np.radians(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def oblique_nifti(path, zyx, slope=0.5, inter=-10.25, oblique=True):
    """A NIfTI whose affine is LPS-flipped (RAS x, y negative, as DICOM-converted scans are) and, if asked, oblique,
    with a non-integral scl_slope/scl_inter."""
    spacing = np.array([0.7, 0.8, 2.5])
    rot = rotation(12, 25) if oblique else np.eye(3)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1, -1, 1]) @ rot @ np.diag(spacing)
    affine[:3, 3] = [120.5, -33.25, -410.0]
    img = nib.Nifti1Image(zyx.T.copy(), affine)
    img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


def lossless(tmp_path, src, name="v"):
    mcz = tmp_path / f"{name}.mcz"
    r = run_cli("compress", src, mcz, "--codec", "jpegls", "--ratio", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["psnr"] == float("inf")  # really lossless
    return mcz


def decompress(mcz, out):
    r = run_cli("decompress", mcz, out)
    assert r.returncode == 0, r.stderr
    return r


def world_corners(img: sitk.Image) -> np.ndarray:
    size = img.GetSize()
    corners = [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    return np.array([img.TransformIndexToPhysicalPoint(c) for c in corners])


@pytest.mark.parametrize("oblique", [False, True], ids=["lps", "oblique"])
def test_nifti_geometry_and_rescale_survive_every_writer(tmp_path, oblique):
    vol = smooth_volume((6, 20, 16), dtype=np.int16, lo=0, hi=1020)
    src = oblique_nifti(tmp_path / "in.nii.gz", vol, oblique=oblique)
    mcz = lossless(tmp_path, src)
    ref_nib = nib.load(str(src))
    ref_itk = sitk.ReadImage(str(src))
    # NIfTI: same affine, same real values (the rescale is written back as scl_slope/scl_inter)
    decompress(mcz, tmp_path / "out.nii.gz")
    got = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(got.affine, ref_nib.affine, atol=1e-5)
    np.testing.assert_array_equal(got.get_fdata(), ref_nib.get_fdata())
    assert got.get_fdata().min() == pytest.approx(-10.25) and got.dataobj.slope == pytest.approx(0.5)
    np.testing.assert_array_equal(np.asarray(got.dataobj.get_unscaled()), np.asarray(ref_nib.dataobj.get_unscaled()))
    # NRRD / MHA: same voxel -> world mapping (SimpleITK), real values (no rescale field there)
    for suffix in (".nrrd", ".mha"):
        decompress(mcz, tmp_path / f"out{suffix}")
        out = sitk.ReadImage(str(tmp_path / f"out{suffix}"))
        np.testing.assert_allclose(world_corners(out), world_corners(ref_itk), atol=1e-4)
        np.testing.assert_allclose(sitk.GetArrayFromImage(out), ref_nib.get_fdata().T, atol=1e-4)
    # DICOM series: read back by SimpleITK's series reader, slices placed in the same world positions
    decompress(mcz, tmp_path / "series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    series = reader.Execute()
    np.testing.assert_allclose(world_corners(series), world_corners(ref_itk), atol=1e-3)
    back = read_image(tmp_path / "series")
    assert back.rescale == pytest.approx((0.5, -10.25))
    np.testing.assert_array_equal(back.array, np.asarray(ref_nib.dataobj.get_unscaled()).T)


def oblique_series(folder, photometric="MONOCHROME2", slope=1.0, intercept=-1024.0, modality="CT"):
    folder.mkdir()
    rot = rotation(15, -20)
    row, col, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    vol = smooth_volume((5, 24, 20), dtype=np.uint16, lo=0, hi=4000)
    origin = np.array([-80.0, 40.5, 300.25])
    for k in range(vol.shape[0]):  # file names in reverse order of position: the reader must sort by position
        write_ct_slice(folder / f"s{9 - k}.dcm", vol[k], 0.0, "1.2.826.0.1.3680043.8.498.1", k + 1, slope, intercept,
                       position=origin + 3.0 * k * normal, orientation=[*row, *col], photometric=photometric,
                       modality=modality)
    return vol


def test_oblique_dicom_series_monochrome1_and_rescale_round_trip(tmp_path):
    vol = oblique_series(tmp_path / "in", photometric="MONOCHROME1", slope=0.37, intercept=-12.5, modality="CT")
    mcz = lossless(tmp_path, tmp_path / "in")
    decompress(mcz, tmp_path / "out")
    names = sorted((tmp_path / "out").iterdir())
    assert len(names) == 5
    reader = sitk.ImageSeriesReader()
    ref = sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(tmp_path / "in")))
    got = sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(tmp_path / "out")))
    np.testing.assert_allclose(world_corners(got), world_corners(ref), atol=1e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(ref), atol=1e-3)
    for f in names:
        ds = pydicom.dcmread(f)
        assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Modality == "CT"
        assert float(ds.RescaleSlope) == pytest.approx(0.37) and float(ds.RescaleIntercept) == -12.5
        assert ds.LossyImageCompression == "00"  # jpegls at NEAR 0: lossless, and said so
    back = read_image(tmp_path / "out")
    np.testing.assert_array_equal(back.array, vol)
    # MONOCHROME1 into NIfTI: values kept, and the user is told a viewer will show them inverted
    r = decompress(mcz, tmp_path / "out.nii.gz")
    assert "MONOCHROME1" in r.stderr


def dciodvfy_errors(path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed; `make test` installs it")
    r = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


def test_decoded_ct_series_and_radiograph_are_valid_dicom(tmp_path):
    from medcomp.data.block_datamodules import sample_files

    oblique_series(tmp_path / "ct")
    mcz = tmp_path / "ct.mcz"
    assert run_cli("compress", tmp_path / "ct", mcz, "--codec", "jpeg2000", "--ratio", "6").returncode == 0
    decompress(mcz, tmp_path / "ct_out")
    for f in sorted((tmp_path / "ct_out").iterdir()):
        assert dciodvfy_errors(f) == [], f
        ds = pydicom.dcmread(f)
        assert ds.SOPClassUID == CTImageStorage and ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_15444_1"
        assert float(ds.LossyImageCompressionRatio) == pytest.approx(5 * 24 * 20 * 2 / mcz.stat().st_size, rel=1e-4)
        assert ds.PatientIdentityRemoved == "YES"
    # a 15-bit MONOCHROME1 computed radiograph (pydicom-data RG1) -> CR Image Storage
    rg = sample_files(["RG1_UNCR.dcm"])[0]
    assert run_cli("compress", rg, tmp_path / "rg.mcz", "--codec", "hevc", "--ratio", "30").returncode == 0
    decompress(tmp_path / "rg.mcz", tmp_path / "rg.dcm")
    assert dciodvfy_errors(tmp_path / "rg.dcm") == []
    ds = pydicom.dcmread(tmp_path / "rg.dcm")
    assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_23008_2"


def test_hospital_encodings_are_read_and_compressed(tmp_path):
    """JPEG lossless, JPEG extended (12-bit), JPEG-LS, big-endian, deflated and preamble-less DICOM from pydicom's
    test files, and a JPEG baseline one made here (pydicom's own baseline samples are all colour)."""
    import imagecodecs
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    names = ["JPEG-LL.dcm", "JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
             "image_dfl.dcm"]
    paths = [get_testdata_file(n) for n in names]
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    bare = pydicom.Dataset(ds)  # no preamble, no file meta: older exports look like this
    bare.save_as(tmp_path / "bare", implicit_vr=True, little_endian=True)
    assert (tmp_path / "bare").read_bytes()[128:132] != b"DICM"
    paths.append(tmp_path / "bare")
    plane = np.clip(ds.pixel_array // 8, 0, 255).astype(np.uint8)
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(plane, level=90)])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(tmp_path / "baseline.dcm", enforce_file_format=True)
    paths.append(tmp_path / "baseline.dcm")
    for i, p in enumerate(paths):
        r = run_cli("compress", p, tmp_path / f"{i}.mcz", "--codec", "jpeg2000", "--ratio", "4")
        assert r.returncode == 0, (p, r.stderr)


@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_palette_and_colour_dicom_are_refused_in_one_line(tmp_path, name):
    from pydicom.data import get_testdata_file

    r = run_cli("compress", get_testdata_file(name), tmp_path / "x.mcz", "--codec", "jpeg2000", "--ratio", "4")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and name in r.stderr
    assert "only grayscale" in r.stderr and not (tmp_path / "x.mcz").exists()


def mcz_with_header(path, **changes):
    """A real .mcz whose JSON header is changed and whose CRC is recomputed (it passes the CRC check)."""
    vol = smooth_volume((2, 16, 16))
    from medcomp.codecs.registry import get_codec
    from medcomp.data.image import Image
    from medcomp.target import Target

    c = get_codec("jpeg2000").encode(Image(vol, (1.0, 1.0, 1.0)), Target(ratio=4))
    header = {**c.header, **changes}
    data = Container(c.codec, header, c.sections).to_bytes()
    path.write_bytes(data)
    return path


BAD_HEADERS = [{"dtype": "|O"}, {"dtype": "<U4"}, {"dtype": "V8"}, {"spacing": "x"}, {"spacing": [1, 1, "x"]},
               {"shape": "abc"}, {"mapping": {"offset": float("nan"), "scale": 1.0, "bits": 16}},
               {"mapping": {"offset": 0, "scale": float("inf"), "bits": 16}}, {"origin": [0, 0]},
               {"direction": [1, 0, 0, 0, 1, 0, 0, 0, 0]}, {"rescale": [float("nan"), 0]}, {"photometric": "PALETTE"},
               {"shape": [10**5, 10**5, 10**5]}]


@pytest.mark.parametrize("change", BAD_HEADERS, ids=lambda c: json.dumps(c)[:40])
def test_bad_header_values_are_one_line_exit_2(tmp_path, change):
    mcz = mcz_with_header(tmp_path / "bad.mcz", **change)
    read_container(mcz)  # the CRC is right: only the header's values are wrong
    for args in (("info", mcz), ("decompress", mcz, tmp_path / "out.nii.gz")):
        r = run_cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("medcomp: error:"), r.stderr
    assert not (tmp_path / "out.nii.gz").exists()


def test_output_safety(tmp_path):
    src = tmp_path / "in.nii.gz"
    oblique_nifti(src, smooth_volume((4, 16, 16), lo=0, hi=1000))
    before = src.read_bytes()
    cases = {
        "the output is the input": ("compress", src, src),
        "the output is the input file": ("decompress", tmp_path / "x.mcz", tmp_path / "x.mcz"),
    }
    r = run_cli("compress", src, tmp_path / "x.mcz", "--codec", "jpeg2000", "--ratio", "4")
    assert r.returncode == 0
    mcz_bytes = (tmp_path / "x.mcz").read_bytes()
    # output == input, also through a symbolic link; input given as .mcz suffix check first
    os.symlink(src, tmp_path / "link.mcz")
    cases["is the input"] = ("compress", src, tmp_path / "link.mcz")
    cases["exists; use --force"] = ("compress", src, tmp_path / "x.mcz")
    cases["must end in .mcz"] = ("compress", src, tmp_path / "y.nii.gz")
    cases["cannot write '.xyz'"] = ("decompress", tmp_path / "x.mcz", tmp_path / "y.xyz")
    (tmp_path / "folder.nii.gz").mkdir()
    cases["is a folder"] = ("decompress", tmp_path / "x.mcz", tmp_path / "folder.nii.gz")
    cases["not writable"] = ("compress", src, "/proc/self/x.mcz")
    for expect, args in cases.items():
        r = run_cli(*args, "--codec", "jpeg2000", "--ratio", "4") if args[0] == "compress" else run_cli(*args)
        assert r.returncode == 2, (expect, r.stderr)
        assert r.stderr.count("\n") == 1 and expect.split(":")[0].split(";")[0] in r.stderr, (expect, r.stderr)
    assert src.read_bytes() == before and (tmp_path / "x.mcz").read_bytes() == mcz_bytes
    assert run_cli("compress", src, tmp_path / "x.mcz", "--codec", "jpeg2000", "--ratio", "8", "--force").returncode == 0
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_bomb_headers_are_refused_before_allocating(tmp_path):
    # a 352-byte NIfTI whose header claims 1000³ int16 voxels (2 GB)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1000, 1000, 1000))
    hdr.set_data_dtype(np.int16)
    hdr.set_data_offset(352)
    with open(tmp_path / "bomb.nii", "wb") as fh:
        hdr.write_to(fh)
    assert (tmp_path / "bomb.nii").stat().st_size < 400
    r = run_cli("compress", tmp_path / "bomb.nii", tmp_path / "b.mcz", "--codec", "jpeg2000", "--ratio", "4")
    assert r.returncode == 2 and "header claims" in r.stderr and r.stderr.count("\n") == 1
    # the same claim behind gzip
    import gzip

    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress((tmp_path / "bomb.nii").read_bytes()))
    r = run_cli("compress", tmp_path / "bomb.nii.gz", tmp_path / "b.mcz", "--codec", "jpeg2000", "--ratio", "4")
    assert r.returncode == 2 and "header claims" in r.stderr
    # an .npy header claiming more than the file holds
    with open(tmp_path / "bomb.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<i2", "fortran_order": False, "shape": (4000, 4000, 4000)})
    r = run_cli("compress", tmp_path / "bomb.npy", tmp_path / "b.mcz", "--codec", "jpeg2000", "--ratio", "4")
    assert r.returncode == 2 and "header claims" in r.stderr
    assert not (tmp_path / "b.mcz").exists()


def test_ssim_memory_is_bounded_for_a_large_radiograph():
    """The metrics stream over slices: a 2000×2000 image costs a bounded working set (the old torchmetrics path
    needed ~19 GB for it)."""
    import resource

    from medcomp.metrics import ms_ssim, ssim

    a = smooth_volume((2000, 2000), dtype=np.uint16, lo=0, hi=4095)
    b = a.copy()
    b[::7] += 3
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert 0.9 < ssim(a, b) < 1.0 and 0.9 < ms_ssim(a, b) <= 1.0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 1500, grown_mb


def test_sigterm_during_encode_leaves_nothing(tmp_path):
    import signal
    import sys
    import time

    # a radiograph-size image: JPEG XL's rate search on one 3000² plane takes ~40 s (a volume's sampled search is
    # now over before any fixed sleep could land in it)
    src = tmp_path / "in.npy"
    np.save(src, smooth_volume((3000, 3000), dtype=np.uint16, lo=0, hi=4095))
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "medcomp.cli", "compress", str(src), str(out / "x.mcz"), "--codec",
                          "jpegxl", "--ratio", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # past the imports and the read: inside the encode
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    # SIGTERM ends the computation at once (medcomp.cli.killable: a handler could wait for a native call to return)
    assert p.returncode == -signal.SIGTERM
    assert list(out.iterdir()) == []
