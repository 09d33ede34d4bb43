"""Negative-free self-supervised pretraining of the block extractor (seed 001, Appendix E; Barlow Twins).

Two views of each block → extractor → projector → the cross-correlation matrix of the two batches is pushed to
the identity. The views differ by noise and small shifts only: UniCompress needs features that tell blocks apart
by intensity and orientation, so no flips and no intensity jitter. The best checkpoint's extractor is saved as
``<run dir>/extractor_<d>d.pt`` in the format ``model.extractor_ckpt`` loads.
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import torch
from torch import nn

from medcomp.models.contracts import Pretrainer
from medcomp.nn.extractor import BlockEncoder, barlow_twins_loss
from medcomp.nn.pretrained import save_extractor


def augment(x: torch.Tensor, noise: float, shift: int) -> torch.Tensor:
    x = x + noise * torch.randn_like(x)
    dims = tuple(range(2, x.ndim))
    # Python's generator (seeded by seed_everything), not a tensor read back: no tensor op for a host-side draw
    shifts = tuple(random.randint(-shift, shift) for _ in dims)
    return torch.roll(x, shifts, dims)


class FeaturePretrain(Pretrainer, L.LightningModule):
    def __init__(self, dims: int = 2, in_size: int = 32, width: int = 16, out_dim: int = 128, grid: int = 2,
                 projector_dim: int = 256, lr: float = 1e-3, noise: float = 0.05, shift: int = 2,
                 off_diagonal_weight: float = 5e-3, fit_steps: int = 600, save_to: str | None = None, target=None):
        super().__init__()
        self.save_hyperparameters(ignore=["target"])
        self.extractor = BlockEncoder(dims, in_size, width, out_dim, grid)
        self.projector = nn.Sequential(nn.Linear(out_dim * grid**dims, projector_dim), nn.BatchNorm1d(projector_dim),
                                       nn.GELU(), nn.Linear(projector_dim, projector_dim))

    def embed(self, x):
        return self.projector(self.extractor(x).flatten(1))

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        z1 = self.embed(augment(batch, hp.noise, hp.shift))
        z2 = self.embed(augment(batch, hp.noise, hp.shift))
        loss = barlow_twins_loss(z1, z2, hp.off_diagonal_weight)
        self.log("train/barlow_twins", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)

    def save_product(self):
        """Nothing to compress: write the extractor checkpoint instead."""
        out = Path(self.hparams.save_to or Path(self.trainer.default_root_dir) / f"extractor_{self.hparams.dims}d.pt")
        save_extractor(self.extractor, out, {"trained_by": "model=feature_pretrain", "steps": int(self.global_step)})
        return out




