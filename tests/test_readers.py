"""Each reader on a small file the test writes in the real format: dtype, units and spacing survive."""

import gzip

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medcomp.data.readers import read_image
from medcomp.data.writers import write_image
from medcomp.errors import MedcompError
from tests.conftest import smooth_volume


def write_ct_slice(path, stored: np.ndarray, z: float, series_uid: str, instance: int, slope=1, intercept=-1024, *,
                   position=None, orientation=(1, 0, 0, 0, 1, 0), photometric="MONOCHROME2", modality="CT"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = modality, series_uid, instance
    ds.PatientName, ds.PatientID = "Test^Patient", "TEST-0001"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    ds.PixelSpacing = [0.7, 0.8]
    ds.SliceThickness = 2.5
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in (position if position is not None else (0, 0, z))]
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_file_keeps_hu(tmp_path):
    stored = np.arange(0, 3000, 3000 / 64, dtype=np.float64).astype(np.uint16).reshape(8, 8)
    write_ct_slice(tmp_path / "a.dcm", stored, 0.0, generate_uid(), 1)
    img = read_image(tmp_path / "a.dcm")
    assert img.array.dtype == np.int16
    np.testing.assert_array_equal(img.array, stored.astype(np.int32) - 1024)
    assert img.spacing == (0.7, 0.8)
    assert img.meta["units"] == "HU" and img.meta["modality"] == "CT"
    assert "Test^Patient" not in repr(img.meta) and "TEST-0001" not in repr(img.meta)


def test_dicom_series_sorted_by_position(tmp_path):
    uid = generate_uid()
    slices = [np.full((6, 5), 100 * (i + 1), dtype=np.uint16) for i in range(4)]
    # written in scrambled order, with instance numbers that disagree with positions
    for name, i in zip("cadb", [2, 0, 3, 1]):
        write_ct_slice(tmp_path / f"{name}.dcm", slices[i], z=10.0 + 2.5 * i, series_uid=uid, instance=10 - i)
    (tmp_path / "README.txt").write_text("not dicom")
    img = read_image(tmp_path)
    assert img.array.shape == (4, 6, 5)
    np.testing.assert_array_equal(img.array[:, 0, 0], [100 - 1024, 200 - 1024, 300 - 1024, 400 - 1024])
    assert img.spacing == pytest.approx((2.5, 0.7, 0.8))


def test_nifti_axis_order_dtype_spacing(tmp_path):
    vol = smooth_volume((5, 7, 9))  # (z, y, x)
    img = nib.Nifti1Image(vol.T.copy(), np.diag([0.5, 0.6, 3.0, 1.0]))
    nib.save(img, tmp_path / "v.nii.gz")
    got = read_image(tmp_path / "v.nii.gz")
    assert got.array.dtype == np.int16
    np.testing.assert_array_equal(got.array, vol)
    assert got.spacing == pytest.approx((3.0, 0.6, 0.5))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats(tmp_path, suffix):
    vol = smooth_volume((4, 6, 8), dtype=np.uint16, lo=0, hi=4095)
    im = sitk.GetImageFromArray(vol)
    im.SetSpacing((0.5, 0.6, 2.0))
    sitk.WriteImage(im, str(tmp_path / f"v{suffix}"))
    got = read_image(tmp_path / f"v{suffix}")
    np.testing.assert_array_equal(got.array, vol)
    assert got.array.dtype == np.uint16
    assert got.spacing == pytest.approx((2.0, 0.6, 0.5))


def test_hdf5_with_key(tmp_path):
    vol = smooth_volume((3, 8, 8), dtype=np.uint8, lo=0, hi=255)
    with h5py.File(tmp_path / "c.hdf", "w") as fh:
        ds = fh.create_dataset("volumes/raw", data=vol)
        ds.attrs["resolution"] = [40.0, 4.0, 4.0]
        fh.create_dataset("volumes/labels/neuron_ids", data=vol.astype(np.uint64))
    got = read_image(f"{tmp_path / 'c.hdf'}:volumes/raw")
    np.testing.assert_array_equal(got.array, vol)
    assert got.spacing == (40.0, 4.0, 4.0)
    with pytest.raises(MedcompError, match="choose one with a key"):
        read_image(tmp_path / "c.hdf")
    with pytest.raises(MedcompError, match="no dataset 'nope'"):
        read_image(tmp_path / "c.hdf", key="nope")


def test_png_16_bit_and_grey_jpeg(tmp_path):
    a = smooth_volume((20, 24), dtype=np.uint16, lo=0, hi=60000)
    PILImage.fromarray(a).save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    assert got.array.dtype == np.uint16
    np.testing.assert_array_equal(got.array, a)
    rgb = np.repeat(smooth_volume((16, 16), dtype=np.uint8, lo=0, hi=255)[..., None], 3, axis=2)
    PILImage.fromarray(rgb).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").array.shape == (16, 16)
    PILImage.fromarray(rgb).save(tmp_path / "g.jpeg", quality=95)
    assert read_image(tmp_path / "g.jpeg").array.ndim in (2, 3)


def test_folder_of_png_slices_is_a_stack(tmp_path):
    vol = smooth_volume((3, 20, 24), dtype=np.uint16, lo=0, hi=60000)
    for i, sl in enumerate(vol):
        PILImage.fromarray(sl).save(tmp_path / f"s{i:02d}.png")
    got = read_image(tmp_path)
    assert got.array.dtype == np.uint16
    np.testing.assert_array_equal(got.array, vol)  # file-name order, bit depth kept
    PILImage.fromarray(vol[0, :10]).save(tmp_path / "s99.png")
    with pytest.raises(MedcompError, match=r"s99.png: slice is uint16 \(10, 24\)"):
        read_image(tmp_path)


def test_stack_of_unpadded_slice_numbers_is_in_numeric_order(tmp_path):
    """0.png, 1.png, …, 11.png (as the ISBI 2012 EM stack is named): slice 10 follows 9, not 1."""
    vol = np.arange(12, dtype=np.uint8)[:, None, None] * np.ones((1, 8, 9), np.uint8)
    for i, sl in enumerate(vol):
        PILImage.fromarray(sl).save(tmp_path / f"{i}.png")
    assert read_image(tmp_path).array[:, 0, 0].tolist() == list(range(12))


def test_tiff_and_npy(tmp_path):
    import tifffile

    a = smooth_volume((3, 10, 12), dtype=np.int16)
    tifffile.imwrite(tmp_path / "a.tif", a)
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif").array, a)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy").array, a)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".npy", ".tif"])
def test_writers_round_trip(tmp_path, suffix):
    from medcomp.data.image import Image

    a = smooth_volume((3, 10, 12), dtype=np.int16)
    write_image(tmp_path / f"o{suffix}", Image(a, (2.0, 0.5, 0.5)))
    got = read_image(tmp_path / f"o{suffix}")
    np.testing.assert_array_equal(got.array, a)
    assert got.array.dtype == a.dtype


# --- bad input: one clear line naming the file ---------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(MedcompError, match=r"nope\.nii\.gz: no such file"):
        read_image(tmp_path / "nope.nii.gz")


def test_truncated_dicom(tmp_path):
    stored = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4000
    write_ct_slice(tmp_path / "a.dcm", stored, 0.0, generate_uid(), 1)
    data = (tmp_path / "a.dcm").read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[: len(data) - 3000])
    with pytest.raises(MedcompError, match=r"t\.dcm"):
        read_image(tmp_path / "t.dcm")


def test_not_dicom(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"hello world" * 20)
    with pytest.raises(MedcompError, match=r"x\.dcm: not a DICOM file"):
        read_image(tmp_path / "x.dcm")


def test_truncated_nifti(tmp_path):
    vol = smooth_volume((8, 16, 16))
    nib.save(nib.Nifti1Image(vol.T.copy(), np.eye(4)), tmp_path / "v.nii.gz")
    raw = gzip.decompress((tmp_path / "v.nii.gz").read_bytes())
    (tmp_path / "t.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(MedcompError, match=r"t\.nii\.gz: header claims"):
        read_image(tmp_path / "t.nii.gz")


def test_nan_zero_range_and_dimensionality(tmp_path):
    a = np.ones((8, 8), dtype=np.float32)
    a[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", a)
    with pytest.raises(MedcompError, match=r"nan\.npy: contains 1 NaN/Inf"):
        read_image(tmp_path / "nan.npy")
    np.save(tmp_path / "flat.npy", np.full((8, 8), 7, np.int16))
    with pytest.raises(MedcompError, match="zero intensity range"):
        read_image(tmp_path / "flat.npy")
    np.save(tmp_path / "4d.npy", np.zeros((2, 3, 4, 5), np.int16))
    with pytest.raises(MedcompError, match=r"4d\.npy: expected a 2-D or 3-D"):
        read_image(tmp_path / "4d.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), np.int16))
    with pytest.raises(MedcompError, match="empty"):
        read_image(tmp_path / "empty.npy")


def test_sample_images_are_real_and_keep_bit_depth():
    from medcomp.data.block_datamodules import sample_files

    ct, mr, cr = (read_image(p) for p in sample_files(["693_UNCR.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm"]))
    assert ct.array.dtype == np.int16 and ct.array.min() < -1000  # HU
    assert mr.array.dtype == np.uint16 and mr.rescale == pytest.approx((3.774114, 0.000061))
    assert cr.array.dtype == np.uint16 and cr.array.max() > 255 * 16  # 15-bit CR, not squashed
    assert pydicom.dcmread(sample_files(["693_UNCR.dcm"])[0]).Modality == "CT"


@pytest.mark.parametrize("kind", ["nrrd", "mha", "hdf5", "png", "empty_dicom_folder"])
def test_corrupt_inputs_name_the_file(tmp_path, kind):
    import SimpleITK as sitk
    from PIL import Image as PILImage

    vol = smooth_volume((6, 16, 16))
    if kind in ("nrrd", "mha"):
        good = tmp_path / f"v.{kind}"
        sitk.WriteImage(sitk.GetImageFromArray(vol), str(good))
        bad = tmp_path / f"t.{kind}"
        bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    elif kind == "hdf5":
        bad = tmp_path / "t.h5"
        bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    elif kind == "png":
        good = tmp_path / "g.png"
        PILImage.fromarray((vol[0] % 255).astype(np.uint8)).save(good)
        bad = tmp_path / "t.png"
        bad.write_bytes(good.read_bytes()[:60])
    else:
        bad = tmp_path / "series"
        bad.mkdir()
        (bad / "readme.txt").write_text("not an image")
    with pytest.raises(MedcompError) as err:
        read_image(bad)
    assert bad.name in str(err.value) and "\n" not in str(err.value)


def test_min_max_normalisation_values_inverse_and_constant_image():
    import torch

    from medcomp.data.image import from_unit, to_unit

    a = np.array([-1024, 0, 976], dtype=np.int16)
    np.testing.assert_allclose(to_unit(a, -1024.0, 976.0), [0.0, 0.512, 1.0])
    np.testing.assert_allclose(to_unit(a, -1024.0, 976.0, signed=True), [-1.0, 0.024, 1.0])
    for signed in (False, True):
        np.testing.assert_allclose(from_unit(to_unit(a, -1024.0, 976.0, signed=signed), -1024.0, 976.0,
                                             signed=signed), a)
    # per-block ranges broadcast; an empty range maps to the bottom, not NaN
    blocks = np.array([[3.0, 3.0], [0.0, 10.0]])
    lo, hi = np.array([[3.0], [0.0]]), np.array([[3.0], [10.0]])
    np.testing.assert_array_equal(to_unit(blocks, lo, hi, signed=True), [[-1.0, -1.0], [-1.0, 1.0]])
    t = torch.tensor([5.0, 5.0])
    assert torch.equal(to_unit(t, t.min(), t.max()), torch.zeros(2))
