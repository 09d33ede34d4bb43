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

from medcomp.data.image import to_unit
from medcomp.nn.extractor import BlockEncoder, barlow_twins_loss
from medcomp.nn.pretrained import save_extractor


def augment(x: torch.Tensor, noise: float, shift: int) -> torch.Tensor:
    x = x + noise * torch.randn_like(x)
    dims = tuple(range(2, x.ndim))
    # Python's generator (seeded by seed_everything), not a tensor read back: no tensor op for a host-side draw
    shifts = tuple(random.randint(-shift, shift) for _ in dims)
    return torch.roll(x, shifts, dims)


class FeaturePretrain(L.LightningModule):
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

    def export(self):
        """Nothing to compress: write the extractor checkpoint instead."""
        out = Path(self.hparams.save_to or Path(self.trainer.default_root_dir) / f"extractor_{self.hparams.dims}d.pt")
        save_extractor(self.extractor, out, {"trained_by": "model=feature_pretrain", "steps": int(self.global_step)})
        return out


class RandomBlocksDataModule(L.LightningDataModule):
    """Batches of random crops (``block`` shape) from a list of images, each crop normalised to [−1, 1]."""

    def __init__(self, paths: list[str] | None = None, sample_files: list[str] | None = None,
                 block: list[int] = (32, 32), batch_size: int = 128, steps_per_epoch: int = 100, seed: int = 0,
                 images=None):
        super().__init__()
        self.paths, self.sample_names = list(paths or []), list(sample_files or [])
        self.block, self.batch_size, self.steps, self.seed = tuple(block), batch_size, steps_per_epoch, seed
        self.volumes: list[torch.Tensor] = []

    def setup(self, stage=None):
        if self.volumes:
            return
        from medcomp.data.block_datamodules import sample_files
        from medcomp.data.readers import read_image

        files = [str(p) for p in sample_files(self.sample_names)] + [str(Path(p).expanduser()) for p in self.paths]
        for f in files:
            a = read_image(f).array
            if a.ndim == len(self.block) and all(s >= b for s, b in zip(a.shape, self.block)):
                # Normalised by the whole image's range, as UniCompress normalises the blocks it extracts from.
                lo, hi = float(a.min()), float(a.max())
                self.volumes.append(torch.from_numpy(to_unit(a, lo, hi, signed=True).astype("float32")))
        if not self.volumes:
            from medcomp.errors import MedcompError

            raise MedcompError(f"no image of the data module is {len(self.block)}-D and at least {self.block}")

    def train_dataloader(self):
        # one crop stream per DDP rank: the sampler's index is not used, so a shared seed gave every rank the same
        # batches (twice the work for the gradient of one)
        from medcomp.utils.distributed import trainer_rank

        return torch.utils.data.DataLoader(_Crops(self.volumes, self.block, self.batch_size, self.steps,
                                                  self.seed + 1_000_003 * trainer_rank(self.trainer)),
                                           batch_size=None, num_workers=0)


class _Crops(torch.utils.data.Dataset):
    def __init__(self, volumes, block, batch, length, seed):
        self.volumes, self.block, self.batch, self.length = volumes, block, batch, length
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self):
        return self.length

    def __getitem__(self, _):
        out = []
        for _ in range(self.batch):
            v = self.volumes[int(torch.randint(len(self.volumes), (1,), generator=self.gen))]
            start = [int(torch.randint(s - b + 1, (1,), generator=self.gen)) for s, b in zip(v.shape, self.block)]
            out.append(v[tuple(slice(a, a + b) for a, b in zip(start, self.block))][None])
        return torch.stack(out)


