"""The papers' datasets, read from their own on-disk layouts (no conversion scripts).

Each dataset has a lister: ``root`` → a list of cases, one dict per image or volume (MONAI's data-list style):
    {"id", "patient", "image": path (or "file.hdf:key"), "label": segmentation path or None,
     "targets": {name: 0/1} or None, "text": report or None, "split": official split or None, ...}
Listers check the layout and stop at the first missing file with one error that names the expected layout, that
file and the official download page. They never create anything under ``root``.
Splits are by patient with a fixed seed (``split_cases``); official test lists are kept where a dataset has them.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medcomp.errors import MedcompError

NIH_LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
              "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
CT_RATE_LABELS = ["Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
                  "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema", "Atelectasis",
                  "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion",
                  "Mosaic attenuation pattern", "Peribronchial thickening", "Consolidation", "Bronchiectasis",
                  "Interlobular septal thickening"]
MSD_TASKS = {"msd_liver": "Task03_Liver", "msd_colon": "Task10_Colon", "msd_spleen": "Task09_Spleen"}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str            # "volume" (3-D) or "cxr" (2-D radiographs with labels)
    url: str
    layout: str
    lister: Callable[..., list[dict]]


def _missing(info: DatasetInfo, path: Path, what: str = "missing") -> MedcompError:
    return MedcompError(f"{path}: {what}; data={info.name} expects {info.layout} (download: {info.url})")


def _need(info: DatasetInfo, path: Path) -> Path:
    if not path.exists():
        raise _missing(info, path)
    return path


def _read_csv(info: DatasetInfo, path: Path, required: list[str]) -> list[dict]:
    with open(_need(info, path), newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        absent = [c for c in required if c not in (reader.fieldnames or [])]
        if absent:
            raise _missing(info, path, f"no column {absent[0]!r} (columns: {', '.join(reader.fieldnames or [])})")
        return list(reader)


# ── listers ──────────────────────────────────────────────────────────────────────────────────────────────────────


def list_msd(info: DatasetInfo, root: Path, download: bool = False, **_) -> list[dict]:
    """Medical Segmentation Decathlon: ``root/TaskXX_Name/dataset.json`` + imagesTr/ + labelsTr/ (NIfTI)."""
    from monai.data import load_decathlon_datalist

    task = MSD_TASKS[info.name]
    task_dir = root if root.name == task else root / task
    if download and not (task_dir / "dataset.json").exists():
        # MONAI's DecathlonDataset downloads, checks the md5 and extracts (needs a network; off by default).
        from monai.apps import DecathlonDataset

        DecathlonDataset(root_dir=str(task_dir.parent), task=task, section="training", download=True, cache_rate=0.0,
                         val_frac=0.0)
    listing = load_decathlon_datalist(str(_need(info, task_dir / "dataset.json")), is_segmentation=True,
                                      data_list_key="training", base_dir=str(task_dir))
    cases = []
    for item in listing:
        image, label = Path(item["image"]), Path(item["label"])
        _need(info, image), _need(info, label)
        cid = image.name.removesuffix(".gz").removesuffix(".nii")
        cases.append({"id": cid, "patient": cid, "image": str(image), "label": str(label)})
    return cases


def list_cremi(info: DatasetInfo, root: Path, **_) -> list[dict]:
    """CREMI: ``root/*.hdf`` (or .h5) with ``volumes/raw`` (z, y, x uint8, resolution 40×4×4 nm) and optionally
    ``volumes/labels/neuron_ids``."""
    import h5py

    files = sorted(p for p in _need(info, root).iterdir() if p.suffix in (".hdf", ".h5", ".hdf5"))
    if not files:
        raise _missing(info, root / "sample_A_20160501.hdf", "no CREMI .hdf files")
    cases = []
    for f in files:
        with h5py.File(f, "r") as fh:
            if "volumes/raw" not in fh:
                raise _missing(info, f, "no 'volumes/raw' dataset")
            has_labels = "volumes/labels/neuron_ids" in fh
        cases.append({"id": f.stem, "patient": f.stem, "image": f"{f}:volumes/raw",
                      "label": f"{f}:volumes/labels/neuron_ids" if has_labels else None,
                      "spacing_scale": 1e-6})  # CREMI resolution is in nm; medcomp spacings are mm
    return cases


def list_lidc_idri(info: DatasetInfo, root: Path, **_) -> list[dict]:
    """LIDC-IDRI as TCIA downloads it: ``root/LIDC-IDRI-XXXX/<study>/<series>/*.dcm``; CT series only (the
    collection also holds radiographs); HU from the rescale tags."""
    import pydicom

    patients = sorted(p for p in _need(info, root).iterdir() if p.is_dir() and p.name.startswith("LIDC-IDRI-"))
    if not patients:
        raise _missing(info, root / "LIDC-IDRI-0001", "no patient folders")
    cases = []
    for patient in patients:
        for series in sorted({f.parent for f in patient.rglob("*.dcm")}):
            first = next(iter(sorted(series.glob("*.dcm"))))
            ds = pydicom.dcmread(first, stop_before_pixels=True)
            if str(ds.get("Modality", "")) != "CT":
                continue
            cases.append({"id": f"{patient.name}/{series.parent.name[-8:]}/{series.name[-8:]}",
                          "patient": patient.name, "image": str(series)})
    if not cases:
        raise _missing(info, patients[0], "no CT series (folders of .dcm files)")
    return cases


def list_luna16(info: DatasetInfo, root: Path, val_subsets=(8,), test_subsets=(9,), **_) -> list[dict]:
    """LUNA16: ``root/subset0..9/<seriesuid>.mhd`` (+ .raw) and ``root/annotations.csv``; the subsets are the
    official folds (val/test subsets from the config)."""
    rows = _read_csv(info, root / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
    nodules: dict[str, list] = {}
    for r in rows:
        nodules.setdefault(r["seriesuid"], []).append(
            [float(r["coordX"]), float(r["coordY"]), float(r["coordZ"]), float(r["diameter_mm"])])
    subsets = sorted(p for p in root.glob("subset*") if p.is_dir())
    if not subsets:
        raise _missing(info, root / "subset0", "no subset folders")
    cases = []
    for sub in subsets:
        k = int(sub.name.removeprefix("subset"))
        split = "test" if k in test_subsets else "val" if k in val_subsets else "train"
        for mhd in sorted(sub.glob("*.mhd")):
            _need(info, mhd.with_suffix(".raw"))
            cases.append({"id": mhd.stem, "patient": mhd.stem, "image": str(mhd), "split": split,
                          "nodules_xyzd_mm": nodules.get(mhd.stem, [])})
    if not cases:
        raise _missing(info, subsets[0] / "<seriesuid>.mhd", "no .mhd scans")
    return cases


def list_chestxray8(info: DatasetInfo, root: Path, **_) -> list[dict]:
    """NIH ChestX-ray8/14: ``root/images*/**/*.png``, ``root/Data_Entry_2017*.csv`` (Image Index, Finding Labels,
    Patient ID, …), ``root/train_val_list*.txt`` and ``root/test_list*.txt`` (the official split)."""
    entries = sorted(_need(info, root).glob("Data_Entry_2017*.csv"))
    if not entries:
        raise _missing(info, root / "Data_Entry_2017_v2020.csv")
    rows = _read_csv(info, entries[0], ["Image Index", "Finding Labels", "Patient ID"])
    test_lists = sorted(root.glob("test_list*.txt"))
    if not test_lists:
        raise _missing(info, root / "test_list.txt")
    test = set(test_lists[0].read_text().split())
    files = {p.name: p for p in root.glob("images*/**/*.png")}
    cases = []
    for r in rows:
        name = r["Image Index"]
        if name not in files:
            raise _missing(info, root / "images" / name, "listed in the CSV but not on disk")
        found = set(r["Finding Labels"].split("|"))
        unknown = found - set(NIH_LABELS) - {"No Finding"}
        if unknown:
            raise MedcompError(f"{entries[0]}: unknown finding {sorted(unknown)[0]!r} for {name}")
        cases.append({"id": name, "patient": r["Patient ID"], "image": str(files[name]),
                      "targets": {lab: int(lab in found) for lab in NIH_LABELS},
                      "split": "test" if name in test else "trainval"})
    return cases


def list_vindr_cxr(info: DatasetInfo, root: Path, **_) -> list[dict]:
    """VinDr-CXR (PhysioNet 1.0.0): ``root/{train,test}/<image_id>.dicom``,
    ``root/annotations/image_labels_{train,test}.csv`` (image_id, rad_id, one 0/1 column per local and global
    label, … , No finding) and ``annotations_{train,test}.csv`` (image_id, rad_id, class_name, boxes). A training
    image was read by three radiologists: a label counts when any of them gave it."""
    cases = []
    for split in ("train", "test"):
        labels_csv = root / "annotations" / f"image_labels_{split}.csv"
        rows = _read_csv(info, labels_csv, ["image_id", "No finding"])
        boxes = _read_csv(info, root / "annotations" / f"annotations_{split}.csv",
                          ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"])
        names = [c for c in rows[0] if c not in ("image_id", "rad_id", "rad_ID", "No finding")] if rows else []
        by_image: dict[str, dict] = {}
        for r in rows:
            t = by_image.setdefault(r["image_id"], {n: 0 for n in names})
            for n in names:
                t[n] = max(t[n], int(float(r[n] or 0)))
        local: dict[str, list] = {}
        for b in boxes:
            if b["class_name"] != "No finding" and b["x_min"]:
                local.setdefault(b["image_id"], []).append(
                    [b["class_name"], *(float(b[k]) for k in ("x_min", "y_min", "x_max", "y_max"))])
        for image_id, targets in sorted(by_image.items()):
            path = _need(info, root / split / f"{image_id}.dicom")
            cases.append({"id": image_id, "patient": image_id, "image": str(path), "targets": targets,
                          "boxes": local.get(image_id, []), "split": "test" if split == "test" else "trainval"})
    return cases


def list_ct_rate(info: DatasetInfo, root: Path, **_) -> list[dict]:
    """CT-RATE: ``root/dataset/{train,valid}/<train_1>/<train_1_a>/<train_1_a_1>.nii.gz``, reports
    ``root/dataset/radiology_text_reports/{train,validation}_reports.csv`` (VolumeName, Findings_EN, Impressions_EN),
    labels ``root/dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv`` (VolumeName + 18 labels) and,
    when present, ``root/dataset/metadata/{train,validation}_metadata.csv`` (VolumeName, RescaleSlope,
    RescaleIntercept): volumes are stored unscaled, the rescale gives HU."""
    base = root / "dataset"
    cases = []
    for split, long in (("train", "train"), ("valid", "validation")):
        labels = _read_csv(info, base / "multi_abnormality_labels" / f"{split}_predicted_labels.csv",
                           ["VolumeName", *CT_RATE_LABELS])
        reports = {r["VolumeName"]: r for r in _read_csv(
            info, base / "radiology_text_reports" / f"{long}_reports.csv", ["VolumeName", "Findings_EN"])}
        meta_csv = base / "metadata" / f"{long}_metadata.csv"
        meta = ({r["VolumeName"]: r for r in _read_csv(info, meta_csv, ["VolumeName", "RescaleSlope",
                                                                        "RescaleIntercept"])}
                if meta_csv.exists() else {})
        for r in labels:
            name = r["VolumeName"]
            stem = name.removesuffix(".gz").removesuffix(".nii")
            parts = stem.split("_")                  # train_1_a_1 → patient train_1, scan train_1_a
            patient, scan = "_".join(parts[:2]), "_".join(parts[:3])
            path = _need(info, base / split / patient / scan / name)
            rep = reports.get(name, {})
            m = meta.get(name)
            cases.append({"id": stem, "patient": patient, "image": str(path),
                          "targets": {lab: int(float(r[lab])) for lab in CT_RATE_LABELS},
                          "text": " ".join(x for x in (rep.get("Findings_EN"), rep.get("Impressions_EN")) if x),
                          "rescale": [float(m["RescaleSlope"]), float(m["RescaleIntercept"])] if m else None,
                          "split": "test" if split == "valid" else "trainval"})
    return cases


def list_isbi_em(info: DatasetInfo, root: Path, **_) -> list[dict]:
    """ISBI 2012 EM: ``root/train/image/*.png`` (a stack of 30 slices), ``root/train/label/*.png``,
    ``root/test/*.png``."""
    folder = _need(info, root / "train" / "image")
    if not any(folder.glob("*.png")):
        raise _missing(info, folder / "0.png", "no slices")
    labels = root / "train" / "label"
    cases = [{"id": "train", "patient": "train", "image": str(folder),
              "label": str(labels) if labels.is_dir() else None, "split": "trainval"}]
    if (root / "test").is_dir() and any((root / "test").glob("*.png")):
        cases.append({"id": "test", "patient": "test", "image": str(root / "test"), "label": None, "split": "test"})
    return cases


def list_kermany(info: DatasetInfo, root: Path, **_) -> list[dict]:
    """Kermany: ``root/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg`` (patient ids in the file names)."""
    from medcomp.data.cxr import _patient_id

    cases = []
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            folder = _need(info, root / split / cls)
            for p in sorted(folder.glob("*.jp*g")):
                cases.append({"id": p.stem, "patient": f"{cls}/{_patient_id(p.stem)}", "image": str(p),
                              "targets": {"bacterial pneumonia": int("bacteria" in p.stem),
                                          "viral pneumonia": int("virus" in p.stem)},
                              "split": "test" if split == "test" else "trainval"})
    return cases


_INFO = [
    ("msd_liver", "volume", "http://medicaldecathlon.com (Task03_Liver.tar)",
     "root/Task03_Liver/{dataset.json, imagesTr/*.nii.gz, labelsTr/*.nii.gz}", list_msd),
    ("msd_colon", "volume", "http://medicaldecathlon.com (Task10_Colon.tar)",
     "root/Task10_Colon/{dataset.json, imagesTr/*.nii.gz, labelsTr/*.nii.gz}", list_msd),
    ("msd_spleen", "volume", "http://medicaldecathlon.com (Task09_Spleen.tar)",
     "root/Task09_Spleen/{dataset.json, imagesTr/*.nii.gz, labelsTr/*.nii.gz}", list_msd),
    ("cremi", "volume", "https://cremi.org/data/", "root/sample_*.hdf with volumes/raw", list_cremi),
    ("lidc_idri", "volume", "https://www.cancerimagingarchive.net/collection/lidc-idri/",
     "root/LIDC-IDRI-XXXX/<study>/<series>/*.dcm", list_lidc_idri),
    ("luna16", "volume", "https://luna16.grand-challenge.org/Download/",
     "root/{subset0..9/<seriesuid>.mhd+.raw, annotations.csv}", list_luna16),
    ("chestxray8", "cxr", "https://nihcc.app.box.com/v/ChestXray-NIHCC",
     "root/{images*/**/*.png, Data_Entry_2017*.csv, train_val_list*.txt, test_list*.txt}", list_chestxray8),
    ("vindr_cxr", "cxr", "https://physionet.org/content/vindr-cxr/1.0.0/",
     "root/{train,test}/*.dicom + root/annotations/{image_labels,annotations}_{train,test}.csv", list_vindr_cxr),
    ("ct_rate", "volume", "https://huggingface.co/datasets/ibrahimhamamci/CT-RATE",
     "root/dataset/{train,valid}/<patient>/<scan>/*.nii.gz + radiology_text_reports/ + multi_abnormality_labels/",
     list_ct_rate),
    ("isbi_em", "volume", "https://imagej.net/events/isbi-2012-segmentation-challenge",
     "root/{train/image/*.png, train/label/*.png, test/*.png}", list_isbi_em),
    ("kermany", "cxr", "https://data.mendeley.com/datasets/rscbjbr9sj",
     "root/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg", list_kermany),
]
DATASETS = {name: DatasetInfo(name, kind, url, layout, fn) for name, kind, url, layout, fn in _INFO}


def list_cases(name: str, root: str | Path, **options) -> list[dict]:
    if name not in DATASETS:
        raise MedcompError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    info = DATASETS[name]
    if root in (None, "", "???"):
        raise MedcompError(f"data={name} needs data.root=FOLDER laid out as {info.layout} (download: {info.url})")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _missing(info, root, "data.root not found")
    cases = info.lister(info, root, **options)
    if not cases:
        raise _missing(info, root, "no cases found")
    return cases


def _rank_key(patient: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()


def split_cases(cases: list[dict], split: str, val_fraction: float = 0.1, test_fraction: float = 0.2,
                seed: int = 0) -> list[dict]:
    """The cases of ``split`` (train / val / test / all), by patient. Official splits win: cases marked
    "train"/"val"/"test" keep theirs. The others ("trainval" or unmarked) are shuffled by patient with a seeded hash
    (the same on every machine) and cut: test (only when the dataset has no official test split), then val, then
    train; each cut gets at least one patient when there are three or more."""
    if split not in ("train", "val", "test", "all"):
        raise MedcompError(f"data.split={split!r}: expected train, val, test or all")
    has_official_test = any(c.get("split") == "test" for c in cases)
    free = sorted({c["patient"] for c in cases if c.get("split") not in ("train", "val", "test")},
                  key=lambda p: _rank_key(p, seed))

    def count(fraction: float) -> int:
        return 0 if fraction <= 0 else max(1 if len(free) >= 3 else 0, round(len(free) * fraction))

    n_test = 0 if has_official_test else count(test_fraction)
    n_val = count(val_fraction)
    assigned = {p: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, p in enumerate(free)}
    out = []
    for c in cases:
        which = c.get("split") if c.get("split") in ("train", "val", "test") else assigned[c["patient"]]
        if split in ("all", which):
            out.append({**c, "assigned_split": which})
    return out
