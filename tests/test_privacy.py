"""Patient identifiers never leave the input: a DICOM whose identifying attributes carry a unique marker goes
through run.py (W&B offline run included) and through compress / decompress; no output file contains the marker."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli
from tests.test_datasets import write_dicom

MARKER = "ZQXPHI7731"


def phi_dicom(path: Path) -> Path:
    stored = (np.add.outer(np.arange(96), np.arange(96)) * 8 + 500).astype(np.uint16)
    write_dicom(path, stored, patient=f"{MARKER}^NAME", modality="CT")
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PatientID = f"{MARKER}ID"
    ds.PatientBirthDate = "19010101"
    ds.AccessionNumber = f"{MARKER}ACC"[:16]
    ds.InstitutionName = f"{MARKER} Hospital"
    ds.ReferringPhysicianName = f"{MARKER}^DOC"
    ds.OtherPatientIDs = f"{MARKER}OTHER"
    ds.save_as(path)
    assert MARKER.encode() in path.read_bytes()
    return path


def files_with_marker(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and MARKER.encode() in p.read_bytes()]


@pytest.mark.slow
def test_no_patient_identifier_reaches_any_output(tmp_path):
    src = phi_dicom(tmp_path / "input" / "scan.dcm")
    logs = tmp_path / "logs"
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "model=siren", "data=volume", f"data.path={src}",
                        "compression=cr10", "debug=fdr", "logger=wandb", "baselines=[jpeg2000]",
                        f"paths.log_dir={logs}"], capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "WANDB_MODE": "offline"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(logs.rglob("*.wandb")), "the W&B offline run must be among the files searched"
    assert list(logs.rglob("*.mcz")) and list(logs.rglob("metrics.json"))
    assert MARKER not in r.stdout + r.stderr
    assert files_with_marker(logs) == []


def test_no_patient_identifier_reaches_the_command_lines_outputs(tmp_path):
    """The fast half (make test): compress / decompress through the CLI; the decoded DICOM is written de-identified."""
    src = phi_dicom(tmp_path / "input" / "scan.dcm")
    out = tmp_path / "out"
    assert run_cli("compress", src, out / "scan.mcz", "--codec", "jpeg2000", "--ratio", "8").returncode == 0
    d = run_cli("decompress", out / "scan.mcz", out / "scan_decoded.dcm")
    assert d.returncode == 0, d.stderr
    assert files_with_marker(out) == [] and MARKER not in d.stdout + d.stderr
    import pydicom

    ds = pydicom.dcmread(out / "scan_decoded.dcm")
    assert ds.PatientIdentityRemoved == "YES" and str(ds.PatientName) == ""
    assert ds.pixel_array.shape == (96, 96)
