"""CT-Lite and MLCAK: BTT head, distillation-loss gradients, timm attention extraction, JPEG degradation at a target
ratio, patient-level splits, and fast_dev_runs of both models on a miniature copy of the real Kermany layout."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from medcomp.data.cxr import jpeg_degrade, jpeg_quality_for, patient_split, read_kermany
from medcomp.distill import losses
from medcomp.metrics.classification import auroc, bootstrap_auroc
from medcomp.models.diagnosis.ct_lite import CTLite, siglip_loss
from medcomp.models.diagnosis.mlcak import ViTWithAttention, auto_patch_size
from medcomp.nn.btt import BTTLinear
from medcomp.target import Target
from tests.test_run import only_dir, run_py


@pytest.fixture(scope="module")
def mini_kermany(tmp_path_factory):
    """A few real images per split and class, in Kermany's own folder layout."""
    from tests.conftest import shared_data

    src = shared_data()
    if src is None:
        pytest.skip("../shared/data is not present on this machine")
    root = tmp_path_factory.mktemp("kermany")
    for split, n in (("train", 24), ("test", 8)):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            files = sorted((src / "cxr" / "kermany224" / split / cls).iterdir())
            for f in files[:: len(files) // n][:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


# ── SFP: Block-Tensor-Train head ──────────────────────────────────────────────────────────────────────────────────


def test_btt_halves_a_dense_head_and_is_a_linear_map():
    btt, dense = BTTLinear(512, 512, rank=4, in_shape=(16, 32), out_shape=(32, 16)), torch.nn.Linear(512, 512)
    n_btt, n_dense = (sum(p.numel() for p in m.parameters()) for m in (btt, dense))
    assert n_btt <= 0.55 * n_dense
    x = torch.randn(3, 5, 512)
    y = btt(x)
    assert y.shape == (3, 5, 512)
    # It applies one fixed matrix: the same as multiplying by its dense equivalent.
    assert torch.allclose(y, x @ btt.dense_weight().T + btt.bias, atol=1e-4)
    # Default init gives a dense layer's output scale.
    assert 0.5 < btt(torch.randn(256, 512)).std().item() / dense(torch.randn(256, 512)).std().item() < 2


def test_ct_lite_btt_head_parameters_against_dense():
    btt, dense = CTLite(head="btt", input="image"), CTLite(head="dense", input="image")
    assert btt.head_parameters()["projection"] <= 0.55 * dense.head_parameters()["projection"]
    batch = {"image": torch.rand(2, 1, 64, 64), "label": torch.tensor([0, 1]), "findings": torch.zeros(2, 1)}
    mcct, mlct, extra = btt.heads(batch)
    assert mcct.shape == (2,) and mlct.shape == (2, 1) and extra["embedding"].shape == (2, 256)
    # A volume of slices goes through the same encoder.
    pooled, maps = btt.encoder(torch.rand(2, 3, 1, 64, 64))
    assert pooled.shape == (2, 256) and maps[-1].shape[0] == 6


# ── distillation losses: each one's gradient reaches the student and not the teacher ──────────────────────────────


@pytest.mark.parametrize("name", ["hard_alignment", "soft_kl", "gram_style", "dual_attention", "attention_maps_mse"])
def test_distillation_loss_gradients(name):
    torch.manual_seed(0)
    shapes = {"hard_alignment": ((4, 3), (4, 3)), "soft_kl": ((4, 5), (4, 5)),
              "gram_style": ((2, 8, 6, 6), (2, 8, 12, 12)), "dual_attention": ((2, 8, 6, 6), (2, 8, 12, 12)),
              "attention_maps_mse": ((2, 7, 7), (2, 14, 14))}
    s_shape, t_shape = shapes[name]
    student = torch.rand(s_shape, requires_grad=True)
    teacher = torch.rand(t_shape, requires_grad=True)
    fn = getattr(losses, name)
    loss = fn([student], [teacher]) if name == "attention_maps_mse" else fn(student, teacher)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None  # the teacher is a target, never trained by the student's loss
    # And it vanishes when the student matches the teacher (same grid).
    if name in ("hard_alignment", "soft_kl", "gram_style", "dual_attention"):
        same = torch.rand(s_shape)
        assert fn(same, same.clone()).item() == pytest.approx(0, abs=1e-6)


def test_attention_resampling_keeps_a_uniform_map_uniform():
    flat = torch.full((1, 14, 14), 1 / 196)
    assert torch.allclose(losses.resample_attention(flat, (7, 7)), torch.ones(1, 7, 7))


def test_siglip_class_prompts_positives():
    img, txt = torch.randn(4, 8), torch.randn(3, 8)
    pos = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.float)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    loss = siglip_loss(img, txt, scale, bias, pos)
    logits = scale * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T + bias
    expected = -torch.nn.functional.logsigmoid((2 * pos - 1) * logits).sum() / 4
    assert torch.allclose(loss, expected)
    # Paired texts (reports): open_clip's own diagonal loss.
    assert siglip_loss(img, torch.randn(4, 8), scale, bias).ndim == 0


# ── MLCAK: timm attention at every resolution ─────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("size", [28, 56, 112, 224])
def test_timm_attention_extraction(size):
    patch = auto_patch_size(size)
    net = ViTWithAttention("vit_tiny_patch16_224", size, patch, embed_dim=48, depth=3, num_heads=2, levels=[0, 1, -1])
    x = torch.rand(2, 1, size, size, requires_grad=True)
    features, maps = net(x)
    grid = size // patch
    assert grid >= 7 and features.shape == (2, 48)
    assert len(maps) == 3 and all(m.shape == (2, grid, grid) for m in maps)
    # Class-token attention over patches: non-negative, at most 1 in total (the rest goes to the class token).
    total = maps[-1].flatten(1).sum(1)
    assert (maps[-1] >= 0).all() and (total <= 1 + 1e-5).all() and (total > 0).all()
    maps[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_patch_size_that_drops_pixels_is_refused():
    from medcomp.errors import MedcompError

    with pytest.raises(MedcompError, match="not a multiple of patch size"):
        ViTWithAttention("vit_tiny_patch16_224", 30, 4, embed_dim=48, depth=2, num_heads=2, levels=[-1])


def test_hybrid_teacher_size_that_does_not_tile_is_refused():
    from medcomp.errors import MedcompError

    with pytest.raises(MedcompError, match="56-px images do not tile into 8-px patches"):
        ViTWithAttention("vit_tiny_r_s16_p8_224", 56, 8, 48, 2, 2, [0, 1])


def test_missing_pretrained_weights_fall_back_with_a_warning(tmp_path, caplog):
    net = ViTWithAttention("vit_tiny_patch16_224", 28, 4, embed_dim=48, depth=2, num_heads=2, levels=[-1],
                           pretrained_path=str(tmp_path / "absent.safetensors"))
    assert net.source == "random-init"
    assert "could not be loaded" in caplog.text


# ── data: patient split, JPEG at a target ratio, AUROC ────────────────────────────────────────────────────────────


def test_patient_level_split_is_disjoint(mini_kermany):
    full = read_kermany(mini_kermany, "train", 224)
    assert full.images.shape[1:] == (224, 224) and full.images.dtype == np.uint8
    # Findings from the file names: every pneumonia image is bacterial or viral, no normal one is.
    assert (full.findings.sum(1) == full.labels).all()
    train, val = patient_split(full, 0.25, seed=0)
    assert set(train.groups).isdisjoint(val.groups)
    assert len(train.labels) + len(val.labels) == len(full.labels)
    assert set(val.labels) == {0, 1}


def test_jpeg_degradation_hits_its_target_ratio(mini_kermany):
    images = read_kermany(mini_kermany, "train", 224).images
    for ratio in (10, 20, 40):
        quality, got = jpeg_quality_for(images, Target(ratio=ratio))
        decoded, nbytes = jpeg_degrade(images, quality)
        actual = images.nbytes / nbytes
        assert actual == pytest.approx(got)
        assert ratio <= actual < ratio * 1.15, (ratio, quality, actual)  # a ceiling on bytes, as for every codec
        assert decoded.shape == images.shape and not np.array_equal(decoded, images)


def test_training_augmentation_feeds_teacher_and_students_the_same_view(mini_kermany):
    import torch.nn.functional as F

    from medcomp.data.cxr import RadiographClassificationDataModule

    def datamodule():
        dm = RadiographClassificationDataModule("kermany", str(mini_kermany), ["bacterial", "viral"], resolution=28,
                                         degrade_jpeg=True, jpeg_ratio=10, augment=True, seed=3)
        dm.setup()
        return dm

    dm = datamodule()
    train, test = dm.train_dataloader().dataset, dm.test_dataloader().dataset
    a, b = train[0], train[0]
    assert not torch.equal(a["image"], b["image"])  # a new view each time it is drawn
    assert 0 <= a["image"].min() and a["image"].max() <= 1 and a["image"].shape == (1, 224, 224)
    # The student's inputs are made from the teacher's view: 8-bit area downsampling, JPEG at the chosen quality.
    low = F.interpolate(a["image"][None], size=(28, 28), mode="area")[0]
    assert torch.allclose(a["lowres"], (low * 255).round() / 255)
    assert a["jpeg"].shape == a["image"].shape and 0 < (a["jpeg"] - a["image"]).abs().mean() < 0.05
    # Evaluation images are never augmented; a seeded run sees the same sequence of views.
    assert torch.equal(test[0]["image"], test[0]["image"])
    assert torch.equal(datamodule().train_dataloader().dataset[0]["image"], a["image"])


def test_auroc_and_bootstrap_interval():
    y = torch.tensor([0, 0, 1, 1])
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), y) == pytest.approx(0.75)
    r = bootstrap_auroc(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert r["auroc"] == 1.0 and r["ci_low"] == 1.0 and r["bootstrap"] > 900


def test_paired_bootstrap_auroc_difference():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(150), np.ones(150)].astype(int)
    good = [y + rng.normal(0, 0.6, 300) for _ in range(3)]   # AUROC ≈ 0.88
    noise = [rng.normal(0, 1, 300) for _ in range(3)]         # AUROC ≈ 0.5
    # The vectorised rank AUROC is torchmetrics' AUROC.
    from medcomp.metrics.classification import _auroc_rows, paired_bootstrap_auroc

    assert _auroc_rows(good[0][None], y[None])[0] == pytest.approx(auroc(torch.tensor(good[0]), torch.tensor(y)))
    r = paired_bootstrap_auroc(good, noise, y, n=500)
    expected = np.mean([auroc(torch.tensor(g), torch.tensor(y)) for g in good]) \
        - np.mean([auroc(torch.tensor(z), torch.tensor(y)) for z in noise])
    assert r["diff"] == pytest.approx(expected) and r["diff"] > 0.3
    assert r["p_value"] < 0.01 and r["ci_low"] > 0.2 and r["models"] == [3, 3]
    # The same models on both sides: no difference, p = 1. Two equally good sets: not significant.
    same = paired_bootstrap_auroc(good, good, y, n=500)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    other = [y + rng.normal(0, 0.6, 300) for _ in range(3)]
    assert paired_bootstrap_auroc(good, other, y, n=500)["p_value"] > 0.05
    with pytest.raises(ValueError, match="images"):
        paired_bootstrap_auroc(good, [g[:10] for g in good], y)


# ── both models through run.py ────────────────────────────────────────────────────────────────────────────────────


def test_mlcak_teacher_then_kd_student(mini_kermany, tmp_path):
    common = ["data=kermany", f"data.root={mini_kermany}", "data.batch_size=16", "logger=csv",
              "trainer.log_every_n_steps=1", "model.depth=3", "model.embed_dim=48", "model.num_heads=2"]
    r = run_py("model=mlcak", "model.epochs=1", *common, f"paths.log_dir={tmp_path}/t")
    assert r.returncode == 0, r.stderr[-3000:]
    teacher_dir = only_dir(tmp_path / "t" / "run" / "runs")
    m = json.loads((teacher_dir / "metrics.json").read_text())
    assert 0 <= m["summary"]["test"]["auroc"] <= 1 and m["summary"]["test"]["images"] == 16
    assert m["model_info"]["grid"] == [7, 7]  # the R-Ti hybrid teacher: stem, then 8-px patches of its features
    assert "AUROC" in r.stdout
    # The per-image test scores are written, and they give the AUROC in metrics.json.
    with np.load(teacher_dir / "test_predictions.npz") as p:
        assert p["mcct"].shape == (16,) and p["mlct"].shape == (16, 2) and sorted(p["label"]) == [0] * 8 + [1] * 8
        assert auroc(torch.from_numpy(p["mcct"]), torch.from_numpy(p["label"])) == m["summary"]["test"]["auroc"]
    r = run_py("experiment=mlcak_kd", "data.resolution=28", "model.epochs=1", *common,
               f"model.teacher_ckpt={teacher_dir / 'checkpoints' / 'final.ckpt'}", f"paths.log_dir={tmp_path}/s")
    assert r.returncode == 0, r.stderr[-3000:]
    student_dir = only_dir(tmp_path / "s" / "mlcak_kd" / "runs")
    m = json.loads((student_dir / "metrics.json").read_text())
    assert m["model_info"]["kd"] and m["model_info"]["grid"] == [7, 7]
    logged = (next(student_dir.glob("csv/*/metrics.csv"))).read_text().splitlines()[0]
    for term in ("train/kd_mlct", "train/kd_mcct", "train/kd_attention", "train/cls"):
        assert term in logged
    assert (student_dir / "attention.png").stat().st_size > 10_000


def test_ct_lite_fast_dev_run_on_jpeg_input(mini_kermany, tmp_path):
    r = run_py("model=ct_lite", "compression=cr20", "data=kermany", f"data.root={mini_kermany}", "debug=fdr",
               "logger=csv", "trainer.log_every_n_steps=1", f"paths.log_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((only_dir(tmp_path / "run" / "runs") / "metrics.json").read_text())
    assert m["jpeg"]["ratio_target"] == 20 and abs(math.log(m["jpeg"]["ratio_actual_test"] / 20)) < math.log(1.2)
    assert m["model_info"]["ratio"] <= 0.55 and m["model_info"]["input"] == "jpeg"


def test_missing_dataset_root_is_one_line_exit_2(tmp_path):
    r = run_py("model=mlcak", "data=kermany", f"data.root={tmp_path / 'nowhere'}", "logger=none",
               f"paths.log_dir={tmp_path}/logs")
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("medcomp: error:") and "NORMAL" in line and "download" in line


@pytest.mark.slow
def test_analysis_benchmark_seeds_pairs_and_resumes(mini_kermany, tmp_path):
    """experiments/analysis_auroc.py on the miniature Kermany, tiny models: two seeds of a teacher and of a 28-px
    student with and without KD, run two at a time; the JSON has mean ± sd per row and the paired KD test; a second
    call with --resume runs nothing again (it keeps every finished run)."""
    import subprocess
    import sys

    from tests.test_run import ROOT

    args = [sys.executable, str(ROOT / "experiments" / "analysis_auroc.py"), "--root", str(mini_kermany),
            "--pneumoniamnist", "", "--resolutions", "28", "--seeds", "1", "2", "--teacher-epochs", "1",
            "--epochs", "1", "--max-train", "0", "--batch-size", "16", "--bootstrap", "200",
            "--only", "mlcak_teacher_224", "mlcak_student_28", "mlcak_student_28_kd",
            "--out-dir", str(tmp_path / "results"), "--work-dir", str(tmp_path / "runs"),
            "--extra", "model.depth=3", "model.embed_dim=48", "model.num_heads=2"]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    result = json.loads((tmp_path / "results" / "analysis_auroc.json").read_text())
    assert sorted(result["runs"]) == sorted(f"{k}_s{s}" for k in ("mlcak_teacher_224", "mlcak_student_28",
                                                                  "mlcak_student_28_kd") for s in (1, 2))
    row = result["rows"]["mlcak_student_28_kd"]
    assert row["seeds"] == [1, 2] and row["auroc_mean"] == pytest.approx(np.mean(row["auroc"]))
    assert row["auroc_sd"] == pytest.approx(np.std(row["auroc"], ddof=1))
    kd = result["comparisons"]["kd_vs_nokd_28"]
    assert kd["diff"] == pytest.approx(kd["mean_a"] - kd["mean_b"]) and 0 < kd["p_value"] <= 1
    assert "mlcak_kd_beats_nokd_28" in result["targets"] and "mlcak_teacher_auroc_ge_0.95" in result["targets"]
    # Each KD student distilled from the teacher of its own seed.
    assert result["runs"]["mlcak_student_28_kd_s2"]["command"].count("mlcak_teacher_224_s2/checkpoints") == 1
    assert (tmp_path / "results" / "analysis_auroc.png").stat().st_size > 20_000
    again = subprocess.run([*args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "python run.py" not in again.stdout, again.stdout[-2000:]
    assert json.loads((tmp_path / "results" / "analysis_auroc.json").read_text())["runs"] == result["runs"]
    assert "--only" not in result["command"] and "--seeds 1 2" in result["command"]  # what reproduces it
    report = subprocess.run([*args, "--resume", "--report"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and "python run.py" not in report.stdout, report.stdout[-2000:]
    # Without the JSON, --resume adopts the finished run directories instead of training them again.
    (tmp_path / "results" / "analysis_auroc.json").unlink()
    adopt = subprocess.run([*args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert adopt.returncode == 0 and "python run.py" not in adopt.stdout, adopt.stdout[-2000:]
    assert adopt.stdout.count("adopting the finished run") == 6
    again = json.loads((tmp_path / "results" / "analysis_auroc.json").read_text())
    assert again["rows"]["mlcak_student_28_kd"]["auroc"] == row["auroc"]
