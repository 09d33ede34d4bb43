"""Each dataset group on a miniature of its real on-disk layout: tiny arrays in the real formats (NIfTI, DICOM
series with position and rescale tags, CREMI HDF5 keys, mhd/raw, CSVs with the official columns). Asserts shapes,
spacing, HU, labels and split disjointness, then runs ``run.py data=<name> debug=fdr`` (in process) with the
default model and with one method model."""

import csv
import json
import random
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from medcomp.config import compose
from medcomp.data.catalogue import CT_RATE_LABELS, NIH_LABELS, list_cases, split_cases
from medcomp.data.catalogue_datamodule import DatasetDataModule
from medcomp.errors import MedcompError
from medcomp.tasks import run_task

RNG = np.random.default_rng(0)


def hu_volume(shape=(12, 48, 48)):
    """CT-like HU: air outside, soft tissue and bone inside."""
    v = np.full(shape, -1000, np.int16)
    z, y, x = np.indices(shape)
    body = ((y - shape[1] / 2) ** 2 / (shape[1] / 2.5) ** 2 + (x - shape[2] / 2) ** 2 / (shape[2] / 2.5) ** 2) < 1
    v[body] = 40 + RNG.integers(-20, 20, body.sum())
    v[body & (x == shape[2] // 2)] = 900
    return v


def write_nifti(path, zyx: np.ndarray, spacing_zyx, slope=None, inter=None):
    img = nib.Nifti1Image(zyx.T, np.diag([*reversed(spacing_zyx), 1.0]))  # NIfTI stores x, y, z
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def write_dicom(path, stored: np.ndarray, *, modality="CT", position=(0, 0, 0), slope=1, intercept=-1024,
                series_uid="1.2.3.4", photometric="MONOCHROME2", bits=12, patient="ANON"):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID, ds.Modality = patient, patient, modality
    ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelSpacing = [0.7, 0.7]
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def run_fdr(tmp_path, *overrides):
    out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    cfg = compose([*overrides, "debug=fdr", "logger=none", "callbacks=none", "baselines=[]",
                   f"paths.output_dir={out}", "save_final_checkpoint=false"])
    run_task(cfg)
    return json.loads((out / "metrics.json").read_text())


def assert_disjoint(name, root, **kw):
    cases = list_cases(name, root, **kw)
    parts = {s: {c["patient"] for c in split_cases(cases, s, seed=1)} for s in ("train", "val", "test")}
    assert parts["train"] and parts["test"]
    assert parts["train"].isdisjoint(parts["test"]) and parts["val"].isdisjoint(parts["test"])
    assert parts["train"].isdisjoint(parts["val"])
    # A fixed seed gives the same split every time.
    assert {c["id"] for c in split_cases(cases, "test", seed=1)} == {c["id"] for c in split_cases(cases, "test", seed=1)}
    return cases


# ── volumes ──────────────────────────────────────────────────────────────────────────────────────────────────────


MSD = {"msd_liver": "Task03_Liver", "msd_colon": "Task10_Colon", "msd_spleen": "Task09_Spleen"}


def check_msd(tmp_path, name, task):
    root = tmp_path / "msd"
    training = []
    for i in range(5):
        vol = hu_volume()
        write_nifti(root / task / "imagesTr" / f"{name[4:]}_{i}.nii.gz", vol, (2.5, 0.8, 0.8))
        write_nifti(root / task / "labelsTr" / f"{name[4:]}_{i}.nii.gz", (vol > 0).astype(np.uint8), (2.5, 0.8, 0.8))
        training.append({"image": f"./imagesTr/{name[4:]}_{i}.nii.gz", "label": f"./labelsTr/{name[4:]}_{i}.nii.gz"})
    (root / task / "dataset.json").write_text(json.dumps({"name": task, "training": training, "test": []}))
    cases = assert_disjoint(name, root)
    assert len(cases) == 5 and all(c["label"] for c in cases)
    dm = DatasetDataModule(name, str(root), split="all", max_cases=2, load_labels=True).codec_view()
    dm.setup()
    im = dm.images[0]
    assert im.array.shape == (12, 48, 48) and im.array.dtype == np.int16 and im.spacing == pytest.approx((2.5, 0.8, 0.8))
    assert im.array.min() == -1000 and im.array.max() == 900  # HU as stored
    return root



def test_msd_resample_and_crop_policy(tmp_path):
    root = tmp_path / "msd" / "Task09_Spleen"
    write_nifti(root / "imagesTr" / "spleen_1.nii.gz", hu_volume((6, 20, 24)), (2.5, 0.8, 0.8))
    write_nifti(root / "labelsTr" / "spleen_1.nii.gz", np.ones((6, 20, 24), np.uint8), (2.5, 0.8, 0.8))
    (root / "dataset.json").write_text(json.dumps({"training": [{"image": "./imagesTr/spleen_1.nii.gz",
                                                                 "label": "./labelsTr/spleen_1.nii.gz"}]}))
    dm = DatasetDataModule("msd_spleen", str(root.parent), split="all", spacing=[5.0, 1.6, 1.6], padding="crop",
                           block_size=[2, 4, 4]).codec_view()
    dm.setup()
    im = dm.images[0]
    assert im.spacing == pytest.approx((5.0, 1.6, 1.6)) and im.array.shape == (2, 8, 12) and im.array.dtype == np.int16


def check_cremi(tmp_path):
    root = tmp_path / "cremi"
    root.mkdir()
    for s in "ABC":
        with h5py.File(root / f"sample_{s}_20160501.hdf", "w") as fh:
            raw = fh.create_dataset("volumes/raw", data=RNG.integers(0, 255, (8, 64, 64), dtype=np.uint8))
            raw.attrs["resolution"] = [40.0, 4.0, 4.0]
            fh.create_dataset("volumes/labels/neuron_ids", data=np.arange(8 * 64 * 64, dtype=np.uint64).reshape(8, 64, 64))
    cases = assert_disjoint("cremi", root)
    assert all(c["label"].endswith("neuron_ids") for c in cases)
    dm = DatasetDataModule("cremi", str(root), split="all", load_labels=True).codec_view()
    dm.setup()
    assert dm.images[0].array.dtype == np.uint8 and dm.images[0].spacing == pytest.approx((4e-5, 4e-6, 4e-6))
    return root



def check_lidc_idri(tmp_path):
    root = tmp_path / "LIDC-IDRI"
    for p in range(1, 6):
        patient = f"LIDC-IDRI-{p:04d}"
        series = root / patient / "01-01-2000-NA-30178" / "3000566.000000-NA-03192"
        positions = [-100.0 - 2.5 * k for k in range(6)]
        order = list(range(6))
        random.Random(p).shuffle(order)  # files on disk in no particular order
        for n, k in enumerate(order):
            stored = np.full((48, 48), 1024 + 10 * k, np.uint16)  # HU = 10·k after the −1024 intercept
            write_dicom(series / f"1-{n:03d}.dcm", stored, position=(0, 0, positions[k]), series_uid=f"1.2.{p}")
        # The collection also holds radiographs: not a CT series, skipped.
        write_dicom(root / patient / "01-01-2000-NA-XR" / "1.000000-NA-1" / "1-1.dcm", np.zeros((16, 16)),
                    modality="DX", series_uid=f"9.9.{p}")
    cases = assert_disjoint("lidc_idri", root)
    assert len(cases) == 5
    dm = DatasetDataModule("lidc_idri", str(root), split="all", max_cases=1).codec_view()
    dm.setup()
    a = dm.images[0].array
    assert a.shape == (6, 48, 48) and dm.images[0].spacing == pytest.approx((2.5, 0.7, 0.7))
    # Sorted along the slice normal (z ascending): HU 50, 40, …, 0.
    assert [int(a[k, 0, 0]) for k in range(6)] == [50, 40, 30, 20, 10, 0]
    return root



def check_luna16(tmp_path):
    import SimpleITK as sitk

    root = tmp_path / "luna16"
    uids = {0: ["1.3.6.1.4.1.14519.5.2.1.6279.6001.100"], 8: ["1.3.6.1.4.1.14519.5.2.1.6279.6001.800"],
            9: ["1.3.6.1.4.1.14519.5.2.1.6279.6001.900"]}
    for k, names in uids.items():
        (root / f"subset{k}").mkdir(parents=True)
        for uid in names:
            img = sitk.GetImageFromArray(hu_volume())
            img.SetSpacing((0.7, 0.7, 2.5))  # ITK: x, y, z
            sitk.WriteImage(img, str(root / f"subset{k}" / f"{uid}.mhd"))
    write_csv(root / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
              [[uids[0][0], -50.1, 20.2, -100.5, 6.3]])
    cases = list_cases("luna16", root)
    by_split = {c["split"]: c for c in cases}
    assert set(by_split) == {"train", "val", "test"}  # the official subsets
    assert by_split["train"]["nodules_xyzd_mm"] == [[-50.1, 20.2, -100.5, 6.3]]
    dm = DatasetDataModule("luna16", str(root), split="test").codec_view()
    dm.setup()
    assert dm.images[0].spacing == pytest.approx((2.5, 0.7, 0.7)) and dm.images[0].array.min() == -1000
    return root



def check_ct_rate(tmp_path):
    root = tmp_path / "ct_rate"
    base = root / "dataset"
    for split, long, patients in (("train", "train", [1, 2, 3, 4]), ("valid", "validation", [1, 2])):
        names = [f"{split}_{p}_a_1.nii.gz" for p in patients]
        for p, n in zip(patients, names):
            write_nifti(base / split / f"{split}_{p}" / f"{split}_{p}_a" / n, (hu_volume() + 1024).astype(np.int16),
                        (3.0, 0.75, 0.75))
        write_csv(base / "multi_abnormality_labels" / f"{split}_predicted_labels.csv", ["VolumeName", *CT_RATE_LABELS],
                  [[n, *[int(i == j) for j in range(18)]] for i, n in enumerate(names)])
        write_csv(base / "radiology_text_reports" / f"{long}_reports.csv",
                  ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"],
                  [[n, "", "", f"findings {n}", "impression"] for n in names])
        write_csv(base / "metadata" / f"{long}_metadata.csv", ["VolumeName", "RescaleSlope", "RescaleIntercept"],
                  [[n, 1, -1024] for n in names])
    cases = assert_disjoint("ct_rate", root)
    c = next(c for c in cases if c["id"] == "train_2_a_1")
    assert c["patient"] == "train_2" and c["targets"]["Arterial wall calcification"] == 1
    assert sum(c["targets"].values()) == 1 and c["text"].startswith("findings train_2_a_1")
    dm = DatasetDataModule("ct_rate", str(root), split="test").codec_view()
    dm.setup()
    a = dm.images[0].array
    assert a.min() == -1000 and a.max() == 900  # stored + metadata rescale = HU
    return root



def check_isbi_em(tmp_path):
    root = tmp_path / "isbi"
    for sub in ("train/image", "train/label", "test"):
        (root / sub).mkdir(parents=True)
        for k in range(4):
            PILImage.fromarray(RNG.integers(0, 255, (64, 64), dtype=np.uint8)).save(root / sub / f"{k}.png")
    dm = DatasetDataModule("isbi_em", str(root), split="train").codec_view()
    dm.setup()
    assert dm.images[0].array.shape == (4, 64, 64) and dm.images[0].array.dtype == np.uint8
    return root



# ── radiographs with labels ──────────────────────────────────────────────────────────────────────────────────────


def check_chestxray8(tmp_path):
    root = tmp_path / "nih"
    rows, test = [], []
    findings = ["No Finding", "Cardiomegaly", "Effusion|Mass", "Pneumonia", "No Finding", "Hernia|Nodule"]
    for patient in range(1, 7):
        for k in range(2):
            name = f"{patient:08d}_{k:03d}.png"
            folder = root / f"images_{patient % 2 + 1:03d}" / "images"
            folder.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(RNG.integers(0, 255, (128, 128), dtype=np.uint8)).save(folder / name)
            rows.append([name, findings[patient - 1], k, patient, 50, "M", "PA", 64, 64, 0.143, 0.143])
            if patient >= 5:
                test.append(name)
    write_csv(root / "Data_Entry_2017_v2020.csv", ["Image Index", "Finding Labels", "Follow-up #", "Patient ID",
                                                   "Patient Age", "Patient Gender", "View Position",
                                                   "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x",
                                                   "y]"], rows)
    (root / "test_list.txt").write_text("\n".join(test))
    (root / "train_val_list.txt").write_text("\n".join(r[0] for r in rows if r[0] not in test))
    cases = assert_disjoint("chestxray8", root)
    c = next(c for c in cases if c["id"] == "00000003_000.png")
    assert c["targets"]["Effusion"] == c["targets"]["Mass"] == 1 and sum(c["targets"].values()) == 2
    assert {c["id"] for c in split_cases(cases, "test")} == set(test)  # the official test list
    assert len(c["targets"]) == len(NIH_LABELS) == 14
    return root



def check_vindr_cxr(tmp_path):
    root = tmp_path / "vindr"
    local = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
             "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening",
             "Pneumothorax", "Pulmonary fibrosis"]
    header = ["image_id", "rad_id", *local, "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases",
              "No finding"]
    for split, ids in (("train", ["a1", "a2", "a3", "a4"]), ("test", ["t1", "t2"])):
        label_rows, boxes = [], []
        for i, image_id in enumerate(ids):
            stored = RNG.integers(0, 4095, (96, 96)).astype(np.uint16)
            write_dicom(root / split / f"{image_id}.dicom", stored, modality="DX", intercept=0,
                        photometric="MONOCHROME1" if i == 0 else "MONOCHROME2", series_uid=f"3.{i}")
            rads = ["R1", "R2", "R3"] if split == "train" else ["R8"]
            for r, rad in enumerate(rads):
                positive = i % 2 == 1 and r == 0  # one of three readers saw cardiomegaly
                label_rows.append([image_id, rad, *[int(positive and n == "Cardiomegaly") for n in local],
                                   0, 0, 0, 0, 0, int(not positive)])
                boxes.append([image_id, rad, "Cardiomegaly" if positive else "No finding",
                              *([10, 20, 30, 40] if positive else ["", "", "", ""])])
        write_csv(root / "annotations" / f"image_labels_{split}.csv", header, label_rows)
        write_csv(root / "annotations" / f"annotations_{split}.csv",
                  ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"], boxes)
    cases = assert_disjoint("vindr_cxr", root)
    a2 = next(c for c in cases if c["id"] == "a2")
    assert a2["targets"]["Cardiomegaly"] == 1 and a2["boxes"] == [["Cardiomegaly", 10.0, 20.0, 30.0, 40.0]]
    assert next(c for c in cases if c["id"] == "a1")["targets"]["Cardiomegaly"] == 0
    dm = DatasetDataModule("vindr_cxr", str(root), findings=local, image_size=32, batch_size=2).classification_view()
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32) and batch["findings"].shape == (2, 14)
    assert batch["label"].tolist() == [0, 1]
    return root



# ── the tests: reading (fast) and run.py with the default model and a method model (slow) ─────────────────────────

CHECKS = {**{n: (lambda t, n=n: check_msd(t, n, MSD[n])) for n in MSD}, "cremi": check_cremi,
          "lidc_idri": check_lidc_idri, "luna16": check_luna16, "ct_rate": check_ct_rate, "isbi_em": check_isbi_em,
          "chestxray8": check_chestxray8, "vindr_cxr": check_vindr_cxr}
METHOD = {"chestxray8": ["model=mlcak", "data.image_size=64", "data.batch_size=4", "model.depth=2", "model.embed_dim=32",
                         "model.num_heads=2"],
          "vindr_cxr": ["model=ct_lite", "data.image_size=64", "data.batch_size=2"]}


@pytest.mark.parametrize("name", list(CHECKS))
def test_reads_miniature_of_real_layout(tmp_path, name):
    root = CHECKS[name](tmp_path)
    # medcomp cases reads shapes from headers alone: the same shape and stored dtype as reading the pixels
    from medcomp.data.readers import peek_shape, read_image

    first = DatasetDataModule(name, str(root), split="all").cases()[0]["image"]
    stored = read_image(first) if ":" not in str(first)[2:] else read_image(*str(first).rsplit(":", 1))
    shape, dtype = peek_shape(first)
    assert shape == stored.array.shape, (first, shape, stored.array.shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHECKS))
def test_run_py_on_miniature(tmp_path, name):
    (tmp_path / "data").mkdir()
    root = CHECKS[name](tmp_path / "data")
    extra = ["data.split=train"] if name == "isbi_em" else []
    m = run_fdr(tmp_path, f"data={name}", f"data.root={root}", "compression=cr10", *extra)
    assert m["summary"]["unicompress"]["ratio_actual"] > 1 and m["summary"]["unicompress"]["psnr"] > 0
    method = METHOD.get(name, ["model=siren"])
    m = run_fdr(tmp_path, *method, f"data={name}", f"data.root={root}", "compression=cr10", *extra)
    if name in METHOD:
        assert 0 <= m["summary"]["test"]["auroc"] <= 1  # both classes in the miniature's test split
    else:
        assert m["summary"]["siren"]["psnr"] > 0


# ── errors ───────────────────────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", ["msd_liver", "cremi", "lidc_idri", "luna16", "chestxray8", "vindr_cxr", "ct_rate",
                                  "isbi_em", "kermany"])
def test_incomplete_dataset_names_layout_file_and_download_page(tmp_path, name):
    root = tmp_path / "data"
    root.mkdir()
    before = sorted(root.rglob("*"))
    with pytest.raises(MedcompError) as err:
        list_cases(name, root)
    msg = str(err.value)
    assert "expects" in msg and "download:" in msg and str(root) in msg and "\n" not in msg
    assert sorted(root.rglob("*")) == before  # nothing created in the user's data folder


def test_missing_root_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "data=msd_liver", f"data.root={tmp_path / 'none'}",
                        "logger=none", f"paths.log_dir={tmp_path}/logs"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("medcomp: error:") and "Task03_Liver" in line and "medicaldecathlon.com" in line


def test_cases_and_shards_select_from_the_split(tmp_path):
    """data.cases picks cases by id; data.shard=K/N splits the id-sorted list so that the N shards hold every case
    once, the same on any machine; bad ids and shards are one clear error."""
    from medcomp.config import compose
    from medcomp.errors import MedcompError

    task = tmp_path / "msd" / "Task03_Liver"
    training = []
    for i in (3, 0, 5, 1, 4, 2):  # listed out of order
        write_nifti(task / "imagesTr" / f"liver_{i}.nii.gz", hu_volume((4, 8, 8)), (2.5, 0.8, 0.8))
        write_nifti(task / "labelsTr" / f"liver_{i}.nii.gz", np.zeros((4, 8, 8), np.uint8), (2.5, 0.8, 0.8))
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"})
    (task / "dataset.json").write_text(json.dumps({"training": training}))

    def ids(**kw):
        return [c["id"] for c in DatasetDataModule("msd_liver", str(task.parent), split="all", **kw).selected_cases()]

    every = ids(max_cases=None)
    shards = [ids(shard=f"{k}/3") for k in range(3)]
    assert sorted(sum(shards, [])) == sorted(every) and all(len(s) == 2 for s in shards)
    assert shards[0] == sorted(every)[0::3] and ids(shard="0/3") == shards[0]  # stable
    assert ids(cases=["liver_4", "liver_0"]) == ["liver_4", "liver_0"]
    assert len(ids()) == 1  # neither: the first max_cases (1)
    with pytest.raises(MedcompError, match="data.cases: liver_9 not in data=msd_liver split all"):
        ids(cases=["liver_9"])
    for bad in ("3/3", "x", "1/2/3"):
        with pytest.raises(MedcompError, match=f"data.shard='{bad}'"):
            ids(shard=bad)
    cfg = compose(["data=msd_liver", f"data.root={task.parent}", "data.shard=1/3", "data.cases=[liver_1]"])
    assert cfg.data.shard == "1/3" and list(cfg.data.cases) == ["liver_1"]

    # medcomp cases: the listing from headers alone (medcomp's z, y, x order), whole split or the selection
    import builtins

    from medcomp.cli import main
    printed = []
    real_print = builtins.print
    builtins.print = lambda *a, **k: printed.append(" ".join(map(str, a)))
    try:
        assert main(["cases", "data=msd_liver", f"data.root={task.parent}", "data.split=all", "--json"]) == 0
        assert main(["cases", "data=msd_liver", f"data.root={task.parent}", "data.split=all", "data.shard=1/3"]) == 0
    finally:
        builtins.print = real_print
    listed = json.loads(printed[0])
    assert sorted(r["id"] for r in listed) == sorted(every)
    assert all(r["shape"] == [4, 8, 8] and r["dtype"] == "int16" and r["bytes"] > 0 for r in listed)
    assert printed[1].startswith("data=msd_liver, selected: 2 cases") and shards[1][0] in printed[2]


def test_a_sharded_sweep_writes_each_case_once_skips_done_cases_and_survives_a_bad_one(tmp_path):
    """data.shard over a 4-case MSD miniature: each case's outputs once, in a folder named by the case; the same
    shard again skips what is done; a case whose file breaks fails alone (failed.json, one line) and the job
    exits with an error naming it after the other cases ran."""
    from medcomp.config import compose
    from medcomp.errors import MedcompError
    from medcomp.tasks import run_task

    task = tmp_path / "msd" / "Task03_Liver"
    training = []
    for i in range(4):
        write_nifti(task / "imagesTr" / f"liver_{i}.nii.gz", hu_volume((8, 32, 32)), (2.5, 0.8, 0.8))
        write_nifti(task / "labelsTr" / f"liver_{i}.nii.gz", np.zeros((8, 32, 32), np.uint8), (2.5, 0.8, 0.8))
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"})
    (task / "dataset.json").write_text(json.dumps({"training": training}))

    def run(shard):
        return run_task(compose(["model=siren", "data=msd_liver", f"data.root={task.parent}", "data.split=all",
                                 f"data.shard={shard}", "data.block_size_3d=[8,16,16]", "model.fit_steps=2",
                                 "baselines=[jpeg2000]", "compression=cr10", "logger=wandb", "callbacks=none",
                                 "save_final_checkpoint=false", "save_recon=false", f"paths.log_dir={tmp_path / 'logs'}",
                                 f"paths.output_dir={tmp_path / 'job'}"]))

    first = [run("0/2"), run("1/2")]
    assert sorted(first[0]["done"] + first[1]["done"]) == [f"liver_{i}" for i in range(4)]
    root = Path(first[0]["cases_dir"])
    assert sorted(p.name for p in root.iterdir()) == [f"liver_{i}" for i in range(4)]
    assert all((root / f"liver_{i}" / "metrics.json").is_file() for i in range(4))
    # each case its own W&B run, in its own folder (not the first case's run reused by the next)
    assert all(len(list((root / f"liver_{i}" / "wandb").glob("offline-run-*"))) == 1 for i in range(4))
    again = run("0/2")
    assert again["done"] == [] and again["skipped"] == first[0]["done"]
    # liver_0 (shard 0) is cut off half-way (no metrics.json) and its file is now truncated
    (root / "liver_0" / "metrics.json").unlink()
    image = task / "imagesTr" / "liver_0.nii.gz"
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(MedcompError, match=r"1 of 2 cases failed: liver_0: "):
        run("0/2")
    failed = json.loads((root / "liver_0" / "failed.json").read_text())
    assert failed["case"] == "liver_0" and "liver_0.nii.gz" in failed["error"]
    assert (root / "liver_2" / "metrics.json").is_file()  # the other case of the shard: done before, kept
