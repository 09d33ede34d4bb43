"""What only a GPU shows: real CUDA training steps of every model, and files encoded on the GPU decoded by a
CPU-only process within 0.01 dB of the GPU's own decode. Marked ``gpu``: skipped without CUDA (tests/conftest.py),
run by ``make gpu-check`` (experiments/gpu_check.py) on a machine that has one."""

import os

import numpy as np
import pytest
import torch

from tests.conftest import run_cli, smooth_volume
from tests.test_devices import MODELS, fitted, mini_kermany, teacher_ckpt, volume  # noqa: F401 — fixtures

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", MODELS)
def test_a_training_step_with_its_backward_on_cuda(fitted, name):  # noqa: F811
    run = fitted(name)
    model, batch = run.model, next(iter(run.datamodule.train_dataloader()))
    model.log = model.log_dict = lambda *a, **k: None
    model.train().to("cuda")
    from tests.test_devices import _to_device

    batch = _to_device(batch, "cuda")
    loss = model.training_loss(batch)[0] if hasattr(model, "training_loss") else model.training_step(batch, 0)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(g.device.type == "cuda" and torch.isfinite(g).all() for g in grads)


def _psnr(a: np.ndarray, b: np.ndarray, ref: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(float(ref.max() - ref.min()) ** 2 / max(mse, 1e-12)))


@pytest.mark.parametrize("codec", ["siren", "unicompress", "cal_vae", "rnn_conv"])
def test_encoded_on_the_gpu_decoded_on_a_cpu_only_process(tmp_path, codec):
    src = tmp_path / "in.npy"
    original = smooth_volume((16, 128, 128)) if codec in ("siren", "unicompress") else smooth_volume((256, 256))
    np.save(src, original)
    fit = ["-o", "model.fit_steps=200"] if codec in ("siren", "unicompress") else []
    r = run_cli("compress", src, tmp_path / "x.mcz", "--codec", codec, "--ratio", "32", "--device", "cuda", *fit)
    assert r.returncode == 0, r.stderr
    r = run_cli("decompress", tmp_path / "x.mcz", tmp_path / "gpu.npy", "--device", "cuda")
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a process that cannot see the GPU
    import subprocess
    import sys

    d = subprocess.run([sys.executable, "-m", "medcomp.cli", "decompress", str(tmp_path / "x.mcz"),
                        str(tmp_path / "cpu.npy"), "--device", "auto"], capture_output=True, text=True, env=env)
    assert d.returncode == 0, d.stderr
    on_gpu, on_cpu = np.load(tmp_path / "gpu.npy"), np.load(tmp_path / "cpu.npy")
    assert abs(_psnr(original, on_gpu, original) - _psnr(original, on_cpu, original)) < 0.01
