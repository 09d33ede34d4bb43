"""LightningDataModules that serve N-D blocks of real images to per-block (INR) codecs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medcomp.data.blocks import BlockLayout, plan_blocks, split_blocks
from medcomp.data.image import Image, from_unit, to_unit
from medcomp.data.readers import read_image
from medcomp.errors import MedcompError
from medcomp.utils.distributed import on_gpu, trainer_rank
from medcomp.utils.memory import slabs

ROWS_VOXELS = 1 << 22  # float64 working set of the normalisation: one group of blocks, not the image


def normalise_blocks(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-block min/max (float32, they go in the file) and values mapped to [−1, 1]."""
    flat = blocks.reshape(blocks.shape[0], -1)
    ranges = np.stack([flat.min(axis=1).astype(np.float64).astype(np.float32),
                       flat.max(axis=1).astype(np.float64).astype(np.float32)], axis=1)
    return normalise_with(flat, ranges), ranges


def normalise_with(flat: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """(n_blocks, voxels) stored values → float32 in [−1, 1], in float64 arithmetic a group of blocks at a time."""
    lo, hi = ranges[:, :1].astype(np.float64), ranges[:, 1:].astype(np.float64)
    out = np.empty(flat.shape, dtype=np.float32)
    for g in slabs(*flat.shape, ROWS_VOXELS):
        out[g] = to_unit(flat[g].astype(np.float64), lo[g], hi[g], signed=True)
    return out


def denormalise(values: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    lo, hi = ranges[:, :1].astype(np.float64), ranges[:, 1:].astype(np.float64)
    return from_unit(values.astype(np.float64), lo, hi, signed=True)


MAX_POINTS_PER_STEP = 1 << 20  # bounds a step's activations (and their gradients) whatever the image's size


log = logging.getLogger("medcomp")


class RandomPointsDataset(Dataset):
    """Each item: for every image, ``points`` random voxel indices per block and their normalised values. An image
    with so many blocks that ``points`` per block would pass ``MAX_POINTS_PER_STEP`` gets fewer points per block
    (a 300×512×512 CT in 32³ blocks: 341 instead of 4096), so that memory does not grow with the image."""

    def __init__(self, blocks: list[torch.Tensor], points: int, length: int, seed: int,
                 max_points: int = MAX_POINTS_PER_STEP):
        self.blocks, self.points, self.length = blocks, points, length
        self.generator = torch.Generator().manual_seed(seed)
        total = sum(b.shape[0] for b in blocks)
        wanted = sum(b.shape[0] * (b.shape[1] if points <= 0 else min(points, b.shape[1])) for b in blocks)
        if wanted > max_points:
            self.points = max(1, max_points // total)
            log.info("%d points per block per step (of %s asked): %d blocks, at most %d points a step",
                     self.points, points, total, max_points)

    def __len__(self):
        return self.length

    def __getitem__(self, _):
        return sample_points(self.blocks, self.points, self.generator)


def sample_points(blocks: list[torch.Tensor], points: int, generator: torch.Generator) -> list:
    """For every image: ``points`` random voxel indices per block (all voxels when ``points`` ≤ 0 or ≥ the block)
    and their values, on the device of ``blocks`` and ``generator``."""
    out = []
    for b in blocks:
        n, v = b.shape
        if points <= 0 or points >= v:
            idx = torch.arange(v, device=b.device).expand(n, v)
        else:
            idx = torch.randint(0, v, (n, points), generator=generator, device=b.device)
        out.append((idx, torch.gather(b, 1, idx)))
    return out


class _Ticks(Dataset):
    """A step counter: with sampling on the device the loader carries nothing but the beat of the steps."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return torch.tensor(i)


class BlockDataModule(L.LightningDataModule):
    """Holds the images, their block layouts and the normalised blocks; subclasses say where images come from."""

    def __init__(self, images: list[Image] | None = None, block_size: list[int] | None = None,
                 block_size_2d: list[int] = (256, 256), block_size_3d: list[int] = (32, 32, 32),
                 normalise: str = "block", points_per_block: int = 4096, steps_per_epoch: int = 100, seed: int = 0,
                 sample_on_device: bool | str = "auto"):
        """``block_size`` fixes the block shape; when it is null, ``block_size_2d``/``_3d`` apply by the image's
        dimensionality. ``normalise``: "block" maps each block's own min/max to [−1, 1] (per-block INRs);
        "image" uses the image's min/max for all its blocks (one network shared by many blocks)."""
        super().__init__()
        if normalise not in ("block", "image"):
            raise MedcompError(f"data.normalise must be 'block' or 'image', got '{normalise}'")
        self._given = images
        self.block_size = tuple(block_size) if block_size else None
        self.default_block = {2: tuple(block_size_2d), 3: tuple(block_size_3d)}
        self.normalise = normalise
        self.points_per_block, self.steps_per_epoch, self.seed = points_per_block, steps_per_epoch, seed
        # Where each step's points are drawn. "auto": on the fit's device when it is a GPU (the blocks live there and
        # a step moves no data; on the host the draw and gather cost ≈ 7.8 ms a step on a 300-slice CT, more than a
        # GPU step), in the loader on a CPU (the bytes of every recorded CPU result). true: on the device always.
        if sample_on_device not in ("auto", True, False):
            raise MedcompError(f"data.sample_on_device must be auto, true or false, got {sample_on_device!r}")
        self.sample_on_device = sample_on_device
        self._device_blocks, self._device_generator = None, None
        self.images: list[Image] = []
        self.layouts: list[BlockLayout] = []
        self.blocks: list[torch.Tensor] = []  # per image (n_blocks, voxels) in [−1, 1]
        self.block_ranges: list[np.ndarray] = []  # per image (n_blocks, 2) float32

    def load_images(self) -> list[Image]:
        raise NotImplementedError

    def setup(self, stage: str | None = None):
        if self.images:
            return
        self.images = list(self._given) if self._given is not None else self.load_images()
        for image in self.images:
            layout = plan_blocks(image.array.shape, self.block_size or self.default_block[image.ndim])
            blocks = split_blocks(image.array, layout)
            if self.normalise == "image":
                lo, hi = np.float32(image.array.min()), np.float32(image.array.max())
                ranges = np.tile(np.array([[lo, hi]], dtype=np.float32), (layout.n_blocks, 1))
                norm = normalise_with(blocks.reshape(layout.n_blocks, -1), ranges)
            else:
                norm, ranges = normalise_blocks(blocks)
            self.layouts.append(layout)
            self.blocks.append(torch.from_numpy(norm))
            self.block_ranges.append(ranges)

    def _samples_on_device(self) -> bool:
        return on_gpu(self.trainer) if self.sample_on_device == "auto" else bool(self.sample_on_device)

    def train_dataloader(self):
        rank = trainer_rank(self.trainer)
        # The model may bound the points a step takes (its widest network's activations); else the default bound.
        cap = getattr(getattr(self.trainer, "lightning_module", None), "max_points_per_step", None)
        self._points = RandomPointsDataset(self.blocks, self.points_per_block, self.steps_per_epoch, self.seed + rank,
                                           max_points=min(cap or MAX_POINTS_PER_STEP, MAX_POINTS_PER_STEP))
        if getattr(self, "_restored_generator", None) is not None:
            self._points.generator.set_state(self._restored_generator)
        if self._samples_on_device():  # the loader only ticks; on_after_batch_transfer draws on the device
            return DataLoader(_Ticks(self.steps_per_epoch), batch_size=None, shuffle=False, num_workers=0)
        return DataLoader(self._points, batch_size=None, shuffle=False, num_workers=0)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not (self.trainer is not None and self.trainer.training and self._samples_on_device()):
            return batch
        device = batch.device
        if self._device_blocks is None or self._device_blocks[0].device != device:
            self._device_blocks = [b.to(device) for b in self.blocks]  # once: the blocks live on the device
            generator = torch.Generator(device=device)
            restored = getattr(self, "_restored_device_generator", None)
            if restored is not None:
                generator.set_state(restored)
            else:
                generator.manual_seed(self.seed + trainer_rank(self.trainer))
            self._device_generator = generator
        return sample_points(self._device_blocks, self._points.points, self._device_generator)

    # The point sampler's state goes into checkpoints, so that a run resumed from an epoch-end checkpoint draws the
    # same points as one that was never interrupted (resume=auto gives the same final metrics).
    def state_dict(self) -> dict:
        points, device_generator = getattr(self, "_points", None), self._device_generator
        state = {"generator": points.generator.get_state()} if points is not None else {}
        if device_generator is not None:
            state["device_generator"] = device_generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self._restored_generator = state.get("generator")
        self._restored_device_generator = state.get("device_generator")


def sample_files(names: list[str]) -> list[Path]:
    """Real DICOM images shipped by the ``pydicom-data`` package (WG04 compression test set)."""
    from pydicom.data import get_testdata_file

    paths = []
    for n in names:
        p = get_testdata_file(n)
        if p is None:
            raise MedcompError(f"sample image '{n}' not found: install pydicom-data (make install)")
        paths.append(Path(p))
    return paths


def center_crop(image: Image, size: int | None) -> Image:
    if not size:
        return image
    a = image.array
    sl = tuple(slice(max(0, (s - size) // 2), max(0, (s - size) // 2) + min(size, s)) for s in a.shape)
    return Image(np.ascontiguousarray(a[sl]), image.spacing, dict(image.meta), image.name)


class SampleDataModule(BlockDataModule):
    """The embedded default: centre crops of real CT, MR and CR images from pydicom-data, as 2-D blocks."""

    def __init__(self, files: list[str], crop: int | None = 512, **kwargs):
        super().__init__(**kwargs)
        self.files, self.crop = list(files), crop

    def load_images(self):
        return [center_crop(read_image(p), self.crop) for p in sample_files(self.files)]


class VolumeDataModule(BlockDataModule):
    """Any readable file or DICOM series folder (``data.path``), cut into blocks of ``data.block_size``."""

    def __init__(self, path: str | None = None, key: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.path, self.key = path, key

    def load_images(self):
        if not self.path:
            raise MedcompError("data=volume needs data.path=FILE_OR_DIR")
        return [read_image(os.path.expanduser(str(self.path)), key=self.key)]
