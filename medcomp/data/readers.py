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

from medcomp.data.geometry import direction_from_dicom, from_ras_affine
from medcomp.data.image import Image, validate_image
from medcomp.errors import MedcompError
from medcomp.utils.memory import check_fits

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

GREYSCALE = ("MONOCHROME1", "MONOCHROME2")


def _rescaled(stored: np.ndarray, slope: float, intercept: float, meta: dict) -> tuple[np.ndarray, tuple | None]:
    """Apply Rescale Slope/Intercept when the result is still integer (CT HU) and return (array, None); otherwise
    keep the stored values and return the rescale, which travels with the image to every writer.

    A non-integral rescale (common on MR) would force float storage and double the bytes a codec is judged on;
    the stored integers are the data, and real = slope × stored + intercept is written back on output.
    """
    if slope == 1.0 and intercept == 0.0:
        return stored, None
    if float(slope).is_integer() and float(intercept).is_integer() and stored.dtype.kind in "iu":
        lo, hi = (int(v) * int(slope) + int(intercept) for v in (stored.min(), stored.max()))
        lo, hi = min(lo, hi), max(lo, hi)
        for dt in (np.int16, np.int32):
            if lo >= np.iinfo(dt).min and hi <= np.iinfo(dt).max:
                out = stored.astype(dt)  # in place from here: one copy of the volume, not an int64 one
                if slope != 1:
                    out *= dt(int(slope))
                out += dt(int(intercept))
                meta["units"] = "HU" if meta.get("modality") == "CT" else "rescaled"
                return out, None
    return stored, (float(slope), float(intercept))


def _dicom_meta(ds) -> dict:
    # Only non-identifying acquisition facts: nothing from the patient/study modules.
    meta = {"format": "dicom", "modality": str(ds.get("Modality", "")),
            "bits_stored": int(ds.get("BitsStored", 0) or 0)}
    if str(ds.get("LossyImageCompression", "")) == "01":
        meta["source_lossy"] = True  # kept so that a decoded DICOM still says its pixels were lossy before
    return meta


def _dcmread(path: Path, **kwargs):
    """pydicom.dcmread that also takes files without the 128-byte preamble and file meta (older exports): their
    transfer syntax is the encoding pydicom found while parsing."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, force=True, **kwargs)
        if "SOPClassUID" not in ds and "PixelData" not in ds and "Rows" not in ds:
            raise
        if "TransferSyntaxUID" not in ds.file_meta:
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        return ds


def _check_pixel_module(path, ds) -> None:
    if "PixelData" not in ds:
        raise MedcompError(f"{path}: DICOM file has no pixel data")
    photometric = _photometric(ds)
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric not in GREYSCALE:
        raise MedcompError(f"{path}: {photometric} DICOM (SamplesPerPixel={ds.get('SamplesPerPixel', 1)}); "
                           "only grayscale (MONOCHROME1/2) is supported")


def _photometric(ds) -> str:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()


def _rescaled_pixels(path, ds, meta: dict) -> tuple[np.ndarray, tuple | None]:
    """The decoded pixels with the file's Rescale Slope/Intercept applied or returned (see :func:`_rescaled`)."""
    return _rescaled(_pixels(path, ds), float(ds.get("RescaleSlope", 1) or 1),
                     float(ds.get("RescaleIntercept", 0) or 0), meta)


def _pixels(path, ds) -> np.ndarray:
    try:
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        ts = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(ts, "name", str(ts))
        raise MedcompError(f"{path}: pixel data cannot be decoded (transfer syntax {name}: "
                           f"{_first_line(exc)}); the file may be truncated or use an unsupported encoding") from exc
    return stored if stored.dtype.isnative else stored.astype(stored.dtype.newbyteorder("="))


def _plane_geometry(ds) -> tuple[tuple | None, tuple | None, tuple | None]:
    """(in-plane spacing (y, x), origin, direction) of one DICOM image; None where the file does not say."""
    spacing = None
    for key in ("PixelSpacing", "ImagerPixelSpacing"):  # projection radiographs often only have the latter
        if key in ds and len(ds[key].value) == 2 and all(float(s) > 0 for s in ds[key].value):
            spacing = tuple(float(s) for s in ds[key].value)
            break
    origin = tuple(float(v) for v in ds.ImagePositionPatient) if "ImagePositionPatient" in ds else None
    direction = direction_from_dicom(ds.ImageOrientationPatient) if "ImageOrientationPatient" in ds else None
    return spacing, origin, direction


def read_dicom_file(path: Path) -> Image:
    from pydicom.errors import InvalidDicomError

    try:
        ds = _dcmread(path)
    except InvalidDicomError as exc:
        raise MedcompError(f"{path}: not a DICOM file ({_first_line(exc)})") from exc
    _check_pixel_module(path, ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    check_fits(int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * frames * 8, str(path), "its pixel data")
    meta = _dicom_meta(ds)
    array, rescale = _rescaled_pixels(path, ds, meta)
    spacing, origin, direction = _plane_geometry(ds)
    if array.ndim == 3:  # multi-frame: legacy or enhanced; the per-frame geometry of enhanced objects is not read
        dz = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0)
        spacing = (dz,) + spacing if spacing else None
    return Image(array, spacing, meta, origin=origin, direction=direction, rescale=rescale,
                 photometric=_photometric(ds), modality=meta["modality"] or None)


def read_dicom_series(folder: Path) -> Image:
    """All DICOM files of one folder, sorted by position along the slice normal. Headers are read first (no pixels),
    then the pixels of one slice at a time into the volume: peak memory is the volume plus one slice."""
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    headers = []
    for f in files:
        try:
            ds = _dcmread(f, stop_before_pixels=True)
        except InvalidDicomError:
            continue  # DICOMDIR-less folders often hold readme files; only DICOM counts
        except Exception as exc:  # noqa: BLE001
            raise MedcompError(f"{f}: cannot read DICOM ({_first_line(exc)})") from exc
        if "Rows" in ds:  # an image (a DICOMDIR, report or presentation state has no rows)
            headers.append((f, ds))
    if not headers:
        raise MedcompError(f"{folder}: folder holds no DICOM images")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise MedcompError(f"{folder}: folder mixes {len(series)} DICOM series; point at one series folder")
    ds0 = headers[0][1]
    for f, ds in headers:
        if (ds.Rows, ds.Columns) != (ds0.Rows, ds0.Columns):
            raise MedcompError(f"{f}: slice is {ds.Rows}×{ds.Columns}, the series' first slice {ds0.Rows}×{ds0.Columns}")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise MedcompError(f"{f}: expected one 2-D slice per file in a series, got {ds.NumberOfFrames} frames")
    oriented = all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in headers)
    if oriented:
        iop = np.asarray(ds0.ImageOrientationPatient, dtype=float)
        for f, ds in headers:
            if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-4):
                raise MedcompError(f"{f}: ImageOrientationPatient differs from the series' first slice; "
                                   "slices of one volume must share one orientation")
        normal = np.cross(iop[:3], iop[3:])
        along = [float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for _, ds in headers]
        order = np.argsort(along, kind="stable")
        headers, positions = [headers[i] for i in order], [along[i] for i in order]
    else:
        headers.sort(key=lambda item: float(item[1].get("InstanceNumber", 0) or 0))
        positions = []
    ds0 = headers[0][1]
    check_fits(len(headers) * int(ds0.Rows) * int(ds0.Columns) * 8, str(folder), "the series")
    meta = _dicom_meta(ds0)
    volume, rescales = None, set()
    for k, (f, _) in enumerate(headers):
        ds = _dcmread(f)
        _check_pixel_module(f, ds)
        plane, rescale = _rescaled_pixels(f, ds, meta)
        if plane.ndim != 2:
            raise MedcompError(f"{f}: expected one 2-D slice per file in a series, got shape {plane.shape}")
        rescales.add(rescale)
        if volume is None:
            volume = np.empty((len(headers),) + plane.shape, dtype=plane.dtype)
        elif plane.dtype != volume.dtype:
            volume = volume.astype(np.result_type(volume.dtype, plane.dtype))
        volume[k] = plane
    if len(rescales) > 1:
        raise MedcompError(f"{folder}: slices have different non-integral rescale slopes/intercepts "
                           f"{sorted(map(str, rescales))[:3]}; convert the series to real values first")
    spacing, origin, direction = _plane_geometry(ds0)
    if positions:
        steps = np.diff(positions)
        dz = float(np.median(steps)) if len(positions) > 1 else float(ds0.get("SliceThickness", 1.0) or 1.0)
        if len(steps) and (np.min(steps) <= 0 or np.ptp(steps) > 0.01 * abs(dz) + 1e-3):
            raise MedcompError(f"{folder}: slice positions are not evenly spaced (steps {np.min(steps):.4g}…"
                               f"{np.max(steps):.4g} mm); a volume needs one slice spacing")
    else:
        dz = float(ds0.get("SpacingBetweenSlices", ds0.get("SliceThickness", 1.0)) or 1.0)
    spacing = (abs(dz) or 1.0,) + spacing if spacing else None
    return Image(volume, spacing, meta, name=folder.name, origin=origin, direction=direction,
                 rescale=next(iter(rescales)), modality=meta["modality"] or None, photometric=_photometric(ds0))


# --- NIfTI, NRRD/MHA, HDF5, rasters, NPY --------------------------------------------------------------------


def _gzip_size(path: Path) -> int:
    """Uncompressed size of a gzip file, from its trailer (modulo 2**32, as the format stores it)."""
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def read_nifti(path: Path) -> Image:
    import nibabel as nib

    img = nib.load(str(path))
    hdr = img.header
    shape = tuple(int(n) for n in img.shape)
    claimed = int(np.prod(shape)) * hdr.get_data_dtype().itemsize
    offset = int(hdr.get_data_offset())
    if _suffix(path) == ".nii.gz":
        have = _gzip_size(path) - offset
        if claimed + offset < 2**32 and have < claimed:
            raise MedcompError(f"{path}: header claims {shape} voxels ({claimed} bytes), the file holds {max(have, 0)}")
    elif path.stat().st_size - offset < claimed:
        raise MedcompError(f"{path}: header claims {shape} voxels ({claimed} bytes), the file holds "
                           f"{max(path.stat().st_size - offset, 0)}")
    check_fits(claimed * 2, str(path))
    proxy = img.dataobj
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    raw = np.asarray(proxy.get_unscaled()) if hasattr(proxy, "get_unscaled") else np.asarray(proxy)
    meta = {"format": "nifti"}
    slope = 1.0 if slope is None or np.isnan(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or np.isnan(inter) else float(inter)
    array, rescale = _rescaled(raw, slope, inter, meta)
    array = np.squeeze(array, axis=tuple(range(3, array.ndim))) if array.ndim > 3 else array
    ndim = min(array.ndim, 3)
    spacing, origin, direction = from_ras_affine(img.affine, ndim)
    # NIfTI stores (x, y, z); the canonical order is (z, y, x).
    return Image(np.ascontiguousarray(array.T), spacing, meta, origin=origin, direction=direction, rescale=rescale)


def itk_geometry(img) -> tuple[tuple, tuple, tuple]:
    """(spacing in array order, origin, direction) of a SimpleITK image, 2-D ones placed in 3-D."""
    n = img.GetDimension()
    d = np.eye(3)
    d[:n, :n] = np.asarray(img.GetDirection(), dtype=float).reshape(n, n)
    origin = (list(img.GetOrigin()) + [0.0, 0.0])[:3]
    return tuple(reversed(img.GetSpacing())), tuple(origin), tuple(float(v) for v in d.reshape(-1))


def read_itk(path: Path) -> Image:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetNumberOfComponents() != 1:
        raise MedcompError(f"{path}: {reader.GetNumberOfComponents()}-component image; only grayscale is supported")
    check_fits(int(np.prod(reader.GetSize())) * 8 * 2, str(path))
    img = reader.Execute()
    array = sitk.GetArrayFromImage(img)  # already (z, y, x)
    spacing, origin, direction = itk_geometry(img)
    return Image(array, spacing, {"format": _suffix(path).lstrip(".")}, origin=origin, direction=direction)


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
        check_fits(int(ds.size) * ds.dtype.itemsize * 2, str(path))
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
        with open(path, "rb") as fh:  # check the header's shape against the file before allocating it
            version = np.lib.format.read_magic(fh)
            shape, _, dtype = np.lib.format._read_array_header(fh, version)
            need = int(np.prod(shape)) * dtype.itemsize
            if dtype.hasobject:
                raise ValueError("object arrays are not images")
            if path.stat().st_size - fh.tell() < need:
                raise MedcompError(f"{path}: header claims {shape} {dtype} ({need} bytes), the file holds "
                                   f"{path.stat().st_size - fh.tell()}")
        check_fits(need * 2, str(path))
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise MedcompError(f"{path}: not a plain .npy array ({_first_line(exc)})") from exc
    return Image(array, None, {"format": "npy"})
