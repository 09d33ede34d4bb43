"""Blocks per second from disk and from cache (data.cache = none | memory | disk), through the same MONAI transform
chain as data=<dataset>.

    python experiments/data_throughput.py        # → experiments/results/data_throughput.json/png

The data: an MSD-layout folder (Task09_Spleen/dataset.json + imagesTr/labelsTr) made in a temporary directory from
links to the real CT volumes in ../shared/data/ct (abdomen CT, both thoracic CTA crops), so the reader, the
NIfTI decompression and the transforms are the real ones. Each epoch reads every case and cuts it into
--block-size blocks; epoch 1 of a cached dataset fills the cache, later epochs read from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from medcomp.bench import machine, save_figure, shared_data_or_exit
from medcomp.data.blocks import plan_blocks, split_blocks
from medcomp.data.catalogue import list_cases
from medcomp.data.catalogue_datamodule import case_transforms, monai_dataset
from medcomp.utils.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent

VOLUMES = ["abdomen_ct_122x101x112.nii.gz", "thorax_cta_crop_a.nii.gz", "thorax_cta_crop_b.nii.gz"]


def msd_layout(tmp: Path, ct: Path) -> Path:
    task = tmp / "Task09_Spleen"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    training = []
    for i, name in enumerate(VOLUMES):
        for sub in ("imagesTr", "labelsTr"):  # the label is the image again: this measures reading, not labels
            (task / sub / f"spleen_{i}.nii.gz").symlink_to(ct / name)
        training.append({"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"})
    (task / "dataset.json").write_text(json.dumps({"name": "Task09_Spleen", "training": training}))
    return tmp


def blocks_per_second(ds, block, epochs: int) -> list[dict]:
    out = []
    for epoch in range(1, epochs + 1):
        n, t0 = 0, time.perf_counter()
        for i in range(len(ds)):
            a = ds[i]["image"].numpy()
            n += len(split_blocks(a, plan_blocks(a.shape, block)))
        dt = time.perf_counter() - t0
        out.append({"epoch": epoch, "blocks": n, "seconds": dt, "blocks_per_s": n / dt})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block-size", nargs=3, type=int, default=[32, 32, 32])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--spacing", nargs=3, type=float, default=None, help="also resample (mm, z y x)")
    ap.add_argument("--out-dir", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args(argv)
    command = "python experiments/data_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    shared = shared_data_or_exit("reads its real CT volumes")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = msd_layout(Path(tmp) / "msd", shared / "ct")
        cases = list_cases("msd_spleen", root)
        transform = case_transforms(spacing=args.spacing)
        for cache in ("none", "memory", "disk"):
            ds = monai_dataset(cases, transform, cache=cache, cache_dir=str(Path(tmp) / "cache"))
            results[cache] = blocks_per_second(ds, args.block_size, args.epochs)
            print(cache, [round(r["blocks_per_s"], 1) for r in results[cache]])
    out = Path(args.out_dir)
    result = {"name": "data_throughput", "command": command, "volumes": VOLUMES, "block_size": args.block_size,
              "spacing": args.spacing, "results": results, "machine": machine(),
              "date": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_text(out / "data_throughput.json", json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / args.epochs
    for e in range(args.epochs):
        ax.bar([i + e * width for i in range(3)], [results[c][e]["blocks_per_s"] for c in results], width,
               label=f"epoch {e + 1}")
    ax.set_xticks([i + width * (args.epochs - 1) / 2 for i in range(3)], labels=[f"cache={c}" for c in results])
    ax.set(ylabel=f"blocks/s ({'×'.join(map(str, args.block_size))})", yscale="log",
           title="3 real CT volumes → blocks, 1 process")
    ax.legend(fontsize=8)
    save_figure(fig, out / "data_throughput.png", dpi=110)


if __name__ == "__main__":
    main()
