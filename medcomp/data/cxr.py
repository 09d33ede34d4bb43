"""Chest X-ray classification data — Kermany (folder layout) and PneumoniaMNIST (npz) held in memory, a catalogue
dataset's labelled radiographs (ChestX-ray8, VinDr-CXR) read as drawn — in one DataModule, with the two degradations the
diagnosis methods study — low resolution (MLCAK: the same images downsampled) and JPEG (CT-Lite: a quality chosen so
the files meet the ``compression`` group's target, measured from their bytes).

Every batch is a dict: ``image`` (B, 1, S, S) in [0, 1] at full size (the teacher's input), ``lowres`` (B, 1, r, r)
when ``resolution`` < S, ``jpeg`` (B, 1, S, S) when ``degrade_jpeg``, ``label`` (B,) normal 0 / abnormal 1 and
``findings`` (B, K) multi-hot local findings (Kermany: bacterial, viral pneumonia, from the file names).

With ``augment`` the training images are moved a little (rotation, scale, shift, contrast) before the degraded copies
are made from them, so a student's low-resolution or JPEG input is always the same view its teacher sees.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from medcomp.errors import MedcompError
from medcomp.target import Target, fit_to_budget
from medcomp.utils.distributed import eval_sampler, loader_settings, trainer_rank

log = logging.getLogger("medcomp")

KERMANY_URL = "https://data.mendeley.com/datasets/rscbjbr9sj (Kermany et al. 2018, ChestXRay2017.zip)"
MEDMNIST_URL = "https://medmnist.com (pneumoniamnist.npz)"


@dataclass
class Split:
    images: np.ndarray      # (N, H, W) uint8
    labels: np.ndarray      # (N,) int64, 0 normal / 1 abnormal
    findings: np.ndarray    # (N, K) float32 multi-hot
    groups: list[str]       # patient (or image) id per image, for patient-level splits
    jpeg: np.ndarray | None = None  # the images after JPEG compression, when asked for


def _patient_id(stem: str) -> str:
    """Kermany names: person1000_bacteria_2931 → person1000; IM-0115-0001 / NORMAL2-IM-0381-0001 → without the
    last '-NNNN' (the image number of that patient)."""
    m = re.match(r"(person\d+)_", stem)
    return m.group(1) if m else stem.rsplit("-", 1)[0]


def _read_gray(path: Path, size: int) -> np.ndarray:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            im = im.convert("L")
            if im.size != (size, size):
                im = im.resize((size, size), PILImage.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except OSError as exc:
        raise MedcompError(f"{path}: cannot read image ({exc})") from exc


def read_kermany(root: Path, split: str, size: int) -> Split:
    """``root/<split>/{NORMAL,PNEUMONIA}/*.jpeg``; findings (bacterial, viral) from the file names."""
    images, labels, findings, groups = [], [], [], []
    for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
        folder = root / split / cls
        if not folder.is_dir():
            raise MedcompError(f"{folder}: missing; data=kermany expects root/{{train,test}}/{{NORMAL,PNEUMONIA}}/*.jpeg "
                               f"(download: {KERMANY_URL})")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        if not files:
            raise MedcompError(f"{folder}: no images (expected *.jpeg; download: {KERMANY_URL})")
        for p in files:
            images.append(_read_gray(p, size))
            labels.append(label)
            findings.append([float("bacteria" in p.stem), float("virus" in p.stem)])
            groups.append(f"{cls}/{_patient_id(p.stem)}")
    return Split(np.stack(images), np.asarray(labels, np.int64), np.asarray(findings, np.float32), groups)


def read_pneumoniamnist(path: Path, split: str) -> Split:
    """MedMNIST npz: ``<split>_images`` (N, 28, 28) uint8 and ``<split>_labels`` (N, 1)."""
    if not path.is_file():
        raise MedcompError(f"{path}: not found; data=pneumoniamnist expects the MedMNIST npz "
                           f"(keys train_images, train_labels, val_…, test_…; download: {MEDMNIST_URL})")
    with np.load(path) as npz:
        key = f"{split}_images"
        if key not in npz:
            raise MedcompError(f"{path}: no '{key}' array (keys: {', '.join(npz.files)})")
        images, labels = npz[key], npz[f"{split}_labels"].reshape(-1).astype(np.int64)
    return Split(images.astype(np.uint8), labels, labels[:, None].astype(np.float32),
                 [f"{split}/{i}" for i in range(len(labels))])


def patient_split(split: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Cut a validation set from ``split`` by patient (no patient in both), stratified by label."""
    rng = np.random.default_rng(seed)
    val_groups = set()
    for label in np.unique(split.labels):
        groups = sorted({g for g, y in zip(split.groups, split.labels) if y == label})
        rng.shuffle(groups)
        val_groups.update(groups[: max(1, round(len(groups) * val_fraction))])
    in_val = np.array([g in val_groups for g in split.groups])
    return _subset(split, ~in_val), _subset(split, in_val)


def _subset(split: Split, keep: np.ndarray) -> Split:
    idx = np.flatnonzero(keep)
    return Split(split.images[idx], split.labels[idx], split.findings[idx], [split.groups[i] for i in idx])


def jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    import imagecodecs

    return imagecodecs.jpeg8_encode(image, level=int(quality))


def jpeg_quality_for(images: np.ndarray, target: Target) -> tuple[int, float]:
    """The JPEG quality (1…95) whose files meet ``target`` over ``images`` as every codec does (a ceiling: the
    highest quality whose aggregate ratio, original uint8 bytes / JPEG file bytes, is at least the target's).
    Returns (quality, ratio it gives)."""
    orig = images[0].size * len(images)  # uint8: one byte a pixel
    sizes = {}

    def size(q):
        sizes[q] = sum(len(jpeg_bytes(im, q)) for im in images)
        return sizes[q]

    quality = fit_to_budget(size, target.budget_bytes(orig, orig), 1, 95, integer=True)
    return quality, orig / sizes[quality]


def jpeg_degrade(images: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
    """JPEG-compress and decode every image at ``quality``. Returns the decoded images and the total file bytes."""
    import imagecodecs

    out, total = np.empty_like(images), 0
    for i, im in enumerate(images):
        data = jpeg_bytes(im, quality)
        total += len(data)
        out[i] = imagecodecs.jpeg8_decode(data).reshape(im.shape)
    return out, total


class RadiographAugment:
    """Training augmentation for a chest radiograph (1, S, S) in [0, 1]: a small rotation (±10°), scale (±10 %) and
    shift (±6 %), then a gamma change of contrast. No flips: a mirrored chest has its heart on the wrong side.
    MONAI's transforms, seeded, so a seeded run sees the same sequence of views: one stream per DDP rank, and in a
    loader worker one per worker and epoch (a worker is a copy of this object: with one seed every worker, and every
    epoch of non-persistent workers, would replay the same views)."""

    def __init__(self, size: int, seed: int, rank: int = 0):
        from monai.transforms import Compose, RandAdjustContrast, RandAffine

        shift = 0.06 * size
        self.transform = Compose([
            RandAffine(prob=0.9, rotate_range=np.deg2rad(10), scale_range=0.1, translate_range=(shift, shift),
                       padding_mode="border", mode="bilinear"),
            RandAdjustContrast(prob=0.5, gamma=(0.8, 1.25)),
        ])
        self.seed = seed + 1_000_003 * rank
        self.transform.set_random_state(self.seed)
        self._worker_seed = None  # the loader worker seed this object's stream was made for (None: main process)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from monai.utils import convert_to_tensor

        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.seed != self._worker_seed:  # the loader draws worker seeds anew each epoch
            self._worker_seed = worker.seed
            self.transform.set_random_state(int((self.seed * 7919 + worker.seed) % 2**32))

        return convert_to_tensor(self.transform(image), track_meta=False).clamp(0, 1)


def degraded_views(image: torch.Tensor, resolution: int | None, jpeg_quality: int | None) -> dict[str, torch.Tensor]:
    """The students' inputs made from one image (1, S, S) in [0, 1]: ``lowres`` (area downsampling to
    ``resolution``, kept at 8 bits like the stored images) and ``jpeg`` (encoded and decoded at ``jpeg_quality``)."""
    import imagecodecs

    out = {}
    if resolution and resolution < image.shape[-1]:
        low = F.interpolate(image[None], size=(resolution,) * 2, mode="area")[0]
        out["lowres"] = (low * 255).round().clamp(0, 255) / 255
    if jpeg_quality is not None:
        u8 = (image[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        decoded = imagecodecs.jpeg8_decode(jpeg_bytes(u8, jpeg_quality)).reshape(u8.shape)
        out["jpeg"] = torch.from_numpy(decoded)[None].float() / 255
    return out


class _HeldDataset(Dataset):
    """Decoded images held in memory (uint8). With ``augment`` each item is a new view of the image, and its
    low-resolution / JPEG copies are made from that view; without, the precomputed copies are served."""

    def __init__(self, tensors: dict[str, torch.Tensor], augment: RadiographAugment | None = None,
                 resolution: int | None = None, jpeg_quality: int | None = None):
        self.tensors, self.augment = tensors, augment
        self.resolution, self.jpeg_quality = resolution, jpeg_quality

    def __len__(self):
        return len(self.tensors["label"])

    def __getitem__(self, i):
        item = {k: v[i].float() / 255.0 if v.dtype == torch.uint8 else v[i] for k, v in self.tensors.items()}
        if self.augment is not None:
            item["image"] = self.augment(item["image"])
            item.update(degraded_views(item["image"], self.resolution, self.jpeg_quality))
        return item


class HeldSplit:
    """A split decoded into memory once (Kermany, PneumoniaMNIST: small enough); its degraded copies are made once."""

    def __init__(self, split: Split):
        self.split = split

    def jpeg_sample(self, image_size: int) -> np.ndarray:
        return self.split.images[:: max(1, len(self.split.images) // 256)]

    def compress(self, quality: int) -> dict:
        decoded, nbytes = jpeg_degrade(self.split.images, quality)
        self.split.jpeg = decoded
        return {"ratio_actual": self.split.images.nbytes / nbytes, "bpp": 8.0 * nbytes / self.split.images.size}

    def dataset(self, image_size: int, resolution: int | None, jpeg_quality: int | None,
                augment: RadiographAugment | None) -> Dataset:
        split = self.split
        images = torch.from_numpy(split.images).unsqueeze(1)
        tensors = {"image": images, "label": torch.from_numpy(split.labels), "findings": torch.from_numpy(split.findings)}
        if resolution and resolution < image_size:
            # Area downsampling of the same images (what a low-resolution acquisition or storage keeps).
            low = F.interpolate(images.float(), size=(resolution,) * 2, mode="area")
            tensors["lowres"] = low.round().clamp(0, 255).to(torch.uint8)
        if split.jpeg is not None:
            tensors["jpeg"] = torch.from_numpy(split.jpeg).unsqueeze(1)
        if augment is not None:
            return _HeldDataset(tensors, augment, resolution, jpeg_quality)
        return _HeldDataset(tensors)

    def describe(self) -> str:
        s = self.split
        return f"{len(s.labels)} images ({int(s.labels.sum())} abnormal), {len(set(s.groups))} patients"


class _LazyDataset(Dataset):
    """Labelled radiographs read one at a time through MONAI (medcomp.data.catalogue_datamodule's transform chain)."""

    def __init__(self, base, names: list[str], image_size: int, resolution: int | None, jpeg_quality: int | None,
                 augment=None):
        self.base, self.names = base, names
        self.image_size, self.resolution, self.jpeg_quality = image_size, resolution, jpeg_quality
        self.augment = augment  # RadiographAugment for training, applied before the degraded copies

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        from medcomp.data.image import to_unit

        item = self.base[i]
        a = item["image"].float()
        if a.dim() == 3:  # a stored multi-frame radiograph: its first frame
            a = a[0]
        a = to_unit(a, a.min(), a.max())
        if item.get("meta", {}).get("photometric") == "MONOCHROME1":  # DICOM: bright means low values; flip
            a = 1 - a
        image = F.interpolate(a[None, None], size=(self.image_size,) * 2, mode="area")[0]
        if self.augment is not None:
            image = self.augment(image)
        targets = torch.tensor([float(item["targets"][n]) for n in self.names])
        return {"image": image, "label": (targets.max() > 0).long(), "findings": targets,
                **degraded_views(image, self.resolution, self.jpeg_quality)}


class LazySplit:
    """A split read image by image (ChestX-ray8 has 112k images); its degraded copies are made as items are drawn."""

    SAMPLE = 64  # training images the JPEG quality is chosen on

    def __init__(self, items, names: list[str]):
        self.items, self.names = items, names

    def jpeg_sample(self, image_size: int) -> np.ndarray:
        plain = _LazyDataset(self.items, self.names, image_size, None, None)
        return np.stack([(plain[i]["image"][0] * 255).round().byte().numpy() for i in range(min(len(plain), self.SAMPLE))])

    def compress(self, quality: int) -> dict:
        return {}  # each image is JPEG-coded when drawn

    def dataset(self, image_size: int, resolution: int | None, jpeg_quality: int | None,
                augment: RadiographAugment | None) -> Dataset:
        return _LazyDataset(self.items, self.names, image_size, resolution, jpeg_quality, augment)

    def describe(self) -> str:
        return f"{len(self.items)} images, read as drawn"


class RadiographClassificationDataModule(L.LightningDataModule):
    """The classifiers' data: Kermany (``dataset=kermany``, a folder root) and PneumoniaMNIST (``pneumoniamnist``,
    an npz path), decoded into memory; or a catalogue dataset's labelled radiographs (``source``: its
    DatasetDataModule — ChestX-ray8, VinDr-CXR), read as drawn. MCCT label = abnormal; MLCT findings = ``findings``."""

    is_classification = True

    def __init__(self, dataset: str, root: str, findings: list[str], image_size: int = 224,
                 resolution: int | None = None,
                 degrade_jpeg: bool = False, jpeg_ratio: float | None = None, jpeg_bpp: float | None = None,
                 val_fraction: float = 0.1, max_train: int | None = None, batch_size: int = 64, num_workers: int | str = "auto",
                 persistent_workers: bool = False, seed: int = 42, augment: bool = False, pin_memory: bool | str = "auto",
                 source=None):
        super().__init__()
        if source is None and dataset not in ("kermany", "pneumoniamnist"):
            raise MedcompError(f"data.dataset={dataset!r}: expected kermany or pneumoniamnist")
        if resolution is not None and resolution > image_size:
            raise MedcompError(f"data.resolution={resolution} is above data.image_size={image_size}")
        self.dataset, self.root, self.source = dataset, Path(root).expanduser() if root else None, source
        self.image_size, self.resolution = image_size, resolution
        self.degrade_jpeg = degrade_jpeg
        self.jpeg_target = Target(ratio=jpeg_ratio, bpp=None if jpeg_ratio is not None else jpeg_bpp) if degrade_jpeg \
            else None
        self.val_fraction, self.max_train, self.seed, self.augment = val_fraction, max_train, seed, augment
        self.batch_size, self.num_workers, self.persistent_workers = batch_size, num_workers, persistent_workers
        self.pin_memory = pin_memory
        self.splits: dict[str, HeldSplit | LazySplit] = {}
        self.jpeg: dict = {}
        self.jpeg_quality: int | None = None
        self.finding_names = list(findings)  # MLCT label names, in the order of the findings columns

    def _read(self) -> dict[str, HeldSplit | LazySplit]:
        if self.source is not None:
            return {name: LazySplit(items, self.finding_names)
                    for name, items in self.source.labelled_splits(self.finding_names, self.max_train).items()}
        if self.dataset == "kermany":
            train, val = patient_split(read_kermany(self.root, "train", self.image_size), self.val_fraction, self.seed)
            test = read_kermany(self.root, "test", self.image_size)
        else:
            train, val, test = (read_pneumoniamnist(self.root, s) for s in ("train", "val", "test"))
        if self.max_train and len(train.labels) > self.max_train:  # a CPU budget: a seeded, label-stratified subset
            rng = np.random.default_rng(self.seed)
            keep = np.zeros(len(train.labels), bool)
            for label in np.unique(train.labels):
                idx = np.flatnonzero(train.labels == label)
                keep[rng.choice(idx, round(self.max_train * len(idx) / len(train.labels)), replace=False)] = True
            train = _subset(train, keep)
        k = train.findings.shape[1]
        if k != len(self.finding_names):
            raise MedcompError(f"data.findings names {len(self.finding_names)} findings, {self.dataset} has {k}")
        return {"train": HeldSplit(train), "val": HeldSplit(val), "test": HeldSplit(test)}

    def setup(self, stage=None):
        if self.splits:
            return
        self.splits = self._read()
        if self.degrade_jpeg:
            # The quality is chosen on training images only; every split is then compressed at it.
            sample = self.splits["train"].jpeg_sample(self.image_size)
            self.jpeg_quality, ratio = jpeg_quality_for(sample, self.jpeg_target)
            self.jpeg = {"quality": self.jpeg_quality, "ratio_target": self.jpeg_target.ratio or 8.0 / self.jpeg_target.bpp,
                         "ratio_actual_train_sample": ratio, "sample_images": len(sample)}
            for name, split in self.splits.items():
                measured = split.compress(self.jpeg_quality)
                self.jpeg.update({f"{k}_{name}": v for k, v in measured.items()})
            log.info("JPEG quality %d: ratio %.1f on %s (target %.1f)", self.jpeg_quality,
                     self.jpeg.get("ratio_actual_test", ratio), "test" if "ratio_actual_test" in self.jpeg else
                     f"a training sample of {len(sample)}", self.jpeg["ratio_target"])
        for name, split in self.splits.items():
            log.info("%s %s: %s", self.dataset, name, split.describe())

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        augment = RadiographAugment(self.image_size, self.seed, trainer_rank(self.trainer)) \
            if name == "train" and self.augment else None
        data = self.splits[name].dataset(self.image_size, self.resolution, self.jpeg_quality, augment)
        # validation: an unpadded shard per DDP rank, gathered by the model (the test split is scored by rank zero)
        workers = loader_settings(self.trainer, self.num_workers, self.pin_memory)
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle,
                          sampler=eval_sampler(data, self.trainer) if name == "val" else None, **workers,
                          persistent_workers=self.persistent_workers and workers["num_workers"] > 0,
                          generator=torch.Generator().manual_seed(self.seed) if shuffle else None)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)
