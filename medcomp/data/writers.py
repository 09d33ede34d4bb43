"""Writers for decoded images. Every write is atomic: a failure leaves no partial file or folder.

Geometry (spacing, origin, direction), the rescale to real units, MONOCHROME1 and the modality go out as each format
can hold them; what a format cannot hold is said in a note the caller prints, never dropped silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from medcomp.data.geometry import dicom_orientation, lps_affine, ras_affine, slice_positions
from medcomp.data.image import Image
from medcomp.data.readers import ITK_SUFFIXES, NIFTI_SUFFIXES, _suffix
from medcomp.errors import MedcompError
from medcomp.utils.atomic import atomic_folder, atomic_path

WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".npy", ".png", ".tif", ".tiff", ".dcm")


@dataclass(frozen=True)
class Lossy:
    """How the pixels were compressed, for DICOM's Lossy Image Compression attributes (PS3.3 C.7.6.1.1.5)."""

    ratio: float
    method: str  # a defined term: ISO_10918_1 (JPEG), ISO_15444_1 (JPEG 2000), ISO_14495_1 (JPEG-LS), ...


def is_dicom_series_path(path: str | os.PathLike) -> bool:
    """A folder path (no suffix, or a trailing slash) means: write a DICOM series, one file per slice."""
    text = os.fspath(path)
    return text.endswith(os.sep) or _suffix(Path(text)) == ""


def check_output(path: str | os.PathLike, image_ndim: int | None = None) -> None:
    """What can be known about an output path before any work: a writable format, and for a series a folder."""
    p = Path(path)
    if is_dicom_series_path(path):
        return
    suf = _suffix(p)
    if suf not in WRITE_SUFFIXES:
        raise MedcompError(f"{p}: cannot write '{suf}' files (choose one of {', '.join(WRITE_SUFFIXES)}, "
                           "or a folder for a DICOM series)")
    if suf == ".png" and image_ndim == 3:
        raise MedcompError(f"{p}: PNG holds 2-D images only; this one is a volume (use .nii.gz, .nrrd or a folder)")
    if suf == ".dcm" and image_ndim == 3:
        raise MedcompError(f"{p}: a volume is written as a DICOM series, one file per slice: give a folder "
                           f"(e.g. {p.with_suffix('')}/)")


def write_image(path: str | os.PathLike, image: Image, lossy: Lossy | None = None) -> list[str]:
    """Write ``image``; returns notes on what the format could not hold (to be shown to the user)."""
    path = Path(path)
    if not image.array.dtype.isnative:  # a big-endian .mcz dtype: the values, in the byte order every writer takes
        image = image.like(image.array.astype(image.array.dtype.newbyteorder("=")))
    a = image.array
    if a.ndim not in (2, 3):
        raise MedcompError(f"{path}: medcomp writes 2-D and 3-D images; this one is {a.ndim}-D {a.shape}")
    check_output(path, a.ndim)
    if is_dicom_series_path(path):
        return write_dicom_series(path, image, lossy)
    suf = _suffix(path)
    notes = []
    if image.photometric == "MONOCHROME1" and suf != ".dcm":
        notes.append(f"{path}: MONOCHROME1 image written with its stored values (high = dark); "
                     "a viewer will show it inverted")
    if suf == ".png" or suf in (".tif", ".tiff"):
        if image.rescale is not None:
            raise MedcompError(f"{path}: {suf} cannot hold this image's rescale (slope {image.rescale[0]:g}, "
                               f"intercept {image.rescale[1]:g}); write .nii.gz, .nrrd, .dcm or .npy")
        if image.spacing or image.origin is not None:
            notes.append(f"{path}: {suf} keeps no spacing, origin or orientation; use .nii.gz, .nrrd or .dcm to keep them")
    if suf == ".png" and a.dtype not in (np.uint8, np.uint16):
        raise MedcompError(f"{path}: PNG stores uint8/uint16 only, the image is {a.dtype} (use .nii.gz, .nrrd or .npy)")
    with atomic_path(path) as tmp:
        if suf in NIFTI_SUFFIXES:
            _write_nifti(tmp, image)
        elif suf in ITK_SUFFIXES:
            notes += _write_itk(tmp, image, path)
        elif suf == ".dcm":
            _write_dicom_file(tmp, image, lossy)
        elif suf == ".npy":
            values = _real_values(image)
            if image.rescale is not None:
                notes.append(f"{path}: rescale applied, values are real units ({values.dtype})")
            if image.spacing or image.origin is not None:
                notes.append(f"{path}: .npy keeps no spacing, origin or orientation")
            with open(tmp, "wb") as fh:
                np.save(fh, values, allow_pickle=False)
        elif suf in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, a)
        else:
            from PIL import Image as PILImage

            PILImage.fromarray(a).save(tmp, format="PNG")
    return notes


def _real_values(image: Image) -> np.ndarray:
    """Stored values with the rescale applied (float32 up to 16-bit storage, float64 above); the array itself when
    there is no rescale."""
    if image.rescale is None:
        return image.array
    slope, intercept = image.rescale
    dt = np.float32 if image.array.dtype.itemsize <= 2 else np.float64
    out = image.array.astype(dt)
    out *= dt(slope)
    out += dt(intercept)
    if not np.all(np.isfinite(out)):
        raise MedcompError(f"rescale (slope {slope:g}, intercept {intercept:g}) takes this image's values beyond "
                           f"{dt.__name__}; the real values cannot be written")
    return out


def _write_nifti(tmp: Path, image: Image) -> None:
    """Header and raw voxels written by hand through nibabel's header object: ``nib.save`` would replace a
    non-integral scl_slope/scl_inter by its own (the stored integers are the data, the rescale is metadata)."""
    import nibabel as nib
    from nibabel.openers import Opener

    a = image.array
    affine = ras_affine(image.spacing, image.origin, image.direction, a.ndim)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(a.shape[::-1])
    hdr.set_data_dtype(a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype)
    hdr.set_qform(affine, code=1)  # scanner-anatomical: the geometry came from the scanner's coordinates
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm")
    hdr.set_data_offset(352)
    if image.rescale is not None:
        hdr.set_slope_inter(*image.rescale)
    with Opener(str(tmp), "wb") as fh:
        hdr.write_to(fh)
        hdr.data_to_fileobj(np.asarray(a.T), fh, rescale=False)


def _write_itk(tmp: Path, image: Image, path: Path) -> list[str]:
    import SimpleITK as sitk

    notes = []
    values = _real_values(image)
    if image.rescale is not None:
        notes.append(f"{path}: NRRD/MHA have no rescale field; written as real values ({values.dtype})")
    aff = lps_affine(image.spacing, image.origin, image.direction, values.ndim)
    planar = values.ndim == 2 and np.allclose(aff[2, :3], [0, 0, 1]) and np.allclose(aff[:2, 2], 0)
    if values.ndim == 2 and not planar:
        values = values[None]  # a slice placed in 3-D space: one-slice volume, so the placement survives
    img = sitk.GetImageFromArray(values)
    n = values.ndim
    d = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)[None, :]
    img.SetSpacing([float(v) for v in np.linalg.norm(aff[:3, :3], axis=0)[:n]])
    img.SetOrigin([float(v) for v in aff[:n, 3]])
    img.SetDirection([float(v) for v in d[:n, :n].reshape(-1)])
    sitk.WriteImage(img, str(tmp), True)
    return notes


# --- DICOM -----------------------------------------------------------------------------------------------

# Which storage class a decoded image is written under. CT and CR have IODs whose required attributes a codec's
# output can honestly fill; MR's (scanning sequence, echo time, ...) cannot be filled without inventing
# acquisition facts, so MR and everything else become Secondary Capture, keeping their modality and geometry.
def _sop_class(image: Image) -> str:
    from pydicom.uid import (
        ComputedRadiographyImageStorage,
        CTImageStorage,
        SecondaryCaptureImageStorage,
    )

    if image.modality == "CT":
        return CTImageStorage
    if image.modality == "CR" and image.array.ndim == 2:
        return ComputedRadiographyImageStorage
    return SecondaryCaptureImageStorage


def _dicom_pixels(path: Path, image: Image, ct: bool) -> np.ndarray:
    """Pixels as 8- or 16-bit integers, losslessly: wider integers are narrowed only when every value fits."""
    a = image.array
    if a.dtype.kind == "f":
        raise MedcompError(f"{path}: DICOM output takes integer pixels, the image is {a.dtype} (use .nii.gz or .nrrd)")
    lo, hi = int(a.min()), int(a.max())
    for dt in ((np.uint16, np.int16) if ct else (np.uint8, np.int8, np.uint16, np.int16)):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            if dt is np.int8:
                continue  # signed 8-bit pixels are legal but rare; use 16 bits
            return a.astype(dt, copy=False) if a.dtype != dt else a
    raise MedcompError(f"{path}: values {lo}…{hi} do not fit DICOM's 16-bit pixels (use .nii.gz or .nrrd)")


@dataclass
class _Series:
    study_uid: str
    series_uid: str
    frame_uid: str
    now: datetime


def _new_series():
    from pydicom.uid import generate_uid

    return _Series(generate_uid(), generate_uid(), generate_uid(), datetime.now(UTC))


def _write_dicom_file(path: Path, image: Image, lossy: Lossy | None, series: _Series | None = None,
                      index: int = 0, pixels: np.ndarray | None = None) -> None:
    """One DICOM file holding plane ``index`` of ``image`` (``pixels``: the whole image already narrowed by
    :func:`_dicom_pixels`). Nothing is copied from the source's header, so no patient, study or institution
    attribute (DICOM PS3.15 basic profile) can reach it; Type 2 attributes of the patient and study modules are
    present and empty, as the profile's dummy values."""
    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    series = series or _new_series()
    sop_class = _sop_class(image)
    kind = {"1.2.840.10008.5.1.4.1.1.2": "CT", "1.2.840.10008.5.1.4.1.1.1": "CR"}.get(sop_class, "SC")
    pixels = _dicom_pixels(path, image, kind == "CT") if pixels is None else pixels
    volume = image.array.ndim == 3
    a = pixels[index] if volume else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"] + (["AXIAL"] if kind == "CT" else [])
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyDate, ds.StudyTime = "", ""
    ds.ContentDate, ds.ContentTime = series.now.strftime("%Y%m%d"), series.now.strftime("%H%M%S")
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", ""
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "medcomp: new header, pixels and geometry only"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = series.study_uid, series.series_uid
    ds.Modality = kind if kind != "SC" else (image.modality or "OT")
    ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
    ds.SeriesDescription = "medcomp decoded"
    ds.Laterality = ""  # Type 2C in General Series; the source's value is not carried (nor needed: IPP/IOP are)
    if kind == "CT":
        ds.PatientPosition = ""
    ds.Manufacturer = ""
    if kind == "SC":
        ds.ConversionType = "WSD"
    if kind == "CT":
        ds.KVP, ds.AcquisitionNumber = "", ""
    if kind == "CR":
        ds.BodyPartExamined, ds.ViewPosition = "", ""
    placed = image.origin is not None and image.direction is not None
    if kind == "CT" or (placed and kind == "SC"):
        # CT's Image Plane module is required; an unplaced CT (e.g. from NPY) gets the identity at the origin.
        dz = image.spacing[0] if image.spacing and volume else 0.0
        position = slice_positions(image.origin, image.direction, dz, index + 1)[index]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = series.frame_uid, ""
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in dicom_orientation(
            image.direction if image.direction is not None else np.eye(3).reshape(-1))]
        ds.SliceThickness = _ds(dz) if dz else ""
        if dz:
            ds.SpacingBetweenSlices = _ds(dz)
    else:
        ds.PatientOrientation = ""
    if image.spacing:
        ds.PixelSpacing = [_ds(s) for s in image.spacing[-2:]]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, image.photometric
    ds.Rows, ds.Columns = a.shape
    ds.BitsAllocated = 8 * a.dtype.itemsize
    signed = a.dtype.kind == "i"
    lo, hi = int(pixels.min()), int(pixels.max())
    need = max(max(hi, 0).bit_length(), (~lo).bit_length() if lo < 0 else 0) + int(signed)
    ds.BitsStored = min(ds.BitsAllocated, max(need, 12 if kind == "CT" else 1))
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    slope, intercept = image.rescale if image.rescale is not None else (1.0, 0.0)
    if kind in ("CT", "CR") or image.rescale is not None:
        ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), _ds(slope)
        ds.RescaleType = "HU" if kind == "CT" else "US"
    real_lo, real_hi = sorted((slope * lo + intercept, slope * hi + intercept))
    ds.WindowCenter, ds.WindowWidth = _ds((real_lo + real_hi) / 2), _ds(max(real_hi - real_lo, 1.0))
    if lossy is not None or image.meta.get("source_lossy"):
        ds.LossyImageCompression = "01"  # once lossy, always lossy: also when this codec was lossless
        if lossy is not None:
            ds.LossyImageCompressionRatio = _ds(lossy.ratio)
            ds.LossyImageCompressionMethod = lossy.method
            ds.DerivationDescription = f"decoded from a medcomp .mcz file ({lossy.method}, ratio {lossy.ratio:.4g})"
    else:
        ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for ``value``, as precise as that allows."""
    for digits in range(12, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.4e}"


def write_dicom_series(folder: Path, image: Image, lossy: Lossy | None = None) -> list[str]:
    """A folder of single-frame DICOM files, one per axial slice, sharing study, series and frame of reference:
    the form every PACS and viewer reads. Written into a temporary folder and renamed, so an interruption leaves
    nothing half-written; an existing non-empty folder is refused."""
    folder = Path(os.fspath(folder).rstrip(os.sep) or os.sep)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise MedcompError(f"{folder}: exists and is not an empty folder; a DICOM series needs a new or empty folder")
    series = _new_series()
    pixels = _dicom_pixels(folder, image, image.modality == "CT")
    with atomic_folder(folder) as tmp:
        for k in range(image.array.shape[0] if image.array.ndim == 3 else 1):
            _write_dicom_file(tmp / f"IM{k + 1:05d}.dcm", image, lossy, series, k, pixels)
    return []
