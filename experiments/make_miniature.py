"""A miniature MSD Liver built from the shared real volumes: six cases in the Decathlon's own layout
(``Task03_Liver/{dataset.json, imagesTr/liver_K.nii.gz, labelsTr/liver_K.nii.gz}``), so that a dataset sweep
(``data=msd_liver data.root=OUT data.shard=K/N``, ``medcomp report``) can be tried end to end without MSD's 28 GB.

    python experiments/make_miniature.py OUT                        # the volumes as they are (≈ 20 MB)
    python experiments/make_miniature.py OUT --side 48 --depth 12   # centre crops: a sweep of minutes, for tests

The cases (``$MEDCOMP_SHARED_DATA``, default ../shared/data): the abdomen CT's upper and lower halves, the two thorax
CTA crops, the 20-slice abdomen DICOM series and the ISBI 2012 EM training stack (an EM volume in CT's clothes: a
different modality, dtype and texture among the cases, as a real dataset has outliers). Geometry (spacing, origin,
direction) is kept; a crop moves the origin to the crop's first voxel. Labels: the EM stack's membrane labels; the CT
cases have no liver masks here, so their label volumes are empty (nothing in medcomp's compression reads them).
The miniature is built, never committed: the ISBI data's licence is non-commercial research use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medcomp.bench import shared_data_or_exit  # noqa: E402
from medcomp.data.geometry import lps_affine  # noqa: E402
from medcomp.data.image import Image  # noqa: E402
from medcomp.data.readers import read_image  # noqa: E402
from medcomp.data.writers import write_image  # noqa: E402

# (case id, source under the shared data, slices taken (None: all), label source or None)
CASES = [
    ("liver_0", "ct/abdomen_ct_122x101x112.nii.gz", (0, 56), None),
    ("liver_1", "ct/abdomen_ct_122x101x112.nii.gz", (56, 112), None),
    ("liver_2", "ct/thorax_cta_crop_a.nii.gz", None, None),
    ("liver_3", "ct/thorax_cta_crop_b.nii.gz", None, None),
    ("liver_4", "ct/abdomen_ct_dicom_series", None, None),
    ("liver_5", "em/isbi2012/train/image", None, "em/isbi2012/train/label"),
]


def crop(image: Image, start: tuple[int, ...], stop: tuple[int, ...]) -> Image:
    """The sub-volume [start, stop) with its origin moved to the new first voxel (the same place in the patient)."""
    index = tuple(slice(a, b) for a, b in zip(start, stop))
    out = image.like(np.ascontiguousarray(image.array[index]))
    if image.origin is not None or any(start):
        shift = lps_affine(image.spacing, image.origin, image.direction, image.ndim) @ np.array([*reversed(start), 1.0])
        out.origin = tuple(float(v) for v in shift[:3])
    return out


def window(shape: tuple[int, ...], slices: tuple[int, int] | None, side: int | None, depth: int | None):
    """(start, stop) of the case: the slices asked for, then centred crops to ``depth`` slices and ``side`` pixels."""
    z0, z1 = slices or (0, shape[0])
    start, stop = [z0, 0, 0], [z1, shape[1], shape[2]]
    for axis, most in ((0, depth), (1, side), (2, side)):
        if most and stop[axis] - start[axis] > most:
            start[axis] += (stop[axis] - start[axis] - most) // 2
            stop[axis] = start[axis] + most
    return tuple(start), tuple(stop)


def build(out: Path, shared: Path, side: int | None = None, depth: int | None = None) -> list[dict]:
    task = out / "Task03_Liver"
    (task / "imagesTr").mkdir(parents=True, exist_ok=True)
    (task / "labelsTr").mkdir(parents=True, exist_ok=True)
    training, listing = [], []
    for case_id, source, slices, label_source in CASES:
        image = read_image(shared / source)
        start, stop = window(image.array.shape, slices, side, depth)
        case = crop(image, start, stop)
        if label_source:
            label = crop(read_image(shared / label_source), start, stop)
            label = case.like((label.array > 0).astype(np.uint8))
        else:
            label = case.like(np.zeros(case.array.shape, np.uint8))
        image_path, label_path = task / "imagesTr" / f"{case_id}.nii.gz", task / "labelsTr" / f"{case_id}.nii.gz"
        write_image(image_path, case)
        write_image(label_path, label)
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
        listing.append({"id": case_id, "source": source, "shape": list(case.array.shape),
                        "dtype": str(case.array.dtype), "spacing": list(case.spacing or ())})
    (task / "dataset.json").write_text(json.dumps({
        "name": "Liver (medcomp miniature)",
        "description": "six cases from medcomp's shared real volumes in the MSD Task03 layout "
                       "(experiments/make_miniature.py); not MSD data",
        "modality": {"0": "CT"}, "labels": {"0": "background"},
        "numTraining": len(training), "numTest": 0, "training": training, "test": [],
        "sources": listing,
    }, indent=2))
    return listing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the dataset root (data.root): Task03_Liver is made under it")
    parser.add_argument("--side", type=int, default=None, help="centre crop to at most this many rows and columns")
    parser.add_argument("--depth", type=int, default=None, help="centre crop to at most this many slices")
    args = parser.parse_args(argv)
    shared = shared_data_or_exit("the miniature dataset")
    for case in build(args.out, shared, args.side, args.depth):
        print(f"{case['id']}: {case['source']} {tuple(case['shape'])} {case['dtype']}")
    print(f"python run.py -m data=msd_liver data.root={args.out} data.split=all data.shard=0/3,1/3,2/3 ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
