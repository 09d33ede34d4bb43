"""Random crops of a few images, for the trainings that learn from image patches rather than fit one image: the
extractor's Barlow-Twins pretraining (RandomBlocksDataModule, batches of equal blocks) and the UniCompress prior's
meta-learning (PriorCropsDataModule, one crop a step in a kind's fixed intensity window, at several voxel sizes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from medcomp.data.image import to_unit
from medcomp.data.kinds import FIXED_RANGES, KINDS, covering_range
from medcomp.errors import MedcompError


class RandomCrops(torch.utils.data.Dataset):
    """An endless stream of random crops of at most ``crop`` (a smaller image is taken whole along that axis) from
    random images of ``images``, drawn from one seeded generator; ``batch``: a stack of that many (N, 1, *crop)
    crops an item instead of one crop. The index is not used: each DDP rank gets its own seed."""

    def __init__(self, images, crop, length, seed, batch: int | None = None):
        self.images, self.crop, self.length, self.batch = images, tuple(crop), length, batch
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self):
        return self.length

    def one(self) -> torch.Tensor:
        v = self.images[int(torch.randint(len(self.images), (1,), generator=self.gen))]
        size = [min(c, s) for c, s in zip(self.crop, v.shape)]
        start = [int(torch.randint(s - c + 1, (1,), generator=self.gen)) for s, c in zip(v.shape, size)]
        return v[tuple(slice(a, a + c) for a, c in zip(start, size))]

    def __getitem__(self, _):
        if self.batch is None:
            return self.one().contiguous()
        return torch.stack([self.one()[None] for _ in range(self.batch)])


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
            raise MedcompError(f"no image of the data module is {len(self.block)}-D and at least {self.block}")

    def train_dataloader(self):
        # one crop stream per DDP rank: the sampler's index is not used, so a shared seed gave every rank the same
        # batches (twice the work for the gradient of one)
        from medcomp.utils.distributed import trainer_rank

        return torch.utils.data.DataLoader(RandomCrops(self.volumes, self.block, self.steps,
                                                       self.seed + 1_000_003 * trainer_rank(self.trainer),
                                                       batch=self.batch_size),
                                           batch_size=None, num_workers=0)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


class PriorCropsDataModule(L.LightningDataModule):
    """Random crops of the training images of one prior kind: each image normalised by the kind's window
    (:data:`FIXED_RANGES`), kept at every downscale factor of ``scales`` (area averaging: one kind seen at several
    voxel sizes), and cropped to ``crop`` (smaller images are taken whole). ``frame`` and ``block`` say how a fit of
    this kind lays out its coordinates (the model reads them from here, one place per kind)."""

    def __init__(self, kind: str, files: list[dict], crop: list[int], scales: list[list[int]] = ((1, 1, 1),),
                 frame: list[int] | None = None, block: list[int] | None = None, steps_per_epoch: int = 50,
                 seed: int = 0):
        super().__init__()
        if kind not in KINDS:
            raise MedcompError(f"data.kind must be one of {list(KINDS)}, got {kind!r}")
        self.kind, self.files, self.crop = kind, [dict(f) for f in files], tuple(crop)
        self.scales, self.steps, self.seed = [tuple(s) for s in scales], steps_per_epoch, seed
        self.frame, self.block = frame, block
        self.images: list[torch.Tensor] = []

    def resolve(self, entry: dict) -> Path:
        from medcomp.data.block_datamodules import sample_files

        if entry.get("sample"):
            return sample_files([entry["sample"]])[0]
        return Path(str(entry["path"])).expanduser()

    def setup(self, stage=None):
        if self.images:
            return
        from medcomp.data.readers import read_image

        for entry in self.files:
            path = self.resolve(entry)
            image = read_image(path)
            a = image.array
            if a.ndim != len(self.crop):
                raise MedcompError(f"{path}: a {a.ndim}-D image in a {len(self.crop)}-D prior's training list")
            lo, hi = covering_range(a, FIXED_RANGES[self.kind])
            unit = torch.from_numpy(to_unit(a.astype(np.float64), lo, hi, signed=True).astype(np.float32))
            for s in self.scales:
                s = s[-a.ndim :]
                x = unit[None, None]
                if any(f > 1 for f in s):
                    pool = F.avg_pool3d if a.ndim == 3 else F.avg_pool2d
                    x = pool(x, kernel_size=tuple(s), stride=tuple(s))
                if all(n >= 4 for n in x.shape[2:]):
                    self.images.append(x[0, 0].contiguous())
        if not self.images:
            raise MedcompError(f"prior {self.kind}: no training image could be read")

    def provenance(self) -> list[dict]:
        out = []
        for entry in self.files:
            path = self.resolve(entry)
            out.append({"file": entry.get("sample") or str(entry["path"]), "sha256": sha256_of(path),
                        "licence": entry.get("licence", "")})
        return out

    def check_crops(self, n: int) -> list[torch.Tensor]:
        """``n`` fixed crops of the training images (one seed every time) that the meta-learning keeps its best
        prior by."""
        crops = RandomCrops(self.images, self.crop, n, seed=2**31 - 1)
        return [crops[i] for i in range(n)]

    def train_dataloader(self):
        from medcomp.utils.distributed import trainer_rank

        return torch.utils.data.DataLoader(RandomCrops(self.images, self.crop, self.steps,
                                                       self.seed + 1_000_003 * trainer_rank(self.trainer)),
                                           batch_size=None, num_workers=0)
