"""Trained 2-D codecs (CAL-VAE, RNN-Conv, shipped weights) against JPEG, JPEG 2000 and JPEG XL, on data no model
trained on, at the same bpp targets; every bpp from the file's bytes.

    python experiments/codecs2d_rd.py          # (make bench) → experiments/results/codecs2d_rd.json/png

X-ray: every image of ../shared/data/cxr/samples (8-bit PNG/JPEG and the SIIM DICOM), 0.125–1 bpp.
CT: the LIDC chest CT slice (int16 HU, 512²) and the middle axial slice of each thoracic CTA crop (int16, about 120²),
0.125–3 bpp. On those small slices the .mcz header is much of a low-rate file, for every codec alike.
Per codec and target: PSNR / SSIM / MS-SSIM (MS-SSIM only on images of at least 161 px a side) averaged over the
images, bpp from the summed file bytes, encode/decode seconds per image; BD-rate and BD-PSNR against JPEG 2000.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

from medcomp.bench import (
    bd_metrics,
    ct_eval_slices,
    machine,
    plot_rd,
    rd_curves,
    rd_points,
    shared_data_or_exit,
    xray_eval_images,
)
from medcomp.codecs.trained2d import default_weights, load_weights
from medcomp.target import Target
from medcomp.utils.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent

CODECS = ["jpeg", "jpeg2000", "jpegxl", "cal_vae", "rnn_conv"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codecs", nargs="+", default=CODECS)
    ap.add_argument("--xray-bpps", nargs="+", type=float, default=[0.125, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--ct-bpps", nargs="+", type=float, default=[0.125, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0])
    ap.add_argument("--name", default="codecs2d_rd")
    ap.add_argument("--out-dir", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args(argv)
    command = "python experiments/codecs2d_rd.py " + " ".join(argv if argv is not None else sys.argv[1:])
    shared = shared_data_or_exit("runs on its X-rays and CT")
    weights = {}
    for name in ("cal_vae", "rnn_conv"):
        if name in args.codecs:
            path = default_weights(name)
            if path is None:
                sys.exit(f"no shipped weights for {name} (medcomp/assets/{name}.pt)")
            _, sha, meta = load_weights(path)
            weights[name] = {"file": str(path.relative_to(ROOT)), "sha256": sha, "made_by": meta["made_by"],
                             "hparams": meta["hparams"]}
    groups, result_groups = {}, {}
    for group, images, bpps in (("xray", xray_eval_images(shared), args.xray_bpps), ("ct", ct_eval_slices(shared), args.ct_bpps)):
        targets = [Target(bpp=b) for b in bpps]
        points = rd_points(images, args.codecs, targets, desc=group)
        curves = rd_curves(points, args.codecs, targets)
        bd = {c: bd_metrics(curves["jpeg2000"], curves[c]) for c in args.codecs if c != "jpeg2000"}
        result_groups[group] = {"images": [f"{im.name} {list(im.array.shape)} {im.array.dtype.name}" for im in images],
                                "curves": curves, "bd_vs_jpeg2000": bd, "points": points}
        groups[f"{group} ({len(images)} images)"] = curves
        for codec, b in bd.items():
            print(f"{group:5s} {codec:9s} BD-rate {b['bd_rate']}  BD-PSNR {b['bd_psnr']}  {b.get('notes', b.get('note', ''))}")
    result = {"name": args.name, "command": command, "weights": weights, "groups": result_groups,
              "machine": {**machine(), "torch_threads": torch.get_num_threads(), "gpu": None},
              "date": datetime.now(UTC).isoformat(timespec="seconds")}
    out = Path(args.out_dir)
    atomic_write_text(out / f"{args.name}.json", json.dumps(result, indent=2, default=float))
    plot_rd(groups, out / f"{args.name}.png", title=args.name, metrics=("psnr", "ssim", "ms_ssim"))


if __name__ == "__main__":
    main()
