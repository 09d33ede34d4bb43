"""Optuna sweeps resume from their sqlite storage; strategy configs compose."""

import json
import sqlite3

import pytest

from medcomp.config import compose
from medcomp.errors import MedcompError
from tests.test_run import run_py


@pytest.mark.slow
def test_optuna_study_resumes_from_sqlite(tmp_path):
    common = ["hparams_search=siren_optuna", "debug=fdr", "logger=none", "callbacks=none", "baselines=[]",
              f"paths.log_dir={tmp_path}"]
    r = run_py(*common, "hydra.sweeper.n_trials=2")
    assert r.returncode == 0, r.stderr[-3000:]
    db = tmp_path / "optuna" / "siren_sample_cr256.db"

    def trials():
        with sqlite3.connect(db) as con:
            return con.execute("select state, count(*) from trials group by state").fetchall()

    assert trials() == [("COMPLETE", 2)]
    # The same command again (e.g. after the first was killed): the study goes on, the two trials are kept.
    r = run_py(*common, "hydra.sweeper.n_trials=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert trials() == [("COMPLETE", 3)]
    with sqlite3.connect(db) as con:
        values = [v for (v,) in con.execute("select value from trial_values")]
    assert len(values) == 3 and all(v > 0 for v in values)  # the task returned the configured metric (PSNR)


@pytest.mark.parametrize("trainer,strategy", [("ddp", "ddp"), ("ddp_spawn", "ddp_spawn"), ("fsdp", "fsdp"),
                                              ("multinode", "ddp")])
def test_strategy_configs_compose(trainer, strategy, monkeypatch):
    monkeypatch.setenv("SLURM_NNODES", "3")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    cfg = compose([f"trainer={trainer}"])
    assert cfg.trainer.strategy == strategy
    if trainer == "multinode":
        assert cfg.trainer.num_nodes == 3 and cfg.trainer.devices == 4


@pytest.mark.slow
def test_one_failing_job_does_not_stop_the_multirun(tmp_path, shared):
    r = run_py("-m", "model=siren", "data=volume", f"data.path={tmp_path / 'missing.nii.gz'},"
               f"{shared / 'ct' / 'chest_ct_slice.dcm'}", "debug=fdr", "logger=none", "callbacks=none", "baselines=[]",
               "compression=cr10", f"paths.log_dir={tmp_path}/logs")
    assert r.returncode == 2
    assert "1 job(s) of the multirun failed" in r.stderr.strip().splitlines()[-1]
    sweep = next((tmp_path / "logs" / "run" / "multiruns").iterdir())
    assert (sweep / "0" / "failed.json").exists() and not (sweep / "0" / "metrics.json").exists()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["summary"]["siren"]["psnr"] > 0


@pytest.mark.slow
def test_multirun_jobs_share_a_wandb_group_and_log_artifacts(tmp_path):
    from tests.wandb_records import artifact_types, run_group

    r = run_py("-m", "model=siren", "compression=cr64,cr256", "debug=fdr", "logger=wandb", "baselines=[]",
               f"paths.log_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted(tmp_path.rglob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one W&B run per job
    groups = {run_group(f) for f in files}
    assert len(groups) == 1 and groups.pop().startswith("run-")
    kinds = set(artifact_types(files[0]).values())
    assert {"compressed-images", "figures"} <= kinds


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    r = run_py("model=siren", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "debug=limit",
               "logger=csv", "callbacks=none", "baselines=[]", "compression=cr64", f"paths.log_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "run" / "runs").iterdir())
    assert len(runs) == 1  # rank 1 works in rank 0's directory
    m = json.loads((runs[0] / "metrics.json").read_text())
    assert m["summary"]["siren"]["psnr"] > 10 and m["summary"]["siren"]["ratio_actual"] == pytest.approx(64, rel=0.03)


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("ddp_spawn", marks=pytest.mark.slow)])
def test_default_experiment_under_ddp_with_its_baselines(tmp_path, strategy):
    """The default experiment (UniCompress, per-block SIREN as a learned baseline, JPEG 2000, HEVC) on 2 processes:
    every rank takes part in every fit, rank zero alone writes one set of outputs (ddp_spawn: the main process builds
    the networks and loads the weights the spawned fit sent back)."""
    r = run_py(f"trainer={strategy}", "trainer.devices=2", "trainer.accelerator=cpu", "debug=fdr", "logger=wandb",
               f"paths.log_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "run" / "runs").iterdir())
    assert len(runs) == 1
    m = json.loads((runs[0] / "metrics.json").read_text())
    assert set(m["summary"]) == {"unicompress", "siren", "jpeg2000", "hevc"}
    assert len(list((runs[0] / "mcz").glob("*.mcz"))) == 12
    assert len(list((runs[0] / "wandb").glob("offline-run-*"))) == 1


@pytest.mark.slow
def test_multirun_times_ddp_one_directory_and_one_wandb_run_per_point(tmp_path):
    # the default experiment (UniCompress, SIREN, JPEG 2000, HEVC): every fit of every job under DDP
    r = run_py("-m", "compression=cr64,cr256", "trainer=ddp", "trainer.devices=2",
               "trainer.accelerator=cpu", "debug=fdr", "logger=wandb", "callbacks=none",
               f"paths.log_dir={tmp_path}", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "run" / "runs").exists()  # no stray single-run directories from rank 1
    sweeps = list((tmp_path / "run" / "multiruns").iterdir())
    assert len(sweeps) == 1  # rank 1 never re-launched the sweep
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        m = json.loads((job / "metrics.json").read_text())
        assert set(m["summary"]) == {"unicompress", "siren", "jpeg2000", "hevc"}
    assert len(list(tmp_path.rglob("offline-run-*/run-*.wandb"))) == 2  # rank zero only


@pytest.mark.slow
def test_sigkill_then_resume_auto_gives_the_uninterrupted_metrics(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    common = ["model=siren", "logger=none", "baselines=[]", "compression=cr64", "model.fit_steps=1500",
              "data.steps_per_epoch=100", f"paths.log_dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert run_py(*common, "task_name=reference").returncode == 0
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *common, "task_name=killed"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(tmp_path.glob("killed/runs/*/checkpoints/last.ckpt")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = next(tmp_path.glob("killed/runs/*"))
    assert not (killed / "metrics.json").exists() and not (killed / "mcz").exists()  # it died while training
    r = run_py(*common, "task_name=killed", "resume=auto")
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = next(p for p in tmp_path.glob("killed/runs/*") if (p / "metrics.json").exists())
    assert "Restored all states" in (resumed / "run.log").read_text() or "Restored all states" in r.stderr
    ref = json.loads(next(tmp_path.glob("reference/runs/*/metrics.json")).read_text())
    got = json.loads((resumed / "metrics.json").read_text())
    assert [i["psnr"] for i in got["images"]] == [i["psnr"] for i in ref["images"]]
    assert [i["ratio_actual"] for i in got["images"]] == [i["ratio_actual"] for i in ref["images"]]


def test_checkpoints_are_written_then_renamed(tmp_path, monkeypatch):
    """A failure while a checkpoint is written leaves the previous one intact and no temporary file."""
    from medcomp.utils.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    import lightning.fabric.utilities.cloud_io as cloud_io

    def broken(checkpoint, filepath):
        open(filepath, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(cloud_io, "_atomic_save", broken)
    with pytest.raises(MedcompError, match=r"last.ckpt: cannot write \(disk full\)"):  # one line, naming it
        io.save_checkpoint({"step": 2}, path)
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
