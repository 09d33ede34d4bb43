"""``data=<dataset>``: one config per real dataset (medcomp.data.catalogue lists its cases), served to whichever model
runs. A codec gets the cases of ``data.split`` as images, cut into blocks; a classifier gets labelled batches.

The case → array path is a chain of MONAI dictionary transforms (read in stored units, rescale to HU where the
dataset needs it, optional resampling to ``data.spacing``, optional HU window, the block padding policy), run
through a plain, in-memory (CacheDataset) or on-disk (PersistentDataset) MONAI dataset: ``data.cache``.
"""

from __future__ import annotations

import logging
import re

import lightning as L
import numpy as np
import torch
from monai.transforms import MapTransform

from medcomp.data.block_datamodules import BlockDataModule
from medcomp.data.catalogue import DATASETS, list_cases, split_cases
from medcomp.data.image import Image
from medcomp.data.readers import read_image
from medcomp.errors import MedcompError

log = logging.getLogger("medcomp")


# ── MONAI dictionary transforms ──────────────────────────────────────────────────────────────────────────────────


def _read(ref: str) -> Image:
    """A case's image reference: a path, or ``file.hdf:key`` for a dataset inside an HDF5 file."""
    m = re.match(r"^(.*\.(?:hdf|h5|hdf5)):(.+)$", ref)
    return read_image(m.group(1), key=m.group(2)) if m else read_image(ref)


class LoadCased(MapTransform):
    """Reads ``image`` (and ``label`` when asked) in stored units; applies a dataset's own rescale (CT-RATE's
    metadata) so CT comes out in HU; spacing in mm, (z, y, x)."""

    def __init__(self, load_labels: bool = False):
        super().__init__(keys=["image"])
        self.load_labels = load_labels

    def __call__(self, case: dict) -> dict:
        d = dict(case)
        img = _read(case["image"])
        array = img.array
        if case.get("rescale"):
            slope, intercept = case["rescale"]
            array = (array.astype(np.float64) * slope + intercept)
            array = array.round().astype(np.int16) if float(slope).is_integer() else array.astype(np.float32)
        scale = case.get("spacing_scale", 1.0)
        d["image"] = np.ascontiguousarray(array)
        d["spacing"] = [s * scale for s in img.spacing] if img.spacing else None
        d["meta"] = {**{k: v for k, v in img.meta.items() if isinstance(v, (str, int, float))},
                     "photometric": img.photometric}
        if self.load_labels and case.get("label"):
            d["label"] = np.ascontiguousarray(_read(case["label"]).array)
        return d


class ResampleToSpacingd(MapTransform):
    """Resample ``image`` (linear, back to its dtype) and ``label`` (nearest) to ``spacing`` mm per axis."""

    def __init__(self, spacing: list[float]):
        super().__init__(keys=["image", "label"], allow_missing_keys=True)
        self.target = [float(s) for s in spacing]

    def __call__(self, d: dict) -> dict:
        from monai.transforms import Zoom

        if not d.get("spacing"):
            raise MedcompError(f"{d['image'] if isinstance(d['image'], str) else d['id']}: no spacing to resample from")
        if len(self.target) != len(d["spacing"]):
            raise MedcompError(f"data.spacing has {len(self.target)} axes, {d['id']} has {len(d['spacing'])}")
        zoom = [s / t for s, t in zip(d["spacing"], self.target)]
        out = dict(d)
        for key, mode in (("image", "trilinear" if len(zoom) == 3 else "bilinear"), ("label", "nearest")):
            if key in d and d[key] is not None and not isinstance(d[key], str):
                a = d[key]
                z = Zoom(zoom, mode=mode, keep_size=False, dtype=torch.float32)(torch.from_numpy(a.astype(np.float32))[None])
                z = np.asarray(z[0])
                out[key] = z.round().astype(a.dtype) if np.issubdtype(a.dtype, np.integer) else z.astype(a.dtype)
        out["spacing"] = list(self.target)
        return out


class CropToBlocksd(MapTransform):
    """Padding policy ``crop``: centre-crop each axis to a whole number of blocks (policy ``edge`` leaves the
    array alone; the block layout then pads the last block by repeating the edge)."""

    def __init__(self, block: list[int]):
        super().__init__(keys=["image", "label"], allow_missing_keys=True)
        self.block = [int(b) for b in block]

    def __call__(self, d: dict) -> dict:
        out = dict(d)
        shape = d["image"].shape
        if len(shape) != len(self.block):
            return out
        keep = [max(b, s // b * b) if s >= b else s for s, b in zip(shape, self.block)]
        sl = tuple(slice((s - k) // 2, (s - k) // 2 + k) for s, k in zip(shape, keep))
        for key in ("image", "label"):
            if key in d and not isinstance(d[key], str) and d[key] is not None:
                out[key] = np.ascontiguousarray(d[key][sl])
        return out


class ToTensorsd(MapTransform):
    """Arrays → tensors, so an on-disk cache loads with ``torch.load(weights_only=True)``."""

    def __init__(self):
        super().__init__(keys=["image", "label"], allow_missing_keys=True)

    def __call__(self, d: dict) -> dict:
        out = dict(d)
        for key in ("image", "label"):
            if isinstance(d.get(key), np.ndarray):
                out[key] = torch.from_numpy(d[key])
        return out


def case_transforms(spacing=None, window=None, padding="edge", block=None, load_labels=False):
    from monai.transforms import Compose, ScaleIntensityRanged

    chain = [LoadCased(load_labels)]
    if spacing:
        chain.append(ResampleToSpacingd(spacing))
    if window:
        centre, width = window  # HU window → [0, 1] (analysis inputs; codecs keep stored units: window null)
        chain.append(ScaleIntensityRanged(keys=["image"], a_min=centre - width / 2, a_max=centre + width / 2,
                                          b_min=0.0, b_max=1.0, clip=True))
    if padding == "crop" and block:
        chain.append(CropToBlocksd(block))
    elif padding not in ("edge", "crop"):
        raise MedcompError(f"data.padding={padding!r}: expected edge or crop")
    chain.append(ToTensorsd())
    return Compose(chain)


def monai_dataset(cases: list[dict], transform, cache: str = "none", cache_dir: str | None = None,
                  num_workers: int = 0):
    """``cache``: none (read every time), memory (MONAI CacheDataset), disk (MONAI PersistentDataset)."""
    from monai.data import CacheDataset, Dataset, PersistentDataset

    if cache == "none":
        return Dataset(cases, transform)
    if cache == "memory":
        return CacheDataset(cases, transform, cache_rate=1.0, num_workers=num_workers or None, progress=False)
    if cache == "disk":
        if not cache_dir:
            raise MedcompError("data.cache=disk needs data.cache_dir (outside the dataset folder)")
        return PersistentDataset(cases, transform, cache_dir=cache_dir)
    raise MedcompError(f"data.cache={cache!r}: expected none, memory or disk")


# ── the data config every dataset shares ─────────────────────────────────────────────────────────────────────────


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``"K/N"`` → (K, N) with 0 ≤ K < N; None stays None."""
    if shard in (None, "", "null"):
        return None
    try:
        k, n = (int(v) for v in str(shard).split("/"))
    except ValueError:
        raise MedcompError(f"data.shard={shard!r}: expected K/N, e.g. 0/4") from None
    if not 0 <= k < n:
        raise MedcompError(f"data.shard={shard!r}: K must be in 0..N-1")
    return k, n


def select_cases(cases: list[dict], ids: list[str] | None, shard: tuple[int, int] | None, max_cases: int | None,
                 where: str) -> list[dict]:
    """``ids``: those cases, in that order (an unknown id is an error that lists the known ones); ``shard`` (K, N):
    every N-th case of the id-sorted list from the K-th — stable whatever machine lists the folder, and the N shards
    together hold every case once; neither: the first ``max_cases`` (null: all)."""
    if ids:
        by_id = {c["id"]: c for c in cases}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            known = ", ".join(sorted(by_id)[:20]) + (" …" if len(by_id) > 20 else "")
            raise MedcompError(f"data.cases: {', '.join(unknown)} not in {where} (its cases: {known})")
        return [by_id[i] for i in ids]
    if shard:
        k, n = shard
        return sorted(cases, key=lambda c: c["id"])[k::n]
    return cases[:max_cases] if max_cases else cases


class DatasetDataModule:
    """What ``data=<name>`` instantiates. Not itself a LightningDataModule: ``view_for(model)`` gives the one the
    model needs (codecs: images of ``split`` as blocks; classifiers: labelled 2-D batches)."""

    def __init__(self, name: str, root: str | None, split: str = "test", max_cases: int | None = 1,
                 cases: list[str] | None = None, shard: str | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 42, download: bool = False,
                 spacing: list[float] | None = None, window: list[float] | None = None, padding: str = "edge",
                 cache: str = "none", cache_dir: str | None = None, num_workers: int | str = "auto",
                 persistent_workers: bool = False, pin_memory: bool | str = "auto", load_labels: bool = False, lister_options: dict | None = None,
                 # for codecs (BlockDataModule)
                 block_size: list[int] | None = None, block_size_2d: list[int] = (256, 256),
                 block_size_3d: list[int] = (32, 32, 32), normalise: str = "block", points_per_block: int = 4096,
                 steps_per_epoch: int = 100, sample_on_device: bool | str = "auto",
                 # for classifiers (2-D radiograph datasets)
                 findings: list[str] | None = None, image_size: int = 224, resolution: int | None = None,
                 degrade_jpeg: bool = False, jpeg_ratio: float | None = None, jpeg_bpp: float | None = None,
                 batch_size: int = 32, max_train: int | None = None, augment: bool = False, images=None):
        if name not in DATASETS:
            raise MedcompError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
        self.name, self.root, self.split, self.max_cases = name, root, split, max_cases
        self.case_ids, self.shard = [str(c) for c in cases] if cases else None, parse_shard(shard)
        self.split_args = {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
        self.list_options = {"download": download, **(lister_options or {})}
        self.transform_args = {"spacing": spacing, "window": window, "padding": padding, "load_labels": load_labels}
        # MONAI's caching threads: a number ("auto": its default); the loaders take loader_settings' meaning
        self.cache_args = {"cache": cache, "cache_dir": cache_dir, "num_workers": 0 if num_workers == "auto" else num_workers}
        self.loader_workers, self.persistent_workers, self.pin_memory = num_workers, persistent_workers, pin_memory
        self.codec_args = {"block_size": block_size, "block_size_2d": block_size_2d, "block_size_3d": block_size_3d,
                           "normalise": normalise, "points_per_block": points_per_block,
                           "steps_per_epoch": steps_per_epoch, "seed": seed, "sample_on_device": sample_on_device}
        self.classification_args = {"findings": findings or [], "image_size": image_size, "resolution": resolution,
                                    "degrade_jpeg": degrade_jpeg, "jpeg_ratio": jpeg_ratio, "jpeg_bpp": jpeg_bpp,
                                    "batch_size": batch_size, "max_train": max_train, "augment": augment}
        self._images = images

    def cases(self, split: str | None = None) -> list[dict]:
        listed = list_cases(self.name, self.root, **self.list_options)
        return split_cases(listed, split or self.split, **self.split_args)

    def selected_cases(self) -> list[dict]:
        """The cases of the split this run codes: ``cases`` (ids), or shard K of N of the id-sorted list, or else the
        first ``max_cases``."""
        cases = self.cases()
        if not cases:
            raise MedcompError(f"data={self.name}: no cases in split {self.split!r} under {self.root}")
        return select_cases(cases, self.case_ids, self.shard, self.max_cases, f"data={self.name} split {self.split}")

    def read_selected(self, block: list[int] | None = None) -> list[Image]:
        """The selected cases as images, read through the transform chain (``block``: data.padding=crop's block)."""
        cases = self.selected_cases()
        ds = monai_dataset(cases, case_transforms(block=block, **self.transform_args), **self.cache_args)
        images = []
        for i in range(len(ds)):
            try:
                item = ds[i]
            except RuntimeError as exc:  # MONAI wraps a transform's error ("applying transform …"): say ours, once
                cause = exc.__cause__
                while cause is not None and not isinstance(cause, MedcompError):
                    cause = cause.__cause__
                if cause is None:
                    raise
                raise cause from None
            array = item["image"].numpy() if isinstance(item["image"], torch.Tensor) else np.asarray(item["image"])
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", item["id"])
            images.append(Image(array, tuple(item["spacing"]) if item.get("spacing") else None,
                                {**item.get("meta", {}), "dataset": self.name}, name))
            log.info("%s %s: %s %s, spacing %s", self.name, item["id"], array.shape, array.dtype, item.get("spacing"))
        return images

    def labelled_splits(self, findings: list[str], max_train: int | None) -> dict:
        """train/val/test of a labelled radiograph dataset as MONAI datasets, read as drawn (ChestX-ray8: 112k)."""
        transform = case_transforms(**{**self.transform_args, "padding": "edge"})
        splits = {}
        for split in ("train", "val", "test"):
            cases = self.cases(split)
            if split == "train" and max_train:
                cases = cases[:max_train]
            if not cases:
                raise MedcompError(f"data={self.name}: split {split!r} is empty under {self.root}")
            missing = [n for n in findings if n not in cases[0]["targets"]]
            if missing:
                raise MedcompError(f"data.findings: {missing[0]!r} is not a {self.name} label "
                                   f"(labels: {', '.join(cases[0]['targets'])})")
            splits[split] = monai_dataset(cases, transform, **self.cache_args)
        return splits

    def view_for(self, task: str) -> L.LightningDataModule:
        """The data as ``task`` (run.py's ``task``: compress, classify, pretrain) takes it."""
        if task == "classify":
            return self.classification_view()
        return self.codec_view()

    def codec_view(self) -> BlockDataModule:
        return CasesBlockDataModule(self, images=self._images, **self.codec_args)

    def classification_view(self) -> L.LightningDataModule:
        if DATASETS[self.name].kind != "cxr":
            raise MedcompError(f"data={self.name} has volumes, not labelled radiographs: the classifiers take "
                               f"data=kermany, chestxray8, vindr_cxr or pneumoniamnist")
        from medcomp.data.cxr import RadiographClassificationDataModule

        # Kermany is small enough to hold in memory, decoded once; the others are read as drawn
        return RadiographClassificationDataModule(self.name, self.root, seed=self.split_args["seed"],
                                                  val_fraction=self.split_args["val_fraction"],
                                                  num_workers=self.loader_workers, pin_memory=self.pin_memory,
                                                  persistent_workers=self.persistent_workers,
                                                  source=None if self.name == "kermany" else self,
                                                  **self.classification_args)


class CasesBlockDataModule(BlockDataModule):
    """The selected cases of the split (DatasetDataModule.selected_cases), read through the transform chain, as
    images for a codec."""

    def __init__(self, source: DatasetDataModule, images=None, **block_args):
        super().__init__(images=images, **block_args)
        self.source = source

    def load_images(self) -> list[Image]:
        return self.source.read_selected(self.block_size)
