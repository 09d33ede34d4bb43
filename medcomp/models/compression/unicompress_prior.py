"""A learned starting network for UniCompress (issue 37): a SIREN initialisation meta-learned over many images of one
kind, shipped with the package, so that a short fit starts near the answer and the file stores only what the fit
changed (Δ = weights − prior). The prior file and how a .mcz names it: medcomp.codecs.unicompress_prior.

Meta-learning is Reptile (Nichol et al. 2018), first-order: an inner loop fits a copy of the prior to one random crop
of a training image for ``inner_steps`` Adam steps — coordinates in the frame of an image of the kind's usual size
(``frame``), each block of the crop with its own learned code, as in a UniCompress fit — and the outer step moves the
prior toward the fitted weights. Written here rather than taken from a library: learn2learn / higher wrap a
``nn.Module`` per task, while the whole inner loop is a dozen lines on a BatchedSiren.

    python run.py model=unicompress_prior data=prior_ct     # → medcomp/assets/unicompress_prior_ct3d.npz
"""

from __future__ import annotations

import logging
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from medcomp.codecs.unicompress_prior import save_prior
from medcomp.data.kinds import FIXED_RANGES, KINDS
from medcomp.errors import MedcompError
from medcomp.models.contracts import Pretrainer
from medcomp.nn.siren import BatchedSiren, width_scaled_lr

log = logging.getLogger("medcomp")

class UniCompressPrior(Pretrainer, L.LightningModule):
    """Reptile over crops: one training step = one inner fit of a copy of the prior + one outer step.

    ``frame_size``: the padded size of the images this kind is fitted at (UniCompress maps the whole padded image to
    [−1, 1]); a crop sits at a random place of that frame, so the prior sees the coordinates and frequencies a fit
    will. ``block``: UniCompress's block shape; each block of the crop gets a code of ``code_dim`` values, learned in
    the inner loop (the fit's codes come from its codebook; the prior learns to read code inputs)."""

    automatic_optimization = False

    def __init__(self, kind: str = "ct3d", width: int = 64, depth: int = 4, w0: float = 60.0,
                 w0_hidden: float | None = None, code_dim: int = 8, frame_size: list[int] = (128, 128, 128),
                 block: list[int] = (32, 32, 32), inner_steps: int = 50, inner_lr: float = 5e-3,
                 lr_reference_width: int = 20, code_lr: float = 5e-3, code_init: float = 0.5,
                 points: int = 8192, outer_lr: float = 0.1, outer_lr_final: float = 0.01, fit_steps: int = 600,
                 check_every: int = 25, check_crops: int = 4, save_to: str | None = None, target=None):
        super().__init__()
        self.save_hyperparameters(ignore=["target"])
        if kind not in KINDS:
            raise MedcompError(f"model.kind must be one of {list(KINDS)}, got {kind!r}")
        self.net = BatchedSiren(1, len(frame_size) + code_dim, width, depth, 1, w0, w0_hidden)
        self.started = time.process_time()
        # CPU seconds over all sittings and all ranks, counted at every step (a sum over ranks: equal on each)
        self.register_buffer("cpu_s", torch.zeros((), dtype=torch.float64))
        # The prior that fitted the check crops best so far, and that score (the prior exported): Reptile's average
        # of incompatible fits drifts — the output layer shrinks toward a constant while the hidden weights grow
        # (CT, outer lr 0.1: inner-fit PSNR 29 dB at step 20, 19 dB by step 300) — so the kept prior is chosen on
        # crops of the training images, never on an evaluation image.
        self.best = BatchedSiren(1, len(frame_size) + code_dim, width, depth, 1, w0, w0_hidden).requires_grad_(False)
        self.register_buffer("best_psnr", torch.tensor(float("-inf"), dtype=torch.float64))
        self.register_buffer("best_step", torch.tensor(-1))

    def inner_lr_for_width(self) -> float:
        hp = self.hparams  # what the fit will use (UniCompress.siren_lr)
        return width_scaled_lr(hp.inner_lr, hp.lr_reference_width, hp.width)

    def crop_coordinates(self, shape, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(coordinates (V, d) of every voxel of a crop placed at random in the frame, block id (V,) of each)."""
        hp = self.hparams
        axes, ids = [], []
        for n, f, b in zip(shape, hp.frame_size, hp.block):
            step = 2.0 / (f - 1)
            offset = int(torch.randint(max(1, f - n + 1), (1,), generator=generator))
            axes.append(-1.0 + step * (offset + torch.arange(n, dtype=torch.float32)))
            ids.append(torch.arange(n) // b)
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
        counts = [int(i.max()) + 1 for i in ids]
        block_id = torch.zeros(grid.shape[0], dtype=torch.long)
        for i, m in zip(torch.meshgrid(*ids, indexing="ij"), [int(np.prod(counts[k + 1 :])) for k in range(len(counts))]):
            block_id += i.reshape(-1) * m
        return grid, block_id, int(np.prod(counts))

    def inner_fit(self, crop: torch.Tensor, generator: torch.Generator) -> tuple[list[torch.Tensor], float, float]:
        """Fit a copy of the prior to ``crop``; returns (fitted tensors, MSE at the first step, at the last)."""
        hp = self.hparams
        coords, block_id, n_blocks = self.crop_coordinates(crop.shape, generator)
        coords, block_id = coords.to(crop.device), block_id.to(crop.device)
        values = crop.reshape(-1)
        fast = {name: p.detach().clone().requires_grad_(True) for name, p in self.net.named_parameters()}
        codes = (torch.randn(n_blocks, hp.code_dim, generator=generator) * hp.code_init).to(crop.device)
        codes.requires_grad_(True)
        opt = torch.optim.Adam([{"params": list(fast.values()), "lr": self.inner_lr_for_width()},
                                {"params": [codes], "lr": hp.code_lr}])
        first = last = float("nan")
        for k in range(hp.inner_steps):
            pick = torch.randint(values.numel(), (min(hp.points, values.numel()),), generator=generator).to(crop.device)
            x = torch.cat([coords[pick], codes[block_id[pick]]], dim=-1)[None]
            out = torch.func.functional_call(self.net, fast, (x,))  # the prior's network, with the fast weights
            loss = F.mse_loss(out.reshape(-1), values[pick])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if k == 0:
                first = float(loss.detach())
            last = float(loss.detach())
        return [fast[name].detach() for name, _ in self.net.named_parameters()], first, last

    def outer_lr_now(self) -> float:
        hp = self.hparams
        t = min(1.0, self.global_step / max(1, hp.fit_steps))
        return hp.outer_lr + (hp.outer_lr_final - hp.outer_lr) * t

    def training_step(self, batch, batch_idx):
        # resumed runs draw the same; under DDP each rank its own points and codes (rank 0 as a single process)
        generator = torch.Generator().manual_seed(7919 + self.global_step + 1_000_003 * self.global_rank)
        fitted, first, last = self.inner_fit(batch, generator)
        eps = self.outer_lr_now()
        with torch.no_grad():
            for p, q in zip(self.net.parameters(), fitted):
                p.add_(q - p, alpha=eps)
                if self.trainer.world_size > 1:  # the ranks' outer steps averaged: batched Reptile, one prior
                    p.copy_(self.trainer.strategy.reduce(p.clone(), reduce_op="mean"))
        self.optimizers().step()  # a no-op optimiser: it keeps Lightning's step count (max_steps, checkpoints)
        hp = self.hparams
        if hp.check_every and (self.global_step % hp.check_every == 0 or self.global_step >= hp.fit_steps):
            self.keep_if_best()
        self.count_cpu()  # every rank is here at every step: the sum over ranks is safe
        self.log_dict({"train/inner_psnr_first": 10 * math.log10(4.0 / max(first, 1e-12)),
                       "train/inner_psnr_last": 10 * math.log10(4.0 / max(last, 1e-12)), "train/outer_lr": eps},
                      prog_bar=True)

    def check_psnr(self) -> float:
        """Mean PSNR (normalised units) of the inner fit from the current prior on ``check_crops`` fixed crops."""
        crops = self.trainer.datamodule.check_crops(self.hparams.check_crops)
        generator = torch.Generator().manual_seed(12345)
        return float(np.mean([10 * math.log10(4.0 / max(self.inner_fit(c.to(self.device), generator)[2], 1e-12))
                              for c in crops]))

    def on_train_start(self):
        if int(self.best_step) < 0:  # the random start's score first: a prior is kept only if it fits better
            self.keep_if_best()

    def keep_if_best(self) -> None:
        score = self.check_psnr()
        self.log("check/inner_psnr", score)
        if self.global_rank == 0:
            log.info("prior check at outer step %d: inner fit %.2f dB on the check crops (best so far %.2f at step %d)",
                     self.global_step, score, max(score, float(self.best_psnr)),
                     self.global_step if score > float(self.best_psnr) else int(self.best_step))
        if score > float(self.best_psnr):
            self.best.load_state_dict(self.net.state_dict())
            self.best_psnr.fill_(score)
            self.best_step.fill_(self.global_step)

    def configure_optimizers(self):
        # The outer update is written in training_step; an optimiser with lr 0 lets Lightning count the steps.
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def count_cpu(self) -> None:
        now = time.process_time()
        spent = torch.tensor(now - self.started, dtype=torch.float64, device=self.cpu_s.device)
        self.cpu_s += self.trainer.strategy.reduce(spent, reduce_op="sum") if self.trainer.world_size > 1 else spent
        self.started = now

    def save_product(self) -> Path:
        """Write the prior with its record (provenance included)."""
        hp = self.hparams
        out = Path(hp.save_to) if hp.save_to else Path(self.trainer.default_root_dir) / f"unicompress_prior_{hp.kind}.npz"
        cpu_minutes = float(self.cpu_s) / 60
        record = {"id": hp.kind, "width": hp.width, "depth": hp.depth, "in_dim": len(hp.frame_size) + hp.code_dim,
                  "code_dim": hp.code_dim, "w0": hp.w0, "w0_hidden": hp.w0 if hp.w0_hidden is None else hp.w0_hidden,
                  "fixed_range": FIXED_RANGES[hp.kind], "frame": list(hp.frame_size), "block": list(hp.block),
                  "provenance": {"training_files": self.trainer.datamodule.provenance(),
                                 "command": "python " + " ".join(sys.argv), "cpu_minutes": round(cpu_minutes, 2),
                                 "outer_steps": int(self.global_step), "inner_steps": hp.inner_steps,
                                 "date": datetime.now(UTC).strftime("%Y-%m-%d")}}
        record["provenance"].update(check_inner_psnr=round(float(self.best_psnr), 2), kept_step=int(self.best_step))
        sha = save_prior(out, record, self.best if int(self.best_step) >= 0 else self.net)
        log.info("prior %s written to %s (sha256 %s)", hp.kind, out, sha[:12])
        return out
