"""Where an image lies in the patient: the voxel → world mapping, in the ITK/DICOM convention (LPS, mm).

``Image.spacing`` follows the array's axis order ((z, y, x) or (y, x)); ``origin`` and ``direction`` follow ITK and
SimpleITK: ``origin`` is the LPS position of the first voxel's centre, ``direction`` the 3×3 matrix in row-major
order whose column *i* is the unit vector of index axis *i* in (x, y, z) order, i.e. of the array axes reversed.
A 2-D image keeps a 3-D placement (a DICOM slice lies somewhere in the patient): its third column is the normal.

Hand-written because every library spells this differently (nibabel: RAS affine; pydicom: IPP/IOP strings;
SimpleITK: its own objects); these few lines are the one translation table between them.
"""

from __future__ import annotations

import numpy as np

from medcomp.errors import MedcompError

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_affine(spacing: tuple | None, origin: tuple | None, direction: tuple | None, ndim: int) -> np.ndarray:
    """4×4 matrix taking (x, y, z, 1) voxel indices to LPS millimetres."""
    sp = list(reversed(spacing)) if spacing else [1.0] * ndim
    sp = (sp + [1.0, 1.0, 1.0])[:3]
    d = np.asarray(direction, dtype=float).reshape(3, 3) if direction is not None else np.eye(3)
    a = np.eye(4)
    a[:3, :3] = d * np.asarray(sp)[None, :]
    a[:3, 3] = origin if origin is not None else 0.0
    return a


def from_lps_affine(affine: np.ndarray, ndim: int) -> tuple[tuple, tuple, tuple]:
    """(spacing in array order, origin, direction) of a 4×4 LPS affine; spacing has ``ndim`` entries."""
    m = np.asarray(affine, dtype=float)[:3, :3]
    sp = np.linalg.norm(m, axis=0)
    if np.any(sp == 0) or not np.all(np.isfinite(m)):
        raise MedcompError(f"degenerate voxel-to-world matrix {m.tolist()}")
    d = m / sp[None, :]
    return (tuple(float(s) for s in reversed(sp[:ndim])), tuple(float(v) for v in np.asarray(affine)[:3, 3]),
            tuple(float(v) for v in d.reshape(-1)))


def from_ras_affine(affine: np.ndarray, ndim: int) -> tuple[tuple, tuple, tuple]:
    return from_lps_affine(LPS_FROM_RAS @ np.asarray(affine, dtype=float), ndim)


def ras_affine(spacing, origin, direction, ndim: int) -> np.ndarray:
    return LPS_FROM_RAS @ lps_affine(spacing, origin, direction, ndim)


def direction_from_dicom(orientation, normal_sign: float = 1.0) -> tuple:
    """ITK direction from ImageOrientationPatient (row cosine = x axis, column cosine = y axis) and the normal."""
    o = np.asarray([float(v) for v in orientation], dtype=float)
    row, col = o[:3], o[3:]
    normal = np.cross(row, col) * normal_sign
    return tuple(float(v) for v in np.stack([row, col, normal], axis=1).reshape(-1))


def dicom_orientation(direction) -> list[float]:
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return [float(v) for v in np.concatenate([d[:, 0], d[:, 1]])]


def slice_positions(origin, direction, spacing_z: float, n: int) -> np.ndarray:
    """ImagePositionPatient of each of ``n`` slices of a volume (LPS mm)."""
    d = np.asarray(direction if direction is not None else np.eye(3).reshape(-1), dtype=float).reshape(3, 3)
    o = np.asarray(origin if origin is not None else (0.0, 0.0, 0.0), dtype=float)
    return o[None, :] + np.arange(n)[:, None] * spacing_z * d[:, 2][None, :]
