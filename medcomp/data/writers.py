"""Writers for decoded images. Every write is atomic: a failure leaves no partial file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medcomp.data.image import Image
from medcomp.data.readers import ITK_SUFFIXES, NIFTI_SUFFIXES, _suffix
from medcomp.errors import MedcompError
from medcomp.utils.atomic import atomic_path

WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".npy", ".png", ".tif", ".tiff")


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
