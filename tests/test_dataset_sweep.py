"""A dataset on a cluster (issue 39): a sharded sweep over a miniature MSD Liver built from the shared real volumes
(experiments/make_miniature.py), killed half-way and launched again, through the submitit and joblib launchers, and
`medcomp report` checked against a hand computation."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

# cr64 and cr256 as the issue asks: 16×96×96 crops leave a per-block SIREN room at CR 256 on every case
SWEEP = ["data=msd_liver", "data.split=all", "model=siren", "compression=cr64,cr256", "baselines=[hevc]",
         "model.fit_steps=20", "data.block_size_3d=[16,96,96]", "logger=none", "callbacks=none",
         "save_recon=false", "save_final_checkpoint=false"]
SHARDS = "data.shard=0/3,1/3,2/3"


@pytest.fixture
def miniature(tmp_path, shared):
    sys.path.insert(0, str(ROOT / "experiments"))
    from make_miniature import build

    listing = build(tmp_path / "mini", shared, side=96, depth=16)
    assert [c["id"] for c in listing] == [f"liver_{i}" for i in range(6)]
    assert {c["dtype"] for c in listing} >= {"int16", "uint8"}  # CT and the EM stack
    return tmp_path / "mini"


def sweep(root: Path, logs: Path, *extra: str, popen: bool = False):
    cmd = [sys.executable, "run.py", "-m", *SWEEP, f"data.root={root}", SHARDS, *extra]
    env = {**os.environ, "MEDCOMP_LOG_DIR": str(logs), "OMP_NUM_THREADS": "1"}
    if popen:  # its output to a file: a pipe nobody reads would stall it
        log = open(logs.parent / "first_launch.log", "w")  # noqa: SIM115 (closed with the test's tmp_path)
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def case_results(logs: Path) -> dict[tuple[str, str], Path]:
    """(target, case) → the case folder's metrics.json or failed.json."""
    out = {}
    for p in [*logs.rglob("metrics.json"), *logs.rglob("failed.json")]:
        if p.parent.parent.parent.parent.name == "siren":  # …/cases/msd_liver/siren/<target>/<digest>/<case>
            out[(p.parent.parent.parent.name, p.parent.name)] = p
    return out


def test_a_killed_submitit_sweep_resumes_skipping_finished_cases_and_a_corrupt_case_fails_alone(miniature, tmp_path):
    logs = tmp_path / "logs"
    bad = miniature / "Task03_Liver" / "imagesTr" / "liver_2.nii.gz"  # shard 2/3 holds liver_2 and liver_5
    bad.write_bytes(bad.read_bytes()[:200])
    first = sweep(miniature, logs, "hydra/launcher=submitit_local", popen=True)
    deadline = time.time() + 600
    while not any(p.name == "metrics.json" for p in case_results(logs).values()) and first.poll() is None:
        assert time.time() < deadline, "no case finished in 10 minutes"
        time.sleep(0.2)
    assert first.poll() is None, "the first launch ended before it could be killed"
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and its jobs, mid-way
    assert first.wait() == -signal.SIGKILL
    finished = {k: p.stat().st_mtime_ns for k, p in case_results(logs).items() if p.name == "metrics.json"}
    assert finished, "no case had finished when the sweep was killed"
    assert len(case_results(logs)) < 12  # cut off: some cases have neither metrics.json nor failed.json

    again = sweep(miniature, logs, "hydra/launcher=submitit_local")
    assert again.returncode != 0  # the job with the corrupt case failed …
    assert "liver_2" in again.stderr and "liver_2.nii.gz" in again.stderr
    results = case_results(logs)
    assert len(results) == 12  # … and every case of every target has its result, once
    for target in ("cr64", "cr256"):
        assert results[(target, "liver_2")].name == "failed.json"
        assert "liver_2.nii.gz" in json.loads(results[(target, "liver_2")].read_text())["error"]
        assert all(results[(target, f"liver_{i}")].name == "metrics.json" for i in (0, 1, 3, 4, 5))
    for key, mtime in finished.items():  # finished cases were skipped, not coded again
        assert results[key].stat().st_mtime_ns == mtime
    skipped = sum(json.loads(p.read_text())["skipped"] != [] for p in logs.rglob("cases.json"))
    assert skipped >= 1

    # the report over the sweep's two launches: every case once, the corrupt one listed as failed
    r = run_cli("report", *sorted((logs / "run" / "multiruns").iterdir()), "--out", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {(s["codec"], s["target"], s["n"]) for s in report["summary"]} == {
        (c, t, 5) for c in ("siren", "hevc") for t in ("cr64", "cr256")}
    assert sorted(f["case"] for f in report["failed"]) == ["liver_2", "liver_2"]
    assert report["bd"]["msd_liver"]["siren"]["bd_psnr"]["n"] >= 1
    assert (tmp_path / "report" / "report_rd.png").stat().st_size > 10_000
    assert list((tmp_path / "report" / "wandb").glob("offline-run-*"))  # the summary run, offline
    assert "failed: liver_2" in r.stdout


def test_the_joblib_launcher_runs_two_jobs_at_a_time(miniature, tmp_path):
    logs = tmp_path / "logs"
    r = sweep(miniature, logs, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(case_results(logs)) == 12
    jobs = [json.loads(p.read_text()) for p in logs.rglob("cases.json")]
    assert len(jobs) == 6
    spans = [(datetime.fromisoformat(j["started"]), datetime.fromisoformat(j["ended"])) for j in jobs]
    overlapping = [sum(s <= t < e for s, e in spans) for t, _ in spans]
    assert max(overlapping) == 2  # two jobs at once, never more
    assert len({j["pid"] for j in jobs}) == 2  # on two worker processes


def write_case(folder: Path, data: str, target: str, ratio: float, rows: dict[str, tuple[float, float, float]]):
    """A case's metrics.json as a run writes it: ``rows`` codec → (bpp, PSNR, SSIM)."""
    folder.mkdir(parents=True)
    images = [{"codec": c, "image": folder.name, "ratio_target": ratio, "ratio_actual": 16 / bpp, "bpp": bpp,
               "psnr": psnr, "ssim": ssim, "encode_s": 1.0, "decode_s": 0.5} for c, (bpp, psnr, ssim) in rows.items()]
    (folder / "metrics.json").write_text(json.dumps({"data": data, "model": "siren", "compression": target,
                                                     "images": images}))


def test_report_numbers_match_a_hand_computation_on_two_cases(tmp_path):
    """Two cases, HEVC and SIREN at CR 64 and 256: means, the bootstrap CI of two values (its percentiles are the
    two values), BD-rate and BD-PSNR on straight RD lines (log-rate), computed by hand."""
    from medcomp.dataset_report import make_report

    digest = tmp_path / "cases" / "msd_liver" / "siren" / "0123456789"
    hevc = {"case_a": [(0.5, 40.0), (0.125, 34.0)], "case_b": [(0.25, 38.0), (0.0625, 30.0)]}
    scale = {"case_a": 0.8, "case_b": 0.9}  # SIREN: HEVC's PSNR at this fraction of its rate
    for target, ratio, i in (("cr64", 64.0, 0), ("cr256", 256.0, 1)):
        for case in hevc:
            bpp, psnr = hevc[case][i]
            write_case(tmp_path / "cases" / target / "0123456789" / case, "msd_liver", target, ratio,
                       {"hevc": (bpp, psnr, 0.9 - i / 10), "siren": (bpp * scale[case], psnr, 0.8 - i / 10)})
    (digest / "case_c").mkdir(parents=True)
    (digest / "case_c" / "failed.json").write_text(json.dumps({"case": "case_c", "error": "case_c.nii.gz: truncated"}))
    job = tmp_path / "multirun" / "0"
    job.mkdir(parents=True)
    (job / "cases.json").write_text(json.dumps({"cases_dir": str(digest), "case_folders": ["case_c", "case_d"],
                                                "cases": ["case_c", "case_d"]}))

    report = make_report([tmp_path], reference="hevc", wandb=False)
    summary = {(s["codec"], s["target"]): s for s in report["summary"]}
    h64 = summary[("hevc", "cr64")]
    assert h64["n"] == 2 and h64["psnr"]["mean"] == pytest.approx(39.0)
    assert (h64["psnr"]["ci_low"], h64["psnr"]["ci_high"]) == pytest.approx((38.0, 40.0))
    assert h64["bpp"]["mean"] == pytest.approx(0.375) and h64["ssim"]["mean"] == pytest.approx(0.9)
    assert summary[("siren", "cr256")]["bpp"]["mean"] == pytest.approx((0.125 * 0.8 + 0.0625 * 0.9) / 2)
    assert (summary[("siren", "cr64")]["ssim"]["ci_low"], summary[("siren", "cr64")]["ssim"]["ci_high"]) == \
        pytest.approx((0.8, 0.8))  # equal values: a zero-width interval

    bd = report["bd"]["msd_liver"]["siren"]
    # the same PSNR at s × the rate: BD-rate = s − 1; PSNR = a + b·ln(rate), so BD-PSNR = b·ln(1/s)
    slope = {case: (p[0][1] - p[1][1]) / math.log(p[0][0] / p[1][0]) for case, p in hevc.items()}
    for case in hevc:
        assert bd["cases"][case]["bd_rate"] == pytest.approx(100 * (scale[case] - 1), abs=1e-6)
        assert bd["cases"][case]["bd_psnr"] == pytest.approx(slope[case] * math.log(1 / scale[case]), abs=1e-6)
    assert bd["bd_rate"]["mean"] == pytest.approx(-15.0, abs=1e-6) and bd["bd_rate"]["n"] == 2
    assert (bd["bd_rate"]["ci_low"], bd["bd_rate"]["ci_high"]) == pytest.approx((-20.0, -10.0), abs=1e-6)
    expected_psnr = (slope["case_a"] * math.log(1.25) + slope["case_b"] * math.log(1 / 0.9)) / 2
    assert bd["bd_psnr"]["mean"] == pytest.approx(expected_psnr, abs=1e-6)

    assert report["failed"] == [{"case": "case_c", "folder": str(digest / "case_c"), "error": "case_c.nii.gz: truncated"}]
    assert [m["case"] for m in report["missing"]] == ["case_d"]  # selected by a job, never finished
    assert json.loads((tmp_path / "report.json").read_text())["summary"] == json.loads(json.dumps(report["summary"]))
    assert (tmp_path / "report_rd.png").is_file()

    # SIREN again with other settings (another digest) on case_a: a curve of its own; HEVC there again: counted once
    for target, ratio, i in (("cr64", 64.0, 0), ("cr256", 256.0, 1)):
        bpp, psnr = hevc["case_a"][i]
        write_case(tmp_path / "cases" / target / "abcdefabcd" / "case_a", "msd_liver", target, ratio,
                   {"hevc": (bpp, psnr, 0.9), "siren": (bpp, psnr - 1, 0.8)})
    again = make_report([tmp_path], reference="hevc", wandb=False)
    curves = {(s["codec"], s["target"]): s["n"] for s in again["summary"]}
    assert curves == {("hevc", "cr64"): 2, ("hevc", "cr256"): 2, ("siren@0123456789", "cr64"): 2,
                      ("siren@0123456789", "cr256"): 2, ("siren@abcdefabcd", "cr64"): 1, ("siren@abcdefabcd", "cr256"): 1}
    assert again["duplicates_skipped"] == 2
    assert again["bd"]["msd_liver"]["siren@abcdefabcd"]["cases"]["case_a"]["bd_psnr"] == pytest.approx(-1.0, abs=1e-6)


def test_report_refuses_a_folder_without_cases_and_a_reference_not_coded(tmp_path):
    r = run_cli("report", tmp_path)
    assert r.returncode == 2 and "no case results" in r.stderr and str(tmp_path) in r.stderr
    write_case(tmp_path / "c" / "0123456789" / "case_a", "msd_liver", "cr64", 64.0, {"jpeg2000": (0.5, 40.0, 0.9)})
    r = run_cli("report", tmp_path, "--no-wandb")
    assert r.returncode == 2 and "--reference hevc: no case was coded with it (codecs: jpeg2000)" in r.stderr
    assert not (tmp_path / "report.json").exists()


def test_bench_rd_takes_a_datasets_case_selection(miniature, tmp_path):
    r = run_cli("bench", "rd", "data=msd_liver", f"data.root={miniature}", "data.split=all", "data.shard=1/3",
                "--codecs", "jpeg2000", "hevc", "--ratios", "16", "64", "--reference", "hevc", "--name", "mini",
                "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "mini.json").read_text())
    assert result["inputs"] == ["liver_1", "liver_4"]  # shard 1 of 3 of the id-sorted cases
    assert {p["image"] for p in result["points"]} == {"liver_1", "liver_4"} and len(result["points"]) == 8
    r = run_cli("bench", "rd", "--input", miniature, "data=msd_liver", "--codecs", "hevc", "--reference", "hevc")
    assert r.returncode == 2 and "not both" in r.stderr


@pytest.mark.slow  # 30 s: two DDP processes a case (make test-full, as the other DDP runs)
def test_the_case_loop_under_ddp_writes_each_case_once_with_its_own_wandb_run(miniature, tmp_path):
    """trainer=ddp on 2 CPU processes (gloo): both ranks walk the cases (each fit a collective), rank zero writes;
    a re-launch skips on both ranks."""
    logs = tmp_path / "logs"
    cmd = [sys.executable, "run.py", "data=msd_liver", f"data.root={miniature}", "data.split=all",
           "data.cases=[liver_0,liver_3]", "model=siren", "model.fit_steps=10", "data.block_size_3d=[16,96,96]",
           "compression=cr64", "baselines=[hevc]", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
           "logger=wandb", "save_recon=false"]
    env = {**os.environ, "MEDCOMP_LOG_DIR": str(logs), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    results = case_results(logs)
    assert sorted(results) == [("cr64", "liver_0"), ("cr64", "liver_3")]
    assert all(p.name == "metrics.json" for p in results.values())
    for p in results.values():
        assert len(list((p.parent / "wandb").glob("offline-run-*"))) == 1
        assert {row["codec"] for row in json.loads(p.read_text())["images"]} == {"siren", "hevc"}
    jobs = list(logs.rglob("cases.json"))
    assert len(jobs) == 1 and json.loads(jobs[0].read_text())["done"] == ["liver_0", "liver_3"]  # rank zero's
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 cases coded, 2 done before" in again.stdout
