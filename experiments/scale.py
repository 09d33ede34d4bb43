"""Clinical-size benchmark: time, peak memory and file size of `medcomp compress` / `decompress` as the CT grows.

The volumes are the shared abdomen CT series (20 real 512×512 slices, int16 HU, 2 mm) tiled along z to each size
(no larger real scan ships with the project; tiling keeps real texture and HU, and its z-periodicity helps only the
video codecs' inter prediction a little). Each size is written as a NIfTI with the series' geometry; every codec runs
as a separate `medcomp` process under `/usr/bin/time -v`, so peak RSS is the whole process's, Python and torch
included. Learned codecs (``--learned``) use short fits: this measures cost, not quality.

    python experiments/scale.py                          # 75, 150, 300 slices, every classical codec
    python experiments/scale.py --resume                 # keep the cases an earlier run finished
    python experiments/scale.py --learned siren:75,150,300 unicompress:75@256 --fit-steps 20     # recorded
    python experiments/scale.py --resume --learned siren:75,150,300 unicompress:75@256 --fit-steps 20 \
        --redo jpeg jpeg2000 htj2k jpegxl jpegls h264 hevc sperr sz3 zfp     # the classical codecs again (issue 36)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from medcomp.bench import add_device_options, machine, save_figure
from medcomp.data.readers import read_image
from medcomp.data.writers import write_image
from medcomp.utils.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
SERIES = ROOT.parent / "shared" / "data" / "ct" / "abdomen_ct_dicom_series"
CLASSICAL = ["jpeg", "jpeg2000", "htj2k", "jpegxl", "jpegls", "h264", "hevc", "sperr", "sz3", "zfp"]
# Whole-volume encodes per compress before the sampled rate search (commit 9f8c3df, counted on the abdomen CT at
# CR 10 and 64): an 18-step bisection of the whole volume and one encode more for the file written
BEFORE_WHOLE_ENCODES = {"jpeg": "10 (CR 10), 2 (CR 64)", "jpeg2000": 21, "htj2k": 21, "jpegxl": 21,
                        "jpegls": "11 (CR 10), 2 (CR 64)", "h264": "3 (CRF 0 fits), 19", "hevc": "3 (CRF 0 fits), 19"}


def timed(args: list[str]) -> dict:
    """Run ``medcomp ARGS`` under /usr/bin/time -v: exit code, wall seconds, peak RSS (bytes), its JSON output."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "medcomp.cli", *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    out = {"exit": r.returncode, "wall_s": wall, "peak_rss_bytes": int(rss.group(1)) * 1024 if rss else None}
    if r.returncode != 0:
        out["error"] = [line for line in r.stderr.splitlines() if "medcomp" in line or "Error" in line][-3:]
    try:
        out["result"] = json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        pass
    return out


def plain_encode(codec_name: str, src: Path, mcz: Path) -> dict:
    """One encode of the volume by the same library at the knob the compress chose, with no rate search: slices
    on one thread (as a user calling the library slice by slice gets), x264/x265 with their own thread pools, the
    volume codecs on one thread. The floor the rate search is measured against; timed in this process, reading
    excluded."""
    from medcomp.codecs.container import read_container
    from medcomp.codecs.registry import get_codec

    image = read_image(src)
    header = read_container(mcz).header
    codec = get_codec(codec_name)
    codec.threads = 1 if codec_name not in ("h264", "hevc") else None
    knob = header["crf"] if "crf" in header else header["knob"]
    t0 = time.perf_counter()
    codec.encode_at(image, knob)
    return {"wall_s": time.perf_counter() - t0, "knob": knob}


def make_volume(slices: int, folder: Path) -> tuple[Path, int]:
    base = read_image(SERIES)
    reps = -(-slices // base.array.shape[0])
    vol = np.concatenate([base.array] * reps)[:slices]
    path = folder / f"ct_{slices}x512x512.nii.gz"
    write_image(path, base.like(vol))
    return path, int(vol.nbytes)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    codecs = sorted({c["codec"] for c in result["cases"]}, key=lambda c: (c not in CLASSICAL, c))
    for codec in codecs:
        cs = sorted((c for c in result["cases"] if c["codec"] == codec and c["compress"]["exit"] == 0),
                    key=lambda c: c["voxels"])
        if not cs:
            continue
        mvox = [c["voxels"] / 1e6 for c in cs]
        ratio = cs[0].get("ratio", result["settings"]["ratio"])
        codec = codec if ratio == result["settings"]["ratio"] else f"{codec} (CR {ratio:g})"
        axes[0].plot(mvox, [c["compress"]["wall_s"] for c in cs], "o-", label=codec)
        if all("plain_encode" in c for c in cs):  # the floor: one plain encode by the same library
            axes[0].plot(mvox, [c["plain_encode"]["wall_s"] for c in cs], ":", color=axes[0].lines[-1].get_color())
        axes[1].plot(mvox, [c["compress"]["peak_rss_bytes"] / 2**30 for c in cs], "o-", label=f"{codec} compress")
        axes[1].plot(mvox, [c["decompress"]["peak_rss_bytes"] / 2**30 for c in cs if c.get("decompress")][: len(cs)],
                     "x:", color=axes[1].lines[-1].get_color())
        axes[2].plot(mvox, [c["compress"]["result"]["file_bytes"] / 2**20 for c in cs], "o-", label=codec)
    vox = sorted({c["voxels"] for c in result["cases"]})
    axes[1].plot([v / 1e6 for v in vox], [(4 * v * 2 + 1.5 * 2**30) / 2**30 for v in vox], "k--",
                 label="limit: 4 × volume + 1.5 GB")
    for ax, title in zip(axes, ["compress wall time (s); dotted: one plain encode", "peak RSS (GiB): o compress, x decompress",
                                f"file size (MiB), CR {result['settings']['ratio']:g} unless marked"]):
        ax.set_xlabel("voxels (millions; 512×512 slices)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"medcomp at clinical size — {result['machine']['processor']}, {result['machine']['cpus']} CPUs, "
                 f"{result['date'][:10]}")
    save_figure(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", nargs="+", type=int, default=[75, 150, 300])
    p.add_argument("--codecs", nargs="+", default=CLASSICAL)
    p.add_argument("--ratio", type=float, default=10.0)
    p.add_argument("--learned", nargs="*", default=[], metavar="CODEC[:N,N][@RATIO]",
                   help="learned codecs to run (short fits), each at --learned-slices or at the sizes it names, at "
                        "--ratio or at its own ratio (UniCompress decodes one wide SIREN: CR 10 is hours on a CPU)")
    p.add_argument("--learned-slices", nargs="+", type=int, default=[75])
    p.add_argument("--fit-steps", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "scale.json"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--redo", nargs="*", default=[], metavar="CODEC",
                   help="with --resume: run these codecs' cases again (a codec changed), keep the others")
    p.add_argument("--plot-only", action="store_true", help="redraw the plot from the JSON (also a partial one)")
    add_device_options(p, fits=False)
    args = p.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return 0
    if not SERIES.is_dir():
        print(f"scale.py: {SERIES} not found (the shared abdomen CT series)", file=sys.stderr)
        return 2
    out = Path(args.out)
    settings = {"slices": args.slices, "codecs": args.codecs, "ratio": args.ratio, "learned": args.learned,
                "learned_slices": args.learned_slices, "fit_steps": args.fit_steps}
    # --resume keeps every earlier case run with the same codec, size, ratio and fit steps (the case's identity),
    # so a stopped run goes on and codecs can be added without re-running the others.
    earlier = json.loads(out.read_text()) if args.resume and out.exists() else None
    result = {"name": "scale", "command": "python " + " ".join(sys.argv), "settings": settings,
              "source": f"{SERIES.relative_to(ROOT.parent)} (20 real slices) tiled along z",
              "limit": "peak RSS <= 4 x volume bytes + 1.5 GB", "machine": machine(),
              "before_whole_encodes": BEFORE_WHOLE_ENCODES,
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "cases": earlier["cases"] if earlier else []}
    for c in result["cases"]:
        c.setdefault("ratio", earlier["settings"]["ratio"])
        c.setdefault("fit_steps", earlier["settings"]["fit_steps"] if c["codec"] not in CLASSICAL else None)
    jobs = [(c, n) for n in args.slices for c in args.codecs]
    learned, ratios = {}, {c: args.ratio for c in args.codecs}
    for item in args.learned:
        item, _, ratio = item.partition("@")
        name, _, sizes = item.partition(":")
        learned[name] = [int(v) for v in sizes.split(",")] if sizes else args.learned_slices
        ratios[name] = float(ratio) if ratio else args.ratio
    jobs += [(c, n) for c, sizes in learned.items() for n in sizes]

    def identity(codec, n, ratio, steps):
        return codec, n, float(ratio), steps if codec in learned else None

    wanted = {identity(c, n, ratios[c], args.fit_steps) for c, n in jobs}
    result["cases"] = [c for c in result["cases"] if identity(c["codec"], c["slices"], c["ratio"], c["fit_steps"])
                       in wanted]
    result["cases"] = [c for c in result["cases"] if c["codec"] not in args.redo]
    done = {(c["codec"], c["slices"]) for c in result["cases"]}
    with tempfile.TemporaryDirectory(prefix="medcomp-scale-") as tmp:
        tmp = Path(tmp)
        volumes = {}
        for codec, n in jobs:
            if (codec, n) in done:
                continue
            if n not in volumes:
                volumes[n] = make_volume(n, tmp)
            src, nbytes = volumes[n]
            mcz, dec = tmp / f"{codec}_{n}.mcz", tmp / f"{codec}_{n}.nii.gz"
            extra = ["-o", f"model.fit_steps={args.fit_steps}"] if codec in learned else []
            case = {"codec": codec, "slices": n, "shape": [n, 512, 512], "voxels": n * 512 * 512,
                    "volume_bytes": nbytes, "ratio": ratios[codec], "fit_steps": args.fit_steps if codec in learned else None,
                    "load_average_at_start": os.getloadavg()[0], "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "compress": timed(["compress", str(src), str(mcz), "--codec", codec, "--ratio", str(ratios[codec]),
                                       *extra, "--device", args.device])}
            if case["compress"]["exit"] == 0:
                case["decompress"] = timed(["decompress", str(mcz), str(dec), "--device", args.device])
                if codec not in learned:
                    case["plain_encode"] = plain_encode(codec, src, mcz)
                    r = case["compress"].get("result", {})
                    case["compress_over_plain"] = case["compress"]["wall_s"] / case["plain_encode"]["wall_s"]
                    case["encode_over_plain"] = r["encode_s"] / case["plain_encode"]["wall_s"]
                for step in ("compress", "decompress"):
                    case[step]["within_limit"] = case[step]["peak_rss_bytes"] <= 4 * nbytes + 1.5 * 2**30
                mcz.unlink()
                dec.unlink(missing_ok=True)
            r = case["compress"].get("result", {})
            plain = f"plain {case['plain_encode']['wall_s']:6.1f} s, " if "plain_encode" in case else ""
            print(f"{codec:12s} {n:4d} slices: {plain}compress {case['compress']['wall_s']:7.1f} s "
                  f"({r.get('whole_encodes', '?')} whole encodes) "
                  f"{(case['compress']['peak_rss_bytes'] or 0) / 2**30:5.2f} GiB  CR {r.get('ratio_actual', 0):6.2f} "
                  f"PSNR {r.get('psnr', 0):6.2f}  decompress "
                  f"{case.get('decompress', {}).get('wall_s', 0):6.1f} s "
                  f"{(case.get('decompress', {}).get('peak_rss_bytes') or 0) / 2**30:5.2f} GiB", flush=True)
            result["cases"].append(case)
            atomic_write_text(out, json.dumps(result, indent=2))  # after every case: a stopped run can --resume
    result["complete"] = True
    atomic_write_text(out, json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
