"""Readers for the formats medical images come in. Each keeps the stored dtype and real units.

Why not MONAI's ``LoadImage`` here: a codec must see the exact stored integers (its CR numerator is the stored
dtype, its PSNR range the stored values). ``LoadImage`` returns float MetaTensors and may reorient; these thin
readers call the same libraries (pydicom, nibabel, SimpleITK, h5py) and change nothing but the axis order, to the
canonical (z, y, x). MONAI is used for training-time transforms, where float tensors are what we want.
"""

from __future__ import annotations

import errno
import os
import re
import stat
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
    check_readable(path)
    try:
        image = _dispatch(path, key)
    except MedcompError:
        raise
    except Exception as exc:  # noqa: BLE001 - every library has its own exception zoo; name the file and go
        raise MedcompError(f"{path}: cannot read ({type(exc).__name__}: {_first_line(exc)})") from exc
    image.name = image.name if image.name != "image" else _stem(path)
    return validate_image(image, str(path))


def check_readable(path: Path) -> None:
    """A regular file or a folder, reachable: a device (/dev/zero reads forever), a FIFO or a socket, a symlink loop
    and a missing path are each one line, before anything is opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MedcompError(f"{path}: symbolic link loop") from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(path):
                raise MedcompError(f"{path}: broken symbolic link (to {os.readlink(path)})") from exc
            raise MedcompError(f"{path}: no such file or directory") from exc
        raise MedcompError(f"{path}: cannot read ({exc.strerror})") from exc
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = ("character device" if stat.S_ISCHR(mode) else "block device" if stat.S_ISBLK(mode) else
                "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "special file")
        raise MedcompError(f"{path}: is a {kind}, not a regular file or folder")


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
        return read_folder(path)
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


def _tag_number(path, ds, keyword: str, default: float) -> float:
    """A numeric attribute (DS) as a finite float; absent or empty → ``default``; anything else is one line."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise MedcompError(f"{path}: {keyword} {value!r} is not a number") from exc
    if not np.isfinite(number):
        raise MedcompError(f"{path}: {keyword} {value!r} is not a finite number")
    return number


def _rescaled_pixels(path, ds, meta: dict) -> tuple[np.ndarray, tuple | None]:
    """The decoded pixels mapped to real values as PS3.3 C.11.1 says, applied or returned (see :func:`_rescaled`):
    a Modality LUT Sequence through pydicom's ``apply_modality_lut`` (the LUT's output is the data: integers, so
    it is applied); otherwise Rescale Slope/Intercept; for RT Dose also DoseGridScaling (dose = stored × scaling,
    C.8.8.3). A slope or scaling of 0 would make every value the same: refused."""
    stored = _pixels(path, ds)
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        values = apply_modality_lut(stored, ds)
        if values.dtype.kind == "f" and np.array_equal(values, np.rint(values)):
            values = values.astype(np.int32)
        meta["units"] = str(ds.ModalityLUTSequence[0].get("ModalityLUTType", "") or "modality LUT")
        return _narrowest(values), None
    slope = _tag_number(path, ds, "RescaleSlope", 1.0)
    intercept = _tag_number(path, ds, "RescaleIntercept", 0.0)
    if str(ds.get("Modality", "")) == "RTDOSE" and "DoseGridScaling" in ds:
        slope *= _tag_number(path, ds, "DoseGridScaling", 1.0)
        meta["units"] = str(ds.get("DoseUnits", "GY"))
    if slope == 0:
        raise MedcompError(f"{path}: rescale slope is 0 (RescaleSlope / DoseGridScaling); every stored value would "
                           "map to the intercept")
    return _rescaled(stored, slope, intercept, meta)


def _narrowest(values: np.ndarray) -> np.ndarray:
    """Integer values in the narrowest of uint8/uint16/int16/int32 that holds them (a LUT's output as pydicom gives
    it may be wider than its entries need)."""
    if values.dtype.kind not in "iu":
        return values
    lo, hi = int(values.min()), int(values.max())
    for dt in (np.uint8, np.uint16, np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return values.astype(dt, copy=False)
    return values


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


OTHER_SUFFIXES = RASTER_SUFFIXES + NIFTI_SUFFIXES + ITK_SUFFIXES + HDF5_SUFFIXES + (
    ".npy", ".txt", ".md", ".pdf", ".xml", ".json", ".csv", ".html", ".htm", ".zip", ".gz")


def _dicom_headers(folder: Path) -> tuple[list, list[Path]]:
    """(path, header) of every DICOM image of ``folder``, and the other files (thumbnails, readmes, reports)."""
    from pydicom.errors import InvalidDicomError

    headers, others = [], []
    for f in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if not f.is_file():
            continue
        if _suffix(f) in OTHER_SUFFIXES:  # never parsed as DICOM: a forced parse of a JPEG can "succeed"
            others.append(f)
            continue
        try:
            ds = _dcmread(f, stop_before_pixels=True)
        except InvalidDicomError:
            others.append(f)  # DICOMDIR-less folders often hold readme files; only DICOM counts
            continue
        except Exception as exc:  # noqa: BLE001
            raise MedcompError(f"{f}: cannot read DICOM ({_first_line(exc)})") from exc
        if "Rows" in ds:  # an image (a DICOMDIR, report or presentation state has no rows)
            headers.append((f, ds))
        else:
            others.append(f)
    return headers, others


def read_folder(folder: Path) -> Image:
    """A folder is a DICOM series when it holds DICOM images (anything else in it is named in a note), else a stack
    of 2-D raster slices."""
    headers, others = _dicom_headers(folder)
    if headers:
        image = read_dicom_series(folder, headers)
        if others:
            names = ", ".join(p.name for p in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            image.meta.setdefault("notes", []).append(
                f"{folder}: read the DICOM series ({len(headers)} slices); ignored {len(others)} other "
                f"file{'s' if len(others) > 1 else ''}: {names}")
        return image
    rasters = [p for p in others if _suffix(p) in RASTER_SUFFIXES]
    if rasters:
        return read_raster_stack(folder, rasters)
    raise MedcompError(f"{folder}: folder holds no DICOM images and no PNG/JPEG/TIFF slices")


# Attributes every slice of one volume must share (PS3.3 C.7.6.3 / C.7.6.2): a series that mixes them is several
# images, and one spacing, one photometric interpretation and one bit depth would be wrong for some of its slices.
SERIES_INVARIANTS = ("Rows", "Columns", "PixelSpacing", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
                     "PixelRepresentation", "SamplesPerPixel")


def _series_invariant(ds, keyword: str):
    value = ds.get(keyword)
    if keyword == "PixelSpacing" and value is not None:
        return tuple(round(float(v), 6) for v in value)
    return str(value).strip() if isinstance(value, str) else value


def read_dicom_series(folder: Path, headers: list | None = None) -> Image:
    """All DICOM files of one folder, sorted by position along the slice normal. Headers are read first (no pixels),
    then the pixels of one slice at a time into the volume: peak memory is the volume plus one slice."""
    if headers is None:
        headers, _ = _dicom_headers(folder)
    if not headers:
        raise MedcompError(f"{folder}: folder holds no DICOM images")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise MedcompError(f"{folder}: folder mixes {len(series)} DICOM series; point at one series folder")
    ds0 = headers[0][1]
    for f, ds in headers:
        for key in SERIES_INVARIANTS:
            if _series_invariant(ds, key) != _series_invariant(ds0, key):
                raise MedcompError(f"{f}: {key} {_series_invariant(ds, key)} differs from the series' first slice "
                                   f"({_series_invariant(ds0, key)}); slices of one volume must share it")
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


# deflate (gzip, zlib) codes at most 1032 bytes into one (RFC 1951: a 258-byte match in at least 2 bits)
DEFLATE_MAX_RATIO = 1032


def check_inflatable(path: Path, claimed: int) -> None:
    """Refuse, before inflating, a compressed file whose header claims more bytes than deflate can give back from
    the file's size: a 337-byte forged .nii.gz must not allocate 2 GB to find out."""
    size = path.stat().st_size
    if claimed > size * DEFLATE_MAX_RATIO:
        raise MedcompError(f"{path}: header claims {claimed} bytes of voxels, more than {size} compressed bytes can "
                           f"hold (deflate reaches at most {DEFLATE_MAX_RATIO}:1)")


def read_nifti(path: Path) -> Image:
    import nibabel as nib

    img = nib.load(str(path))
    hdr = img.header
    shape = tuple(int(n) for n in img.shape)
    claimed = int(np.prod(shape)) * hdr.get_data_dtype().itemsize
    offset = int(hdr.get_data_offset())
    if _suffix(path) == ".nii.gz":
        check_inflatable(path, claimed + offset)
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


def _itk_itemsizes() -> dict:
    """SimpleITK pixel ids → NumPy dtypes, for the bytes a header claims (unknown ids: 1 byte, the smallest claim)."""
    import SimpleITK as sitk

    return {getattr(sitk, f"sitk{n}"): t for n, t in (
        ("UInt8", "u1"), ("Int8", "i1"), ("UInt16", "u2"), ("Int16", "i2"), ("UInt32", "u4"), ("Int32", "i4"),
        ("UInt64", "u8"), ("Int64", "i8"), ("Float32", "f4"), ("Float64", "f8"))}


def read_itk(path: Path) -> Image:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetNumberOfComponents() != 1:
        raise MedcompError(f"{path}: {reader.GetNumberOfComponents()}-component image; only grayscale is supported")
    claimed = int(np.prod(reader.GetSize())) * np.dtype(_itk_itemsizes().get(reader.GetPixelIDValue(), "u1")).itemsize
    if _suffix(path) in (".mha", ".nrrd"):  # data in the same file: compressed or raw, it cannot hold more than this
        check_inflatable(path, claimed)
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
    notes: list[str] = []
    if _suffix(path) in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_fits(int(np.prod(series.shape)) * series.dtype.itemsize * 2, str(path))
            array = series.asarray()
            samples = series.axes.endswith("S")  # last axis holds samples (grey+alpha, RGB), not slices
    else:
        array, samples = _read_pil(path, notes), True
    if samples and array.ndim == 3 and array.shape[-1] in (2, 4):  # grey+alpha, RGBA
        alpha = array[..., -1]
        if not np.all(alpha == alpha.flat[0]):
            raise MedcompError(f"{path}: image has a transparency (alpha) channel that is not uniform; "
                               "only grayscale is supported (flatten it first)")
        notes.append(f"{path}: uniform alpha channel dropped")
        array = array[..., :-1] if array.shape[-1] == 4 else array[..., 0]
    if samples and array.ndim == 3 and array.shape[-1] == 3:
        if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
            raise MedcompError(f"{path}: colour image; only grayscale is supported")
        array = np.ascontiguousarray(array[..., 0])  # grey stored as RGB (common for exported X-rays)
    image = Image(np.ascontiguousarray(array), None, {"format": _suffix(path).lstrip(".")})
    if notes:
        image.meta["notes"] = notes
    return image


def _read_pil(path: Path, notes: list[str]) -> np.ndarray:
    """A PNG/JPEG/BMP through Pillow. A palette image is its palette's values, not its indices: applied when the
    palette is grey, refused when it holds colours."""
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        check_fits(im.width * im.height * 8 * 2, str(path))
        im.load()
        if im.mode in ("P", "PA"):
            indices = np.asarray(im.getchannel(0) if im.mode == "PA" else im)
            palette = np.asarray(im.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
            used = palette[np.unique(indices)] if len(palette) > int(indices.max()) else None
            if used is None:
                raise MedcompError(f"{path}: palette image whose indices run past its palette")
            if not (np.array_equal(used[:, 0], used[:, 1]) and np.array_equal(used[:, 0], used[:, 2])):
                raise MedcompError(f"{path}: colour palette image; only grayscale is supported")
            if "transparency" in im.info:
                raise MedcompError(f"{path}: palette image with transparency; only grayscale is supported")
            notes.append(f"{path}: grey palette applied (the stored values are palette indices)")
            grey = palette[indices, 0]
            return np.stack([grey, np.asarray(im.getchannel(1))], axis=-1) if im.mode == "PA" else grey
        if im.mode in ("L", "I;16") and "transparency" in im.info:
            raise MedcompError(f"{path}: grayscale image with a transparent colour key; only plain grayscale "
                               "is supported")
        return np.asarray(im)


def natural_key(path: Path) -> list:
    """Sort key of a file name with its runs of digits compared as numbers (slice_2 before slice_10)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", path.name)]


def read_raster_stack(folder: Path, files: list[Path]) -> Image:
    """A folder of 2-D PNG/TIFF/JPEG slices (serial-section EM, exported stacks) as one (z, y, x) volume, in natural
    file-name order (2.png before 10.png: the ISBI 2012 stack is 0.png … 29.png, and a text sort put 10–19 between 1
    and 2). Every slice must have the same shape and dtype."""
    files = sorted(files, key=natural_key)
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


def peek_shape(ref: str | os.PathLike) -> tuple[tuple[int, ...], str]:
    """(shape in medcomp's (z, y, x) order, stored dtype name) of an image from its headers alone — no pixel is
    read: NIfTI and ITK headers, an HDF5 dataset's metadata (``file.h5:key``), DICOM headers (a series folder: its
    files counted, one header read), a raster's header. For listing a dataset's cases (``medcomp cases``)."""
    ref = str(ref)
    path, _, key = ref.rpartition(":") if re.search(r"\.(h5|hdf5?|hdf):[^/\\]", ref) else (ref, "", "")
    path = Path(path)
    suffix = _suffix(path)
    if suffix in (".h5", ".hdf5", ".hdf"):
        import h5py

        with h5py.File(path, "r") as fh:
            ds = fh[key] if key else next(v for v in fh.values() if isinstance(v, h5py.Dataset))
            return tuple(int(n) for n in ds.shape), ds.dtype.name
    if suffix in (".nii", ".nii.gz"):
        import nibabel as nib

        hdr = nib.load(str(path)).header
        return tuple(int(n) for n in reversed(hdr.get_data_shape()[:3])), hdr.get_data_dtype().name
    if suffix in (".mha", ".mhd", ".nrrd"):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        dtype = np.dtype(_itk_itemsizes().get(reader.GetPixelIDValue(), "u1")).name
        return tuple(int(n) for n in reversed(reader.GetSize())), dtype
    files = sorted((p for p in path.iterdir() if p.is_file()), key=natural_key) if path.is_dir() else [path]
    if path.is_dir() and files and not _looks_like_dicom(files[0]):  # a folder of PNG/TIFF slices
        (h, w), dtype = peek_shape(files[0])
        return (len(files), h, w), dtype
    if path.is_dir() or _looks_like_dicom(path):
        ds = _dcmread(files[0], stop_before_pixels=True)
        bits, signed = int(getattr(ds, "BitsAllocated", 16)), int(getattr(ds, "PixelRepresentation", 0))
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1) if len(files) == 1 else len(files)
        shape = (int(ds.Rows), int(ds.Columns)) if frames == 1 and len(files) == 1 else (frames, int(ds.Rows), int(ds.Columns))
        return shape, np.dtype(f"{'i' if signed else 'u'}{max(1, bits // 8)}").name
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        return (im.height, im.width), np.dtype("u2" if im.mode.startswith("I;16") else "u1").name
