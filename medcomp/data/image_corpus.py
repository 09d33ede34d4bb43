"""Data for the trained 2-D codecs: random crops of a training corpus, whole images for evaluation.

Entries of ``train`` / ``eval`` are files, folders (DICOM series or PNG stacks), glob patterns, or
``pydicom-data:NAME`` for the DICOM test images that the pydicom-data package ships. Volumes give their axial
slices (every ``slice_step``-th for training). Every crop is scaled to [0, 1] by the range of the image it came from,
as the codec does when it encodes (so 8-bit JPEGs, 15-bit CR and HU CT train the same network).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medcomp.data.block_datamodules import center_crop, sample_files
from medcomp.data.image import Image, to_unit
from medcomp.data.readers import read_image
from medcomp.errors import MedcompError
from medcomp.utils.distributed import loader_settings

SAMPLE_PREFIX = "pydicom-data:"


def expand(entries: list[str]) -> list[Path]:
    """Files named by paths, globs and ``pydicom-data:NAME``; a pattern that matches nothing is an error."""
    paths: list[Path] = []
    for e in entries or []:
        e = os.path.expanduser(str(e))
        if e.startswith(SAMPLE_PREFIX):
            paths += sample_files([e[len(SAMPLE_PREFIX):]])
        elif any(ch in e for ch in "*?["):
            hits = sorted(glob.glob(e, recursive=True))
            if not hits:
                raise MedcompError(f"{e}: pattern matches no file")
            paths += [Path(h) for h in hits]
        elif not Path(e).exists():
            raise MedcompError(f"{e}: no such file or folder")
        else:
            paths.append(Path(e))
    return paths


class RandomCrops(Dataset):
    """``length`` random ``crop``×``crop`` patches (edge-padded when a slice is smaller), random left-right flips."""

    def __init__(self, slices: list[np.ndarray], ranges: list[tuple[float, float]], crop: int, length: int, seed: int):
        self.slices, self.ranges, self.crop, self.length, self.seed = slices, ranges, crop, length, seed
        areas = np.array([s.size for s in slices], dtype=np.float64)
        self.p = areas / areas.sum()  # bigger images are sampled more often, as pixels would be

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i, torch.initial_seed() % 2**31])
        k = rng.choice(len(self.slices), p=self.p)
        s, (lo, hi) = self.slices[k], self.ranges[k]
        ph, pw = max(0, self.crop - s.shape[0]), max(0, self.crop - s.shape[1])
        if ph or pw:
            s = np.pad(s, ((0, ph), (0, pw)), mode="edge")
        y = rng.integers(0, s.shape[0] - self.crop + 1)
        x = rng.integers(0, s.shape[1] - self.crop + 1)
        patch = to_unit(s[y : y + self.crop, x : x + self.crop].astype(np.float32), lo, hi)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(patch))[None]


class ImagesDataModule(L.LightningDataModule):
    def __init__(self, train: list[str], eval: list[str], crop: int = 128, batch_size: int = 8,
                 steps_per_epoch: int = 200, slice_step: int = 1, max_train_images: int | None = None,
                 eval_crop: int | None = None, seed: int = 0, num_workers: int | str = "auto",
                 pin_memory: bool | str = "auto", persistent_workers: bool = False):
        super().__init__()
        self.loader = {"num_workers": num_workers, "pin_memory": pin_memory, "persistent_workers": persistent_workers}
        self.train_entries, self.eval_entries = list(train or []), list(eval or [])
        self.crop, self.batch_size, self.steps_per_epoch = crop, batch_size, steps_per_epoch
        self.slice_step, self.max_train_images, self.eval_crop, self.seed = slice_step, max_train_images, eval_crop, seed
        self.images: list[Image] = []

    def setup(self, stage=None):
        if self.images:
            return
        rng = np.random.default_rng(self.seed)
        train = []
        for entry in self.train_entries:  # max_train_images caps each entry (a big glob), not the whole list
            files = expand([entry])
            if self.max_train_images and len(files) > self.max_train_images:
                files = [files[i] for i in sorted(rng.choice(len(files), self.max_train_images, replace=False))]
            train += files
        if not train:
            raise MedcompError("data.train lists no training images")
        evaluation = expand(self.eval_entries)
        overlap = {p.resolve() for p in train} & {p.resolve() for p in evaluation}
        if overlap:  # training on an evaluation image would make its numbers meaningless
            raise MedcompError(f"{sorted(overlap)[0]}: listed both for training and for evaluation")
        slices, ranges = [], []
        for p in train:
            a = read_image(p).array
            lo, hi = float(a.min()), float(a.max())
            for s in (a[:: self.slice_step] if a.ndim == 3 else [a]):
                slices.append(s)
                ranges.append((lo, hi))
        self.train_set = RandomCrops(slices, ranges, self.crop, self.steps_per_epoch * self.batch_size, self.seed)
        self.images = [center_crop(read_image(p), self.eval_crop) for p in evaluation]

    def train_dataloader(self):
        # each crop draws from (seed, index, the process's torch seed): a different stream per DDP rank (the sampler's
        # indices), per loader worker and per epoch (the loader seeds its workers anew each epoch)
        workers = loader_settings(self.trainer, self.loader["num_workers"], self.loader["pin_memory"])
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, drop_last=True, **workers,
                          persistent_workers=self.loader["persistent_workers"] and workers["num_workers"] > 0)
