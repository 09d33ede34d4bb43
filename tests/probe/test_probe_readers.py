"""Readers apply what the standard says stored values mean, or refuse (issue 35, build 1): Modality LUT, RT Dose
scaling, slope 0, series whose slices disagree, a series folder with a thumbnail, PNG alpha and palettes, inputs
that are not regular files. Real values are checked against pydicom's own apply_modality_lut / apply_rescale."""

import copy
import os

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_rescale
from pydicom.uid import generate_uid

from medcomp.data.readers import read_image
from tests.test_readers import write_ct_slice


def _round_trip(cli, tmp_path, source, codec="deflate"):
    """compress → decompress to .npy (real values): the decoded array."""
    code, _, err = cli("compress", source, tmp_path / "x.mcz", "--codec", codec, "--ratio", "1")
    assert code == 0, err
    code, _, err = cli("decompress", tmp_path / "x.mcz", tmp_path / "x.npy")
    assert code == 0, err
    return np.load(tmp_path / "x.npy")


def test_modality_lut_sequence_is_applied_as_pydicom_does(cli, tmp_path):
    stored = (np.add.outer(np.arange(16), np.arange(16)) * 120).astype(np.uint16)  # 0 … 3600 of 4096 entries
    write_ct_slice(tmp_path / "lut.dcm", stored, 0.0, generate_uid(), 1, modality="CR")
    ds = pydicom.dcmread(tmp_path / "lut.dcm")
    del ds.RescaleSlope, ds.RescaleIntercept
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "OD"
    item.add_new(0x00283006, "OW", (65535 - np.arange(4096) * 15).astype("<u2").tobytes())  # decreasing: far from stored
    ds.ModalityLUTSequence = [item]
    ds.save_as(tmp_path / "lut.dcm")
    expected = apply_modality_lut(pydicom.dcmread(tmp_path / "lut.dcm").pixel_array, ds)
    assert np.abs(expected.astype(np.int64) - stored).max() > 60000  # what the reader used to get wrong
    (tmp_path / "out").mkdir()
    decoded = _round_trip(cli, tmp_path / "out", tmp_path / "lut.dcm")
    np.testing.assert_array_equal(decoded, expected)


def test_rt_dose_grid_scaling_is_applied(cli, tmp_path):
    stored = (np.add.outer(np.arange(12), np.arange(10)) * 150).astype(np.uint16)  # within BitsStored 12
    write_ct_slice(tmp_path / "dose.dcm", stored, 0.0, generate_uid(), 1, modality="RTDOSE")
    ds = pydicom.dcmread(tmp_path / "dose.dcm")
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.DoseGridScaling, ds.DoseUnits = "1.25e-5", "GY"
    ds.save_as(tmp_path / "dose.dcm")
    # PS3.3 C.8.8.3: dose = stored × DoseGridScaling; pydicom's apply_rescale with that slope says the same
    as_rescale = copy.deepcopy(ds)
    as_rescale.RescaleSlope, as_rescale.RescaleIntercept = ds.DoseGridScaling, 0
    expected = apply_rescale(ds.pixel_array, as_rescale)
    np.testing.assert_allclose(expected, stored * 1.25e-5)
    (tmp_path / "out").mkdir()
    decoded = _round_trip(cli, tmp_path / "out", tmp_path / "dose.dcm")
    np.testing.assert_allclose(decoded, expected, rtol=1e-6)  # float32 real values
    assert read_image(tmp_path / "dose.dcm").meta["units"] == "GY"


def test_rescale_slope_zero_is_refused(refused, tmp_path):
    write_ct_slice(tmp_path / "s0.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8), 0.0, generate_uid(), 1, slope=0)
    refused("compress", tmp_path / "s0.dcm", tmp_path / "x.mcz", "--codec", "deflate", "--ratio", "1",
            match="s0.dcm: rescale slope is 0")


@pytest.mark.parametrize("field,value", [("PixelSpacing", [0.5, 0.5]), ("PhotometricInterpretation", "MONOCHROME1"),
                                         ("BitsStored", 16), ("Rows", None)])
def test_series_whose_slices_disagree_is_refused(refused, tmp_path, field, value):
    uid = generate_uid()
    folder = tmp_path / "series"
    folder.mkdir()
    for i in range(4):
        write_ct_slice(folder / f"{i}.dcm", np.full((6, 5), 100 + i, np.uint16), 2.5 * i, uid, i + 1)
    odd = pydicom.dcmread(folder / "2.dcm")
    if field == "Rows":
        odd.Rows, odd.PixelData = 5, np.full((5, 5), 7, np.uint16).tobytes()
        field = "Rows"
    else:
        setattr(odd, field, value)
    odd.save_as(folder / "2.dcm")
    refused("compress", folder, tmp_path / "x.mcz", "--codec", "deflate", "--ratio", "1",
            match=f"2.dcm: {field} .* differs from the series' first slice")


def test_series_folder_with_a_thumbnail_reads_the_series(cli, tmp_path):
    uid = generate_uid()
    folder = tmp_path / "series"
    folder.mkdir()
    slices = [(np.arange(256).reshape(16, 16) + 100 * i).astype(np.uint16) for i in range(4)]
    for i, s in enumerate(slices):
        write_ct_slice(folder / f"IM{i}", s, 2.5 * i, uid, i + 1)
    PILImage.fromarray(np.full((16, 16), 9, np.uint8)).save(folder / "thumb.jpg")
    (tmp_path / "out").mkdir()
    code, _, err = cli("compress", folder, tmp_path / "out" / "x.mcz", "--codec", "deflate", "--ratio", "1")
    assert code == 0, err
    assert "note:" in err and "thumb.jpg" in err
    code, _, err = cli("decompress", tmp_path / "out" / "x.mcz", tmp_path / "out" / "x.npy")
    assert code == 0, err
    datasets = [pydicom.dcmread(folder / f"IM{i}") for i in range(4)]
    expected = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])  # HU, sorted by position
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "x.npy"), expected)


def test_png_alpha_and_palettes(cli, refused, tmp_path):
    grey = np.tile(np.arange(20, dtype=np.uint8) * 10, (16, 1))
    PILImage.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert image.array.shape == (16, 20) and np.array_equal(image.array, grey)
    assert any("alpha channel dropped" in n for n in image.meta["notes"])
    varying = np.stack([grey, np.tile(np.arange(20, dtype=np.uint8), (16, 1))], -1)
    PILImage.fromarray(varying, "LA").save(tmp_path / "la2.png")
    refused("compress", tmp_path / "la2.png", tmp_path / "x.mcz", "--codec", "deflate", "--ratio", "1",
            match="la2.png: .*alpha")

    indices = np.tile(np.arange(16, dtype=np.uint8), (16, 1))
    inverted = PILImage.fromarray(indices, "P")
    inverted.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    inverted.save(tmp_path / "pal.png")
    (tmp_path / "out").mkdir()
    decoded = _round_trip(cli, tmp_path / "out", tmp_path / "pal.png")
    np.testing.assert_array_equal(decoded, 255 - indices)  # the palette's values, exactly (a lossless codec)

    colour = PILImage.fromarray(indices, "P")
    colour.putpalette([v for i in range(256) for v in (i, 0, 255 - i)])
    colour.save(tmp_path / "col.png")
    refused("compress", tmp_path / "col.png", tmp_path / "x.mcz", "--codec", "deflate", "--ratio", "1",
            match="col.png: colour palette")


def test_inputs_that_are_not_regular_files(refused, tmp_path):
    args = ("--codec", "deflate", "--ratio", "1")
    refused("compress", "/dev/zero", tmp_path / "x.mcz", *args, match="/dev/zero: is a character device")
    os.mkfifo(tmp_path / "fifo")
    refused("compress", tmp_path / "fifo", tmp_path / "x.mcz", *args, match="fifo: is a FIFO")
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    refused("compress", tmp_path / "a", tmp_path / "x.mcz", *args, match="a: symbolic link loop")
    refused("decompress", tmp_path / "a", tmp_path / "x.nii.gz", match="a: symbolic link loop")
    np.save(tmp_path / "ok.npy", np.arange(64, dtype=np.uint16).reshape(8, 8))
    refused("compress", tmp_path / "ok.npy", tmp_path / "a", *args, match="a: symbolic link loop")
