"""Learned 2-D codecs at equal training budget: CAL-VAE, RNN-Conv and the reference implementation, CompressAI's
FactorizedPrior and ScaleHyperprior, trained by this one harness — 1 channel, the same channel counts, the same
corpus (conf/data/codec_train.yaml), the same crops and batch, the same optimiser (and the same entropy-model settings
as CAL-VAE's: init_scale 2, density learning rate 1e-3), the same CPU minutes per model —
then coded on the evaluation images of experiments/codecs2d_rd.py (none of them in the corpus).

    python experiments/codecs2d_budget.py --minutes 3      # → experiments/results/codecs2d_budget.json/png

The conv codecs (CAL-VAE at one λ, FactorizedPrior, ScaleHyperprior) train one model per λ, as CompressAI trains its
quality levels; RNN-Conv is variable-rate by construction, so it trains once and is coded at every bpp target.
Every bpp is the coded streams' bytes (the entropy coder's real output, no container header for any of them, so
the header is not counted against one model and not the other); PSNR is in the original units, as everywhere in
medcomp. Training minutes are the process's CPU minutes spent in optimiser steps (one thread: robust to other work
on the machine), not the evaluations in between. PSNR vs training minutes is
recorded for every model at the middle λ (RNN-Conv at 0.5 bpp) on the X-rays. JPEG 2000 is drawn for context only:
it has no training budget, and its bpp is its whole .mcz file's (header included, which on the two ~120² CTA
slices is much of a low-rate file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from medcomp.bench import (
    bd_metrics,
    ct_eval_slices,
    machine,
    rd_curves,
    rd_points,
    save_figure,
    shared_data,
    shared_data_or_exit,
    xray_eval_images,
)
from medcomp.codecs.trained2d import normalise, pad_plane
from medcomp.data.image import from_unit, restore_dtype
from medcomp.data.image_corpus import ImagesDataModule
from medcomp.metrics import psnr
from medcomp.models.compression.cal_vae import CalVAE, optimiser_groups
from medcomp.models.compression.rnn_conv import RNNConv
from medcomp.target import Target, fit_to_budget
from medcomp.utils.atomic import atomic_write_text

with warnings.catch_warnings():  # compressai 1.2.8 scripts a helper with torch.jit, deprecated in torch 2.14
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from compressai.entropy_models import EntropyBottleneck
    from compressai.losses import RateDistortionLoss
    from compressai.models import FactorizedPrior, ScaleHyperprior
    from compressai.models.utils import conv, deconv

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["cal_vae", "factorized_prior", "scale_hyperprior", "rnn_conv"]
REFERENCE = "factorized_prior"


def corpus(crop: int, batch: int, seed: int) -> ImagesDataModule:
    """The shipped weights' corpus, as conf/data/codec_train.yaml lists it."""
    import yaml

    cfg = yaml.safe_load((ROOT / "conf" / "data" / "codec_train.yaml").read_text())["data"]
    shared = str(shared_data())
    train = [entry.replace("${paths.shared_data}", shared) for entry in cfg["train"]]
    dm = ImagesDataModule(train=train, eval=[], crop=crop, batch_size=batch, steps_per_epoch=10**6,
                          max_train_images=cfg["max_train_images"], seed=seed)
    dm.setup()
    return dm


class Trainee:
    """One model under the harness: its loss, the one optimiser every model gets (Adam; the network at ``lr``, each
    EntropyBottleneck's density at ``entropy_lr``, its quantiles at 1e-3, gradient norm clipped at 1 as CompressAI's
    example does), and how it codes an image in [0, 1] to bytes."""

    stride = 16

    def __init__(self, net: torch.nn.Module, lr: float, entropy_lr: float):
        self.net = net
        groups = optimiser_groups(net)  # as CAL-VAE's own training groups them
        self.clipped = groups["network"] + groups["density"]
        self.opt = torch.optim.Adam([{"params": groups["network"], "lr": lr},
                                     {"params": groups["density"], "lr": entropy_lr},
                                     {"params": groups["quantiles"], "lr": 1e-3}])

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def aux_loss(self) -> torch.Tensor:
        return torch.zeros(())

    def step(self, x: torch.Tensor) -> float:
        self.net.train()
        loss = self.loss(x)
        self.opt.zero_grad()
        (loss + self.aux_loss()).backward()  # the aux loss reaches the quantiles only
        torch.nn.utils.clip_grad_norm_(self.clipped, 1.0)
        self.opt.step()
        return loss.item()

    def code(self, x01: torch.Tensor, bpp: float | None) -> tuple[int, torch.Tensor]:
        """(stream bytes, reconstruction in [0, 1]) of a padded (1, 1, H, W) image; ``bpp``: a target, for
        variable-rate models only."""
        raise NotImplementedError


class CompressAITrainee(Trainee):
    def __init__(self, cls, channels: int, latent: int, lmbda: float, args):
        net = cls(channels, latent)
        net.g_a[0] = conv(1, channels)  # 1 channel in and out, the rest as CompressAI builds it
        net.g_s[-1] = deconv(channels, 1)
        net.entropy_bottleneck = EntropyBottleneck(net.entropy_bottleneck.channels, init_scale=args.entropy_init_scale)
        super().__init__(net, lr=1e-4, entropy_lr=args.entropy_lr)
        self.stride = 64 if cls is ScaleHyperprior else 16
        self.criterion = RateDistortionLoss(lmbda=lmbda)  # λ·255²·MSE + bpp, as CAL-VAE's loss

    def loss(self, x):
        return self.criterion(self.net(x), x)["loss"]

    def aux_loss(self):
        return self.net.aux_loss()

    @torch.no_grad()
    def code(self, x01, bpp):
        self.net.eval()
        self.net.update(force=True)
        out = self.net.compress(x01)
        nbytes = sum(len(s) for streams in out["strings"] for s in streams)
        return nbytes, self.net.decompress(out["strings"], out["shape"])["x_hat"]


class CalVAETrainee(Trainee):
    def __init__(self, channels: int, latent: int, lmbda: float, args):
        net = CalVAE(channels=channels, latent=latent, lmbdas=[lmbda], entropy_init_scale=args.entropy_init_scale)
        super().__init__(net, lr=1e-4, entropy_lr=args.entropy_lr)

    def loss(self, x):
        return self.net.training_loss(x)[0]

    def aux_loss(self):
        return self.net.entropy.loss()

    @torch.no_grad()
    def code(self, x01, bpp):
        self.net.eval()
        self.net.freeze_coding()  # the tables of the weights as they are now
        self.net.prepare_coding()
        data = self.net.stream(self.net.analyse(x01), 0)
        return len(data), self.net.synthesise(data, 0, tuple(x01.shape[-2:]))[None, None]


class RNNConvTrainee(Trainee):
    def __init__(self, channels: int, latent: int, lmbda: float | None, args):
        super().__init__(RNNConv(channels=channels, iteration_loss="log_l1"), lr=5e-4, entropy_lr=args.entropy_lr)

    def loss(self, x):
        return self.net.training_loss(x)[0]

    @torch.no_grad()
    def code(self, x01, bpp):
        self.net.eval()
        state = self.net.analyse(x01)
        budget = bpp * x01[0, 0].numel() / 8
        knob = fit_to_budget(lambda k: self.net.stream_length(state, k), budget, self.net.knob_lo, self.net.knob_hi)
        data = self.net.stream(state, knob)
        return len(data), self.net.synthesise(data, knob, tuple(x01.shape[-2:]))[None, None]


TRAINEES = {"cal_vae": CalVAETrainee, "rnn_conv": RNNConvTrainee,
            "factorized_prior": lambda n, m, lmbda, args: CompressAITrainee(FactorizedPrior, n, m, lmbda, args),
            "scale_hyperprior": lambda n, m, lmbda, args: CompressAITrainee(ScaleHyperprior, n, m, lmbda, args)}


def evaluate(trainee: Trainee, images, bpp: float | None = None) -> dict:
    """Mean PSNR (original units) and bpp from the summed stream bytes over ``images``."""
    total_bytes, total_pixels, psnrs = 0, 0, []
    for image in images:
        a = image.array
        x, mapping = normalise(a)  # as the trained codecs do: [0, 1] by the image's own range, padded to the stride
        h, w = a.shape
        nbytes, x_hat = trainee.code(pad_plane(torch.from_numpy(x), trainee.stride), bpp)
        unit = x_hat[0, 0, :h, :w].clamp(0, 1).double().numpy()
        decoded = restore_dtype(from_unit(unit, mapping["lo"], mapping["hi"]), a.dtype.name)
        total_bytes, total_pixels = total_bytes + nbytes, total_pixels + a.size
        psnrs.append(psnr(a, decoded))
    return {"bpp": 8 * total_bytes / total_pixels, "psnr": float(np.mean(psnrs))}


def train(name: str, lmbda: float | None, args, data, progress_images, progress_bpp: float | None) -> dict:
    torch.manual_seed(args.seed)
    trainee = TRAINEES[name](args.channels, args.latent, lmbda, args)
    loader = iter(data.train_dataloader())
    budget_s, trained_s, steps, losses = 60 * args.minutes, 0.0, 0, []
    marks = [budget_s * (i + 1) / args.progress_points for i in range(args.progress_points)]
    progress = []
    while trained_s < budget_s:
        batch = next(loader)
        t = time.process_time()  # CPU time of this process: the budget holds when other work shares the machine
        losses.append(trainee.step(batch))
        trained_s += time.process_time() - t
        steps += 1
        if progress_images is not None and marks and trained_s >= marks[0]:
            marks.pop(0)
            progress.append({"minutes": trained_s / 60, "steps": steps, **evaluate(trainee, progress_images,
                                                                                   progress_bpp)})
    print(f"{name} λ={lmbda}: {steps} steps in {trained_s / 60:.1f} min ({steps / trained_s:.2f} steps/s), "
          f"last loss {np.mean(losses[-50:]):.3f}", flush=True)
    return {"trainee": trainee, "steps": steps, "steps_per_s": steps / trained_s, "train_minutes": trained_s / 60,
            "final_loss": float(np.mean(losses[-50:])), "progress": progress}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="training minutes per model (per λ for the conv codecs)")
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--lmbdas", nargs="+", type=float, default=[0.0018, 0.0067, 0.025, 0.0932])
    ap.add_argument("--rnn-bpps", nargs="+", type=float, default=[0.125, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--entropy-lr", type=float, default=1e-3, help="every EntropyBottleneck density's learning rate")
    ap.add_argument("--entropy-init-scale", type=float, default=2.0, help="every EntropyBottleneck's init_scale")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress-points", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="codecs2d_budget")
    ap.add_argument("--out-dir", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args(argv)
    command = "python experiments/codecs2d_budget.py " + " ".join(argv if argv is not None else sys.argv[1:])
    shared = shared_data_or_exit("trains and evaluates on it")
    torch.set_num_threads(args.threads)
    data = corpus(args.crop, args.batch, args.seed)
    groups = {"xray": xray_eval_images(shared), "ct": ct_eval_slices(shared)}
    middle = args.lmbdas[len(args.lmbdas) // 2]
    out = Path(args.out_dir)
    settings = {k: v for k, v in vars(args).items() if k not in ("name", "out_dir")}
    result = {"name": args.name, "command": command, "settings": settings, "runs": [],
              "curves": {g: {} for g in groups}}
    for name in args.models:
        for lmbda in ([None] if name == "rnn_conv" else args.lmbdas):
            tracked = name == "rnn_conv" or lmbda == middle
            run = train(name, lmbda, args, data, groups["xray"] if tracked else None, 0.5 if name == "rnn_conv" else None)
            trainee = run.pop("trainee")
            for group, images in groups.items():
                for bpp in (args.rnn_bpps if name == "rnn_conv" else [None]):
                    point = {**evaluate(trainee, images, bpp), "lmbda": lmbda, "target_bpp": bpp,
                             "steps": run["steps"]}
                    result["curves"][group].setdefault(name, []).append(point)
            result["runs"].append({"model": name, "lmbda": lmbda, **run})
            atomic_write_text(out / f"{args.name}.json", json.dumps(result, indent=2, default=float))  # so far
    # context only: JPEG 2000 at the learned models' rates (no training budget)
    for group, images in groups.items():
        bpps = sorted({round(p["bpp"], 3) for c in result["curves"][group].values() for p in c})
        targets = [Target(bpp=b) for b in np.geomspace(max(min(bpps), 0.05), max(bpps), 5)]
        curves = rd_curves(rd_points(images, ["jpeg2000"], targets, desc=group), ["jpeg2000"], targets)
        result["curves"][group]["jpeg2000 (context)"] = curves["jpeg2000"]
        learned = {m: c for m, c in result["curves"][group].items() if m in MODELS}
        result.setdefault("bd_vs_reference", {})[group] = {
            m: bd_metrics(learned[REFERENCE], c) for m, c in learned.items() if m != REFERENCE and REFERENCE in learned}
        for m, bd in result["bd_vs_reference"][group].items():
            print(f"{group:5s} {m:17s} vs {REFERENCE}: BD-PSNR {bd['bd_psnr']}  BD-rate {bd['bd_rate']}  "
                  f"{bd.get('notes', bd.get('note', ''))}")
    result.update({"machine": {**machine(), "torch_threads": torch.get_num_threads(), "gpu": None},
                   "date": datetime.now(UTC).isoformat(timespec="seconds")})
    atomic_write_text(out / f"{args.name}.json", json.dumps(result, indent=2, default=float))
    plot(result, out / f"{args.name}.png")


def plot(result: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = result["curves"]
    fig, axes = plt.subplots(1, len(groups) + 1, figsize=(5.5 * (len(groups) + 1), 4.5))
    for ax, (group, curves) in zip(axes, groups.items()):
        for model, curve in curves.items():
            c = sorted(curve, key=lambda p: p["bpp"])
            ax.plot([p["bpp"] for p in c], [p["psnr"] for p in c], "o--" if "context" in model else "o-", label=model)
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel (stream bytes)")
        ax.set_ylabel("PSNR (dB, original units)")
        ax.set_title(f"{group}: {result['settings']['minutes']:g} CPU-min per model", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    for run in result["runs"]:
        if run["progress"]:
            label = run["model"] + (f" λ={run['lmbda']}" if run["lmbda"] else " 0.5 bpp")
            ax.plot([p["minutes"] for p in run["progress"]], [p["psnr"] for p in run["progress"]], "o-", label=label)
    ax.set_xlabel("training minutes (1 CPU thread)")
    ax.set_ylabel("PSNR on the X-rays (dB)")
    ax.set_title("PSNR vs training time at one rate", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"{result['name']}: learned codecs at equal training budget (same harness, data, crops)")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
