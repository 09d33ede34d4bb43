"""Trained 2-D codecs on one clinical-size radiograph: rate met, PSNR, and encode + decode seconds per target.

    python experiments/codec2d_speed.py      # → experiments/results/codec2d_speed.json/png

The image: pydicom-data's 15-bit chest CR (RG1), centre-cropped to 1024², the size issue 19 times. Shipped weights,
this machine's threads as they are, ``--repeats`` encodes and decodes per point, the median recorded with every
time beside it (on this VM one encode + decode of the same point varies by ±30 % from run to run); the first call of
each codec warms up on the smallest target and is not recorded. PSNR over the image's own range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from medcomp.bench import add_device_options, machine
from medcomp.codecs.registry import get_codec
from medcomp.data.block_datamodules import center_crop, sample_files
from medcomp.data.readers import read_image
from medcomp.metrics import psnr
from medcomp.target import Target
from medcomp.utils.atomic import atomic_write_text
from medcomp.utils.devices import computing_on, resolve_device

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codecs", nargs="+", default=["rnn_conv", "cal_vae"])
    ap.add_argument("--bpps", nargs="+", type=float, default=[0.125, 0.25, 0.375, 0.5, 0.75, 1.0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="encodes + decodes per point; the median is recorded")
    ap.add_argument("--ckpt", nargs="*", default=[], metavar="CODEC=WEIGHTS", help="other weights than the shipped")
    ap.add_argument("--name", default="codec2d_speed", help="result file name under --out-dir")
    ap.add_argument("--out-dir", default=str(ROOT / "experiments" / "results"))
    add_device_options(ap, fits=False)
    args = ap.parse_args(argv)
    with computing_on(resolve_device(args.device)):
        return measure(args)


def measure(args) -> int:
    weights = dict(item.split("=", 1) for item in args.ckpt)
    image = center_crop(read_image(sample_files(["RG1_UNCR.dcm"])[0]), args.size)
    points = []
    for name in args.codecs:
        codec = get_codec(name, **({"ckpt": weights[name]} if name in weights else {}))
        codec.decode(codec.encode(image, Target(bpp=min(args.bpps))))  # loads the weights, warms the kernels
        for bpp in args.bpps:
            encode_s, decode_s = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                container = codec.encode(image, Target(bpp=bpp))
                t1 = time.perf_counter()
                decoded = codec.decode(container)
                encode_s.append(t1 - t0)
                decode_s.append(time.perf_counter() - t1)
            total = [e + d for e, d in zip(encode_s, decode_s)]
            points.append({"codec": name, "bpp_target": bpp, "bpp": 8 * len(container.to_bytes()) / image.array.size,
                           "psnr": psnr(image.array, decoded), "encode_s": statistics.median(encode_s),
                           "decode_s": statistics.median(decode_s), "total_s": statistics.median(total),
                           "total_s_runs": total})
            print(json.dumps(points[-1]))
    result = {"name": args.name, "command": "python experiments/codec2d_speed.py " + " ".join(sys.argv[1:]),
              "weights": {name: str(codec_weights(name, weights)) for name in args.codecs},
              "image": f"RG1_UNCR.dcm centre {image.array.shape}, {image.array.dtype}", "points": points,
              "machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds")}
    out = Path(args.out_dir)
    atomic_write_text(out / f"{args.name}.json", json.dumps(result, indent=2))
    _plot(points, out / f"{args.name}.png", result["image"])


def codec_weights(name: str, given: dict) -> str:
    from medcomp.codecs.trained2d import default_weights

    return given.get(name) or str(default_weights(name))


def _plot(points, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rd, speed) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(p["codec"] for p in points):
        ps = [p for p in points if p["codec"] == name]
        rd.plot([p["bpp"] for p in ps], [p["psnr"] for p in ps], "o-", label=name)
        speed.plot([p["bpp"] for p in ps], [p["total_s"] for p in ps], "o-", label=name)
    speed.axhline(5, color="grey", ls="--", lw=1, label="5 s (issue 19)")
    rd.set(xlabel="bpp (file)", ylabel="PSNR dB", title=title)
    speed.set(xlabel="bpp (file)", ylabel="encode + decode s (median)", title="2 CPU cores" if len(points) else "")
    for ax in (rd, speed):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
