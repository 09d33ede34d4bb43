"""Writers for decoded images. Every write is atomic: a failure leaves no partial file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medcomp.data.image import Image
from medcomp.data.readers import ITK_SUFFIXES, NIFTI_SUFFIXES, _suffix
from medcomp.errors import MedcompError
from medcomp.utils.atomic import atomic_path

WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".npy", ".png", ".tif", ".tiff", ".dcm")


def write_image(path: str | os.PathLike, image: Image) -> Path:
    path = Path(path)
    suf = _suffix(path)
    if suf not in WRITE_SUFFIXES:
        raise MedcompError(f"{path}: cannot write '{suf}' files (choose one of {', '.join(WRITE_SUFFIXES)})")
    a = image.array
    if suf == ".png":
        if a.ndim != 2:
            raise MedcompError(f"{path}: PNG holds 2-D images only; this one has shape {a.shape} (use .nii.gz or .npy)")
        if a.dtype not in (np.uint8, np.uint16):
            raise MedcompError(f"{path}: PNG stores uint8/uint16 only, the image is {a.dtype} (use .nii.gz, .nrrd or .npy)")
    with atomic_path(path) as tmp:
        if suf in NIFTI_SUFFIXES:
            import nibabel as nib

            spacing = image.spacing or (1.0,) * a.ndim
            affine = np.diag(list(reversed(spacing)) + [1.0]) if a.ndim == 3 else np.diag(list(reversed(spacing)) + [1.0, 1.0])
            img = nib.Nifti1Image(np.ascontiguousarray(a.T), affine)
            img.header.set_zooms(tuple(reversed(spacing)))
            nib.save(img, str(tmp))
        elif suf in ITK_SUFFIXES:
            import SimpleITK as sitk

            img = sitk.GetImageFromArray(a)
            if image.spacing:
                img.SetSpacing(tuple(reversed(image.spacing)))
            sitk.WriteImage(img, str(tmp), True)
        elif suf == ".dcm":
            write_dicom_deidentified(tmp, image)
        elif suf == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, a, allow_pickle=False)
        elif suf in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, a)
        else:
            from PIL import Image as PILImage

            PILImage.fromarray(a).save(tmp, format="PNG")
    return path


def write_dicom_deidentified(path: Path, image: Image) -> None:
    """A new DICOM (Secondary Capture; multi-frame for volumes) holding only the pixels, their spacing and fresh
    UIDs. Nothing is copied from the source's header, so no patient, study or institution attribute (DICOM PS3.15
    basic profile) can leak into it; the patient module is present but empty, as the profile's dummy values."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    a = image.array
    if a.dtype not in (np.uint8, np.uint16, np.int16):
        raise MedcompError(f"{path}: DICOM output takes uint8, uint16 or int16 pixels, the image is {a.dtype}")
    if a.ndim not in (2, 3):
        raise MedcompError(f"{path}: DICOM output takes 2-D or 3-D images, this one has shape {a.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "", "", ""
    ds.PatientIdentityRemoved, ds.DeidentificationMethod = "YES", "medcomp: new header, pixels only"
    ds.Modality, ds.ConversionType = "OT", "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = a.shape[-2:]
    if a.ndim == 3:
        ds.NumberOfFrames = a.shape[0]
    ds.BitsAllocated = ds.BitsStored = 8 * a.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(a.dtype == np.int16)
    if image.spacing:
        ds.PixelSpacing = [f"{s:.6g}" for s in image.spacing[-2:]]
        if a.ndim == 3:
            ds.SpacingBetweenSlices = f"{image.spacing[0]:.6g}"
    ds.PixelData = np.ascontiguousarray(a).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
