"""Device-clean models, checked without a GPU.

- After a fit past every event (UniCompress's code freeze and a collapse restart, a classifier's best-epoch pick), no
  module holds a tensor outside its parameters and buffers: such a tensor is not moved by ``.to()`` (Lightning moves
  the model back to the CPU after a GPU fit) and not saved in checkpoints (resume, ddp_spawn's hand-back).
- The forward of a training step of every model runs with its parameters, buffers and batch on a *fake* CUDA device
  (PyTorch's FakeTensorMode: shapes and devices, no data): any tensor made on the CPU and mixed with them raises
  FakeTensorDeviceMismatchError, and any ``bool``/``int`` of a device tensor (a host sync) raises
  DataDependentOutputException. (Only the forward: autograd's engine asks for a real CUDA context.)

Both fail on 3997f38 (VectorQuantizer.frozen_idx and the student's frozen assignments were plain attributes;
CAL-VAE drew its ladder levels on the CPU; the VQ read ``bool(initialised)`` and ``int(calls)`` every step).
"""

import numpy as np
import pytest
import torch

from medcomp.config import compose
from medcomp.fitting import fit
from tests.conftest import smooth_volume
from tests.test_diagnosis import mini_kermany  # noqa: F401 — the fixture, shared

MODULE_INTERNALS = set(vars(torch.nn.Module()))


def stray_tensors(module: torch.nn.Module) -> list[str]:
    """Attributes of ``module`` or its submodules that hold tensors (directly, or in a list, tuple or dict) outside
    parameters and buffers, less those a class names in ``TRANSIENT_TENSORS``."""
    found = []
    for prefix, m in module.named_modules():
        allowed = set(getattr(type(m), "TRANSIENT_TENSORS", ()))
        for attr, value in vars(m).items():
            if attr in MODULE_INTERNALS or attr in allowed:
                continue
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
            if any(torch.is_tensor(v) for v in items):
                found.append(f"{prefix}.{attr}" if prefix else attr)
    return found


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("vol") / "v.npy"
    np.save(path, smooth_volume((16, 48, 48)))
    return path


def _fit(tmp_path, *overrides, save=False):
    cfg = compose([*overrides, "logger=none", "callbacks=none", "baselines=[]", f"save_final_checkpoint={save}",
                   f"paths.output_dir={tmp_path}"])
    return fit(cfg)


VOLUME = ["data=volume", "data.block_size_3d=[8,16,16]", "compression.ratio=24"]


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, volume):
    out = tmp_path_factory.mktemp("teacher")
    _fit(out, "model=unicompress", *VOLUME, f"data.path={volume}", "model.fit_steps=4", save=True)
    return out / "checkpoints" / "final.ckpt"


def model_configs(volume, teacher_ckpt, kermany) -> dict[str, list[str]]:
    """Every model, with a fit long enough to pass its events (UniCompress: the freeze at step 2 of 8, a collapse
    restart at step 2)."""
    uni = [*VOLUME, f"data.path={volume}", "model.fit_steps=8"]
    classify = ["data=kermany", f"data.root={kermany}", "data.batch_size=8", "model.epochs=1"]
    corpus = ["data=sample_2d", "compression=bpp0.5", "model.fit_steps=1", "data.batch_size=2", "data.crop=64"]
    return {
        "unicompress": ["model=unicompress", *uni, "model.w0_hidden=3000", "model.collapse_check_every=2"],
        "unicompress_student/teacher": ["model=unicompress_student", *uni, f"model.teacher_ckpt={teacher_ckpt}"],
        "unicompress_student/own": ["model=unicompress_student", *uni, f"model.teacher_ckpt={teacher_ckpt}",
                                    "model.block_codes=own"],
        "siren": ["model=siren", *VOLUME, f"data.path={volume}", "model.fit_steps=2"],
        "cal_vae": ["model=cal_vae", *corpus],
        "rnn_conv": ["model=rnn_conv", *corpus, "model.channels=16", "model.train_iterations=2"],
        "feature_pretrain": ["model=feature_pretrain", "data=pretrain_blocks_2d", "data.batch_size=4",
                             "model.fit_steps=1"],
        "mlcak": ["model=mlcak", *classify, "model.depth=3", "model.embed_dim=48", "model.num_heads=2"],
        "ct_lite": ["model=ct_lite", *classify, "compression=cr20", "model.widths=[8,16,32,64]", "model.embed_dim=64"],
    }


MODELS = ["unicompress", "unicompress_student/teacher", "unicompress_student/own", "siren", "cal_vae", "rnn_conv",
          "feature_pretrain", "mlcak", "ct_lite"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, volume, teacher_ckpt, mini_kermany):  # noqa: F811
    configs = model_configs(volume, teacher_ckpt, mini_kermany)
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _fit(tmp_path_factory.mktemp(name.replace("/", "_")), *configs[name])
        return cache[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_no_tensor_state_outside_parameters_and_buffers_after_a_fit(fitted, name):
    model = fitted(name).model
    if name.startswith("unicompress"):  # the fit passed its code freeze
        assert all(q.frozen_idx is not None and q.frozen_idx.numel()
                   for q in (model.teacher if name != "unicompress" else model).quantizers)
    assert stray_tensors(model) == []


def _to_device(batch, device):
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


@pytest.mark.parametrize("name", MODELS)
def test_a_training_step_runs_on_a_fake_cuda_device(fitted, name):
    from torch._subclasses.fake_tensor import FakeTensorMode

    run = fitted(name)
    model, batch = run.model, next(iter(run.datamodule.train_dataloader()))
    model.log = model.log_dict = lambda *a, **k: None  # no trainer loop here
    model.train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to("cuda")
        batch = _to_device(batch, "cuda")  # fake: inside FakeTensorMode
        # the 2-D codecs step their optimiser by hand: their loss is the step's forward
        loss = model.training_loss(batch)[0] if hasattr(model, "training_loss") else model.training_step(batch, 0)
        assert loss.device.type == "cuda"


def test_the_check_catches_a_plain_tensor_attribute_and_a_cpu_tensor_in_a_step():
    """The two checks above can fail: a module that keeps a tensor as a plain attribute, and a step that makes a
    CPU tensor beside device parameters."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    class Careless(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.picked = {0: torch.zeros(2)}

        def forward(self, x):
            return self.lin(x) + torch.randn(2)  # no device=

    m = Careless()
    assert stray_tensors(m) == ["picked"]
    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(RuntimeError, match="devices"):
        m.to("cuda")
        m(torch.zeros(4, 3, device="cuda"))


@pytest.mark.parametrize("codec", ["siren", "unicompress", "cal_vae", "rnn_conv"])
def test_decompress_device_flag_on_every_learned_codec(tmp_path, codec, cli):
    """``--device cpu`` and ``auto`` decode every learned codec's file to the same array (auto is the CPU here);
    ``--device cuda`` without CUDA is one line, exit 2, and writes nothing. The encode runs in a process of its own,
    the decodes in this one (the CLI's main, as a user's process runs it: a separate process decoding a file is
    test_cli's and test_codecs2d's)."""
    from tests.conftest import run_cli

    src = tmp_path / "in.npy"
    np.save(src, smooth_volume((8, 64, 64)) if codec in ("siren", "unicompress") else smooth_volume((64, 64)))
    fit = ["-o", "model.fit_steps=2", "-o", "data.block_size_3d=[8,16,16]"] if codec in ("siren", "unicompress") else []
    r = run_cli("compress", src, tmp_path / "x.mcz", "--codec", codec, "--ratio", "16", "--device", "cpu", *fit)
    assert r.returncode == 0, r.stderr
    arrays = {}
    for device in ("cpu", "auto"):
        code, _, err = cli("decompress", tmp_path / "x.mcz", tmp_path / f"{device}.npy", "--device", device)
        assert code == 0, err
        arrays[device] = np.load(tmp_path / f"{device}.npy")
    np.testing.assert_array_equal(arrays["cpu"], arrays["auto"])
    if not torch.cuda.is_available():
        code, _, err = cli("decompress", tmp_path / "x.mcz", tmp_path / "cuda.npy", "--device", "cuda")
        assert code == 2 and not (tmp_path / "cuda.npy").exists()
        assert err.strip().splitlines()[-1] == ("medcomp: error: --device cuda: no CUDA device is available here "
                                                "(torch.cuda.is_available() is False); use --device cpu or auto")
