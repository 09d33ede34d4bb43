"""Readers for the formats medical images come in. Each keeps the stored dtype and real units.

Why not MONAI's ``LoadImage`` here: a codec must see the exact stored integers (its CR numerator is the stored
dtype, its PSNR range the stored values). ``LoadImage`` returns float MetaTensors and may reorient; these thin
readers call the same libraries (pydicom, nibabel, SimpleITK, h5py) and change nothing but the axis order, to the
canonical (z, y, x). MONAI is used for training-time transforms, where float tensors are what we want.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medcomp.data.image import Image, validate_image
from medcomp.errors import MedcompError

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_image(path: str | os.PathLike, key: str | None = None) -> Image:
    """Read any supported file or DICOM series folder into a validated :class:`Image`.

    ``key`` selects the dataset of an HDF5 file; ``file.h5:volumes/raw`` works as well.
    Every failure is a :class:`MedcompError` whose message starts with the path.
    """
    text = os.fspath(path)
    if key is None and ":" in text and not Path(text).exists() and Path(text.rsplit(":", 1)[0]).is_file():
        text, key = text.rsplit(":", 1)  # file.h5:volumes/raw
    path = Path(text)
    if not path.exists():
        raise MedcompError(f"{path}: no such file or directory")
    try:
        image = _dispatch(path, key)
    except MedcompError:
        raise
    except Exception as exc:  # noqa: BLE001 - every library has its own exception zoo; name the file and go
        raise MedcompError(f"{path}: cannot read ({type(exc).__name__}: {_first_line(exc)})") from exc
    image.name = image.name if image.name != "image" else _stem(path)
    return validate_image(image, str(path))


def _first_line(exc: Exception) -> str:
    msg = str(exc).strip().splitlines()
    return msg[0] if msg else "no detail"


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".nii.gz",) + NIFTI_SUFFIXES + ITK_SUFFIXES + HDF5_SUFFIXES + RASTER_SUFFIXES + (".npy", ".dcm"):
        if name.lower().endswith(suf) and suf:
            return name[: -len(suf)]
    return name


def _dispatch(path: Path, key: str | None) -> Image:
    if path.is_dir():
        rasters = [p for p in path.iterdir() if p.is_file() and _suffix(p) in RASTER_SUFFIXES]
        return read_raster_stack(path, rasters) if rasters else read_dicom_series(path)
    suf = _suffix(path)
    if suf in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suf in ITK_SUFFIXES:
        return read_itk(path)
    if suf in HDF5_SUFFIXES:
        return read_hdf5(path, key)
    if suf == ".npy":
        return read_npy(path)
    if suf in RASTER_SUFFIXES:
        return read_raster(path)
    if suf in DICOM_SUFFIXES or _looks_like_dicom(path):
        return read_dicom_file(path)
    raise MedcompError(f"{path}: unknown file type '{suf}' (expected DICOM, NIfTI, NRRD/MHA, HDF5, PNG/JPEG/TIFF or NPY)")


def _looks_like_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


# --- DICOM -----------------------------------------------------------------------------------------------


def _rescaled(stored: np.ndarray, slope: float, intercept: float, meta: dict) -> np.ndarray:
    """Apply Rescale Slope/Intercept when the result is still integer (CT HU); otherwise keep stored values.

    A non-integral rescale (common on MR) would force float storage and double the bytes a codec is judged on;
    the stored integers are the data, so we keep them and record the rescale in ``meta``.
    """
    if slope == 1.0 and intercept == 0.0:
        return stored
    if float(slope).is_integer() and float(intercept).is_integer():
        out = stored.astype(np.int64) * int(slope) + int(intercept)
        for dt in (np.int16, np.int32):
            if out.min() >= np.iinfo(dt).min and out.max() <= np.iinfo(dt).max:
                meta["units"] = "HU" if meta.get("modality") == "CT" else "rescaled"
                return out.astype(dt)
        return out
    meta["rescale"] = {"slope": float(slope), "intercept": float(intercept), "applied": False}
    return stored


def _dicom_meta(ds) -> dict:
    # Only non-identifying acquisition facts: nothing from the patient/study modules.
    return {
        "format": "dicom",
        "modality": str(ds.get("Modality", "")),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
    }


def read_dicom_file(path: Path) -> Image:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise MedcompError(f"{path}: not a DICOM file ({_first_line(exc)})") from exc
    if "PixelData" not in ds:
        raise MedcompError(f"{path}: DICOM file has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise MedcompError(f"{path}: colour DICOM (SamplesPerPixel={ds.SamplesPerPixel}); only grayscale is supported")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise MedcompError(f"{path}: pixel data cannot be decoded ({_first_line(exc)}); the file may be truncated") from exc
    meta = _dicom_meta(ds)
    array = _rescaled(stored, float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0), meta)
    spacing = None
    if "PixelSpacing" in ds and all(float(s) > 0 for s in ds.PixelSpacing):
        spacing = tuple(float(s) for s in ds.PixelSpacing)
        if array.ndim == 3:
            spacing = (float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0),) + spacing
    return Image(array, spacing, meta)


def read_dicom_series(folder: Path) -> Image:
    """All DICOM files of one folder, sorted by position along the slice normal."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except InvalidDicomError:
            continue  # DICOMDIR-less folders often hold readme files; only DICOM counts
        except Exception as exc:  # noqa: BLE001
            raise MedcompError(f"{f}: cannot read DICOM ({_first_line(exc)})") from exc
        if "PixelData" in ds:
            slices.append((f, ds))
    if not slices:
        raise MedcompError(f"{folder}: folder holds no DICOM images")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise MedcompError(f"{folder}: folder mixes {len(series)} DICOM series; point at one series folder")

    def position(item):
        ds = item[1]
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            o = np.asarray(ds.ImageOrientationPatient, dtype=float)
            normal = np.cross(o[:3], o[3:])
            return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)))
        return float(ds.get("InstanceNumber", 0) or 0)

    slices.sort(key=position)
    arrays, meta = [], _dicom_meta(slices[0][1])
    for f, ds in slices:
        try:
            stored = ds.pixel_array
        except Exception as exc:  # noqa: BLE001
            raise MedcompError(f"{f}: pixel data cannot be decoded ({_first_line(exc)}); the file may be truncated") from exc
        if stored.ndim != 2:
            raise MedcompError(f"{f}: expected one 2-D slice per file in a series, got shape {stored.shape}")
        arrays.append(_rescaled(stored, float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0), meta))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise MedcompError(f"{folder}: slices differ in size {sorted(shapes)}")
    dtype = np.result_type(*[a.dtype for a in arrays])
    volume = np.stack([a.astype(dtype) for a in arrays])
    ds0 = slices[0][1]
    positions = [position(s) for s in slices]
    dz = float(np.median(np.diff(positions))) if len(positions) > 1 else float(ds0.get("SliceThickness", 1.0) or 1.0)
    spacing = None
    if "PixelSpacing" in ds0:
        spacing = (abs(dz) or 1.0,) + tuple(float(s) for s in ds0.PixelSpacing)
    return Image(volume, spacing, meta, name=folder.name)


# --- NIfTI, NRRD/MHA, HDF5, rasters, NPY --------------------------------------------------------------------


def read_nifti(path: Path) -> Image:
    import nibabel as nib

    img = nib.load(str(path))
    proxy = img.dataobj
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    raw = np.asarray(proxy.get_unscaled()) if hasattr(proxy, "get_unscaled") else np.asarray(proxy)
    meta = {"format": "nifti"}
    slope = 1.0 if slope is None or np.isnan(slope) else float(slope)
    inter = 0.0 if inter is None or np.isnan(inter) else float(inter)
    array = _rescaled(raw, slope, inter, meta)
    array = np.squeeze(array) if array.ndim > 3 else array
    zooms = img.header.get_zooms()[: array.ndim]
    # NIfTI stores (x, y, z); the canonical order is (z, y, x).
    return Image(np.ascontiguousarray(array.T), tuple(reversed([float(z) for z in zooms])), meta)


def read_itk(path: Path) -> Image:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise MedcompError(f"{path}: {img.GetNumberOfComponentsPerPixel()}-component image; only grayscale is supported")
    array = sitk.GetArrayFromImage(img)  # already (z, y, x)
    return Image(array, tuple(reversed(img.GetSpacing())), {"format": _suffix(path).lstrip(".")})


def read_hdf5(path: Path, key: str | None) -> Image:
    import h5py

    with h5py.File(path, "r") as fh:
        if key is None:
            names = []
            fh.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
            if len(names) != 1:
                raise MedcompError(f"{path}: HDF5 file has datasets {names[:8]}; choose one with a key (file.h5:KEY)")
            key = names[0]
        if key not in fh or not isinstance(fh[key], h5py.Dataset):
            raise MedcompError(f"{path}: HDF5 file has no dataset '{key}'")
        ds = fh[key]
        array = ds[()]
        res = ds.attrs.get("resolution")
        spacing = tuple(float(r) for r in res) if res is not None and len(res) == array.ndim else None
    return Image(array, spacing, {"format": "hdf5", "key": key})


def read_raster(path: Path) -> Image:
    if _suffix(path) in (".tif", ".tiff"):
        import tifffile

        array = tifffile.imread(path)
    else:
        from PIL import Image as PILImage

        with PILImage.open(path) as im:
            im.load()
            array = np.asarray(im)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise MedcompError(f"{path}: colour image; only grayscale is supported")
        array = np.ascontiguousarray(rgb[..., 0])  # grey stored as RGB (common for exported X-rays)
    return Image(array, None, {"format": _suffix(path).lstrip(".")})


def read_raster_stack(folder: Path, files: list[Path]) -> Image:
    """A folder of 2-D PNG/TIFF/JPEG slices (serial-section EM, exported stacks) as one (z, y, x) volume, in file-name
    order. Every slice must have the same shape and dtype."""
    files = sorted(files)
    slices = [read_raster(f).array for f in files]
    for f, a in zip(files, slices):
        if a.shape != slices[0].shape or a.dtype != slices[0].dtype:
            raise MedcompError(f"{f}: slice is {a.dtype.name} {a.shape}, the stack's first slice "
                               f"{slices[0].dtype.name} {slices[0].shape}")
    return Image(np.stack(slices), None, {"format": "raster_stack", "slices": len(slices)})


def read_npy(path: Path) -> Image:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise MedcompError(f"{path}: not a plain .npy array ({_first_line(exc)})") from exc
    return Image(array, None, {"format": "npy"})
