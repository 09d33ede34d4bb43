"""Every model under ``trainer=ddp`` and ``trainer=ddp_spawn`` on two CPU processes (gloo), past every event of its
fit (UniCompress: code freeze and collapse restarts; classifiers: epoch ends, best-epoch pick, test), on small real
inputs: exit 0, one run directory, one set of outputs, every rank ends with the same weights, and the ``.mcz`` files
decode in a separate process. The cheapest run of each family (INR, classifier, trained 2-D codec) is in
``make test``; the rest are ``slow``."""

import json
import subprocess
import sys

import numpy as np
import pytest
from lightning.pytorch.callbacks import Callback

from tests.conftest import ROOT
from tests.test_diagnosis import mini_kermany  # noqa: F401 — the fixture, shared
from tests.test_run import only_dir, run_py


@pytest.fixture(scope="module")
def ct_crop(tmp_path_factory):
    """30 × 64 × 64 voxels of the real abdomen CT (int16 HU, its spacing kept)."""
    from tests.conftest import shared_data

    src = shared_data()
    if src is None:
        pytest.skip("../shared/data is not present on this machine")
    import nibabel as nib

    img = nib.load(src / "ct" / "abdomen_ct_122x101x112.nii.gz")
    path = tmp_path_factory.mktemp("ct") / "crop.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[30:94, 20:84, 40:70].astype(np.int16), img.affine), path)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, ct_crop):
    out = tmp_path_factory.mktemp("teacher")
    r = run_py("model=unicompress", "data=volume", f"data.path={ct_crop}", "compression=cr256", "model.fit_steps=20",
               "logger=none", "callbacks=none", "baselines=[]", f"paths.log_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    return next(out.rglob("final.ckpt"))


def overrides(model: str, ct_crop, kermany, teacher_ckpt=None) -> list[str]:
    volume = ["data=volume", f"data.path={ct_crop}", "compression=cr256", "model.fit_steps=40", "baselines=[]"]
    classify = ["data=kermany", f"data.root={kermany}", "data.batch_size=16", "model.epochs=2"]
    corpus = ["data=sample_2d", "compression=bpp0.5", "model.fit_steps=6", "data.eval_crop=256",
              "baselines=[jpeg2000]"]
    return {
        # a hidden w0 that collapses: restarts at steps 2, 4, …, 10; the codes freeze at step 10 of 40
        "unicompress": ["model=unicompress", *volume, "model.w0_hidden=3000", "model.collapse_check_every=2"],
        "unicompress_student/teacher": ["model=unicompress_student", *volume, f"model.teacher_ckpt={teacher_ckpt}",
                                        "model.block_codes=teacher"],
        "unicompress_student/own": ["model=unicompress_student", *volume, f"model.teacher_ckpt={teacher_ckpt}",
                                    "model.block_codes=own"],
        "siren": ["model=siren", *volume, "compression=cr64"],
        "cal_vae": ["model=cal_vae", *corpus],
        "rnn_conv": ["model=rnn_conv", *corpus, "model.channels=16"],
        "feature_pretrain": ["model=feature_pretrain", "data=pretrain_blocks_2d", "data.batch_size=16",
                             "model.fit_steps=6"],
        "mlcak": ["model=mlcak", *classify, "model.depth=3", "model.embed_dim=48", "model.num_heads=2"],
        "ct_lite": ["model=ct_lite", *classify, "compression=cr20", "model.widths=[8,16,32,64]", "model.embed_dim=64"],
    }[model]


FAST = {("unicompress", "ddp"), ("mlcak", "ddp"), ("cal_vae", "ddp")}
CASES = [pytest.param(m, s, marks=() if (m, s) in FAST else pytest.mark.slow)
         for s in ("ddp", "ddp_spawn")
         for m in ("unicompress", "unicompress_student/teacher", "unicompress_student/own", "siren", "cal_vae",
                   "rnn_conv", "feature_pretrain", "mlcak", "ct_lite")]


@pytest.mark.parametrize("model,strategy", CASES)
def test_model_fits_to_the_end_on_two_processes(tmp_path, request, ct_crop, mini_kermany, model, strategy):  # noqa: F811
    teacher_ckpt = request.getfixturevalue("teacher") if model.startswith("unicompress_student") else None
    r = run_py(*overrides(model, ct_crop, mini_kermany, teacher_ckpt), f"trainer={strategy}", "trainer.devices=2",
               "trainer.accelerator=cpu", "logger=none", f"paths.log_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    said = r.stdout + r.stderr
    assert "ended the fit with other weights" not in said  # medcomp.fitting.RanksAgree
    if model == "unicompress":
        assert "restarted with hidden w0" in said
    run = only_dir(next((tmp_path).glob("*/runs")))  # one run directory: rank 1 worked in rank 0's
    metrics = json.loads((run / "metrics.json").read_text())
    if model in ("mlcak", "ct_lite"):
        assert metrics["summary"]["test"]["images"] == 16  # the whole test split, once
        assert 0 <= metrics["summary"]["val"]["auroc"] <= 1 and metrics["summary"]["val"]["epoch"] in (0, 1)
        return
    if model == "feature_pretrain":
        assert (run / "extractor_2d.pt").is_file()
        return
    files = sorted((run / "mcz").glob("*.mcz"))
    assert len(files) == len(metrics["images"]) and files  # one set of outputs
    for f in files:
        ckpt = ["--ckpt", str(run / "checkpoints" / f"{model}.pt")] if f.stem.endswith(("cal_vae", "rnn_conv")) else []
        d = subprocess.run([sys.executable, "-m", "medcomp.cli", "decompress", str(f), str(tmp_path / "d.npy"),
                            "--force", *ckpt], capture_output=True, text=True, cwd=ROOT)
        assert d.returncode == 0, d.stderr


@pytest.mark.slow
def test_unicompress_under_ddp_and_one_process_within_the_seed_spread(tmp_path, ct_crop):
    """The same fit on one process and on two (each rank samples its own points, so two processes see twice the
    points a step): both files decode; PSNRs within 0.5 dB. Measured on this crop at 40 steps, seeds 42/43/44: one
    process 25.32/25.19/25.41 dB, ddp 25.26/25.36/25.14 (each a 0.22 dB range; ddp − one −0.06/+0.17/−0.27)."""
    psnr = {}
    for name, extra in (("one", []), ("ddp", ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"])):
        r = run_py(*overrides("unicompress", ct_crop, None)[:-2], *extra, "logger=none",
                   f"paths.log_dir={tmp_path / name}")
        assert r.returncode == 0, r.stderr[-3000:]
        psnr[name] = json.loads(next((tmp_path / name).rglob("metrics.json")).read_text())["summary"]["unicompress"]["psnr"]
    assert abs(psnr["one"] - psnr["ddp"]) < 0.5, psnr


class KillAt(Callback):
    """A Lightning callback (``+callbacks.kill._target_=tests.test_strategies.KillAt``) that SIGKILLs its own process
    when a fresh fit reaches ``step``: a kill at a known point, however fast the fit runs. A resumed fit is spared."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        import os
        import signal

        if trainer.ckpt_path is None and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def test_points_drawn_on_the_device_give_the_same_file(tmp_path, ct_crop):
    """data.sample_on_device=true (what auto does on a GPU: the loader only ticks, the data module draws each step's
    points where the blocks live) runs the same code on a CPU; there its generator draws the loader's stream, so the
    file is the same byte for byte."""
    files = {}
    for on_device in ("false", "true"):
        r = run_py(*overrides("unicompress", ct_crop, None), f"data.sample_on_device={on_device}", "logger=none",
                   f"paths.log_dir={tmp_path / on_device}", env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        files[on_device] = next((tmp_path / on_device).rglob("*.mcz")).read_bytes()
    assert files["true"] == files["false"]


@pytest.mark.slow
@pytest.mark.parametrize("on_device", ["false", "true"])
def test_resume_after_the_code_freeze_gives_the_uninterrupted_file(tmp_path, ct_crop, on_device):
    """UniCompress killed (SIGKILL) after its block codes froze, then ``resume=auto``: the same file, byte for byte,
    as the run that was never interrupted. On 3997f38 the freeze was not in the checkpoint and the resumed fit
    trained unfrozen codes to the end."""
    common = ["model=unicompress", "data=volume", f"data.path={ct_crop}", "compression=cr256", "logger=none",
              "baselines=[]", "model.fit_steps=300", "data.steps_per_epoch=50", f"paths.log_dir={tmp_path}",
              "+callbacks.kill._target_=tests.test_strategies.KillAt", "+callbacks.kill.step=160",
              f"data.sample_on_device={on_device}"]  # true: the device generator's state is in the checkpoint too
    env = {"OMP_NUM_THREADS": "1"}  # the bytes depend on the thread count (runtime.machine)
    assert run_py(*common, "task_name=reference", "callbacks.kill.step=-1", env=env).returncode == 0
    # the codes freeze at step 75; the last checkpoint before the kill is step 150's
    assert run_py(*common, "task_name=killed", env=env).returncode == -9
    killed = next(tmp_path.glob("killed/runs/*"))
    assert not (killed / "metrics.json").exists() and (killed / "checkpoints" / "last.ckpt").is_file()
    r = run_py(*common, "task_name=killed", "resume=auto", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = next(p for p in tmp_path.glob("killed/runs/*") if (p / "metrics.json").exists())
    assert "Restored all states" in r.stdout + r.stderr + (resumed / "run.log").read_text()
    ref = next(tmp_path.glob("reference/runs/*/mcz/*.mcz")).read_bytes()
    assert next(resumed.glob("mcz/*.mcz")).read_bytes() == ref


def test_ddp_with_one_process_passes_the_code_freeze(tmp_path, ct_crop):
    """``trainer=ddp trainer.devices=1`` still wraps the model in DDP, whose reducer wants every parameter's
    gradient: the frozen codes' fusion must stay in the graph there too (found by the GPU check's CPU rehearsal)."""
    r = run_py(*overrides("unicompress", ct_crop, None), "trainer=ddp", "trainer.devices=1", "trainer.accelerator=cpu",
               "logger=none", f"paths.log_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]


def test_gpu_check_dry_run_composes_every_step(tmp_path):
    """experiments/gpu_check.py --dry-run: every run.py step's config composes, every CLI step's flags parse."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_check.py"), "--dry-run", "--work",
                        str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["problems"] == [] and {"unicompress_300", "decode_cpu", "gpu_tests"} <= set(report["steps"])


def test_every_rank_draws_its_own_training_crops():
    """The extractor pretraining's crops ignore the sampler's index: with one seed every DDP rank drew the same
    batches (on 3997f38), doubling the work for the gradient of one."""
    from types import SimpleNamespace

    import torch

    from medcomp.data.crops import RandomBlocksDataModule

    dm = RandomBlocksDataModule(sample_files=["CT_small.dcm"], block=[32, 32], batch_size=4, steps_per_epoch=2)
    dm.setup()
    first = {}
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_rank=rank)
        first[rank] = next(iter(dm.train_dataloader()))
    assert first[0].shape == (4, 1, 32, 32) and not torch.equal(first[0], first[1])


@pytest.mark.parametrize("n,world", [(16, 2), (17, 2), (5, 4), (3, 4), (1, 2)])
def test_eval_shards_are_the_split_once_in_order(n, world):
    """Concatenated in rank order, the unpadded shards are the split exactly once, in loader order (Lightning's
    DistributedSampler pads the last shard with repeated images, which a synced AUROC would count twice)."""
    from medcomp.utils.distributed import EvalShardSampler

    shards = [list(EvalShardSampler(list(range(n)), world, r)) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    assert [len(s) for s in shards] == [len(EvalShardSampler(list(range(n)), world, r)) for r in range(world)]
