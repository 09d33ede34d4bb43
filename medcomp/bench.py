"""Rate-distortion benchmark: every codec at every target on every input, BD-rate against a reference."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from medcomp.codecs.registry import get_codec
from medcomp.data.readers import read_image
from medcomp.errors import MedcompError
from medcomp.runtime import machine  # the one machine record of runs and benchmarks
from medcomp.target import Target
from medcomp.utils.atomic import atomic_path, atomic_write_text
from medcomp.utils.outputs import check_output_path

REPO = Path(__file__).resolve().parent.parent


def shared_data() -> Path | None:
    """The project's shared real data (``../shared/data`` beside the checkout, or $MEDCOMP_SHARED_DATA)."""
    p = Path(os.environ.get("MEDCOMP_SHARED_DATA", REPO.parent / "shared" / "data"))
    return p if p.is_dir() else None


def add_device_options(ap, fits: bool = True) -> None:
    """``--device`` (where learned codecs run outside a fit; default cpu, as the recorded results were measured) and,
    for scripts that fit models, ``--trainer`` (Hydra overrides for every fit, e.g. ``--trainer trainer=gpu``)."""
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                    help="where learned codecs encode and decode outside a fit")
    if fits:
        ap.add_argument("--trainer", nargs="*", default=[], metavar="OVERRIDE",
                        help="Hydra overrides for every fit, e.g. trainer=gpu or trainer.precision=bf16-mixed")


def shared_data_or_exit(needs: str) -> Path:
    """The shared data, or exit with one line saying what the benchmark ``needs`` it for."""
    shared = shared_data()
    if shared is None:
        sys.exit(f"no ../shared/data (set MEDCOMP_SHARED_DATA): this benchmark {needs}")
    return shared


def xray_eval_images(shared: Path) -> list:
    """The 2-D codecs' X-ray evaluation set: every image of cxr/samples (8-bit PNG/JPEG and the SIIM DICOM)."""
    return [read_image(p) for p in sorted((shared / "cxr" / "samples").iterdir()) if p.is_file()]


def ct_eval_slices(shared: Path) -> list:
    """The 2-D codecs' CT evaluation set: the LIDC chest CT slice (int16 HU, 512²) and the middle axial slice of
    each thoracic CTA crop."""
    from medcomp.data.image import Image

    images = [read_image(shared / "ct" / "chest_ct_slice.dcm")]
    for crop in ("thorax_cta_crop_a.nii.gz", "thorax_cta_crop_b.nii.gz"):
        vol = read_image(shared / "ct" / crop)
        mid = vol.array.shape[0] // 2
        images.append(Image(np.ascontiguousarray(vol.array[mid]), vol.spacing[1:] if vol.spacing else None,
                            vol.meta, f"{vol.name}_z{mid}"))
    return images


def bd_metrics(ref: list[dict], test: list[dict], min_points: int = 4) -> dict:
    """BD-rate (%) and BD-PSNR (dB) of ``test`` against ``ref`` (bjontegaard package, Akima interpolation; with
    fewer than three points a curve is a straight line between them, allowed by ``min_points`` < 3: a dataset
    report's per-case curves over a sweep's two or three targets).

    Each metric is computed on its own: BD-PSNR integrates PSNR over the shared log-rate range, BD-rate integrates
    log-rate over the shared PSNR range. A metric whose range overlap is below 75 % would be an extrapolation, and
    BD-rate needs a curve whose PSNR rises with rate, so such a metric is ``None`` with the reason in ``notes``.
    """
    import bjontegaard as bd

    if len(ref) < min_points or len(test) < min_points:
        return {"bd_rate": None, "bd_psnr": None, "note": f"BD metrics need at least {min_points} RD points per codec"}
    r = sorted(ref, key=lambda p: p["bpp"])
    t = sorted(test, key=lambda p: p["bpp"])
    args = ([p["bpp"] for p in r], [p["psnr"] for p in r], [p["bpp"] for p in t], [p["psnr"] for p in t])
    overlaps = {"bd_psnr": _overlap(np.log(args[0]), np.log(args[2])), "bd_rate": _overlap(args[1], args[3])}
    result, notes = {"overlap": overlaps}, {}
    for metric, fn in (("bd_rate", bd.bd_rate), ("bd_psnr", bd.bd_psnr)):
        result[metric] = None
        if overlaps[metric] < 0.75:
            axis = "PSNR" if metric == "bd_rate" else "log-rate"
            notes[metric] = f"{axis} ranges overlap {overlaps[metric]:.0%} (< 75 %): not comparable"
            continue
        try:
            result[metric] = float(fn(*args, method="akima", require_matching_points=False, min_overlap=0))
        except (ValueError, AssertionError, ZeroDivisionError) as exc:  # e.g. PSNR not rising with rate
            notes[metric] = f"not computable: {exc}"
    if notes:
        result["notes"] = notes
    return result


def _overlap(a, b) -> float:
    """Overlap of two value ranges, as a fraction of the smaller range."""
    lo, hi = max(min(a), min(b)), min(max(a), max(b))
    span = min(max(a) - min(a), max(b) - min(b))
    return max(0.0, hi - lo) / span if span > 0 else 0.0


def rd_points(images, codecs, targets, desc: str = "rd") -> list[dict]:
    """Every codec at every target on every image: one row each (metrics from the decoded file)."""

    from tqdm import tqdm

    from medcomp.evaluation import encode_and_measure

    points = []
    for codec_name, target, image in tqdm([(c, t, im) for c in codecs for t in targets for im in images], desc=desc,
                                          unit="enc"):
        _, row, _ = encode_and_measure(get_codec(codec_name), image, target, codec_name)
        row["target"] = target.describe()
        points.append(row)
    return points


def rd_curves(points: list[dict], codecs, targets) -> dict:
    """Per codec and target: rate from the summed file bytes, quality and times averaged over the images."""
    curves = {}
    for codec_name in codecs:
        curve = []
        for target in targets:
            rs = [p for p in points if p["codec"] == codec_name and p["target"] == target.describe()]
            file_b, orig_b = sum(r["file_bytes"] for r in rs), sum(r["original_bytes"] for r in rs)
            ms = [r["ms_ssim"] for r in rs if r.get("ms_ssim") is not None]
            curve.append({"target": target.describe(), "ratio_actual": orig_b / file_b,
                          "bpp": 8 * file_b / sum(int(np.prod(r["shape"])) for r in rs),
                          "psnr": float(np.mean([r["psnr"] for r in rs])), "ssim": float(np.mean([r["ssim"] for r in rs])),
                          "ms_ssim": float(np.mean(ms)) if ms else None, "ms_ssim_images": len(ms),
                          "encode_s": float(np.mean([r["encode_s"] for r in rs])),
                          "decode_s": float(np.mean([r["decode_s"] for r in rs]))})
        curves[codec_name] = curve
    return curves


def earlier_result(path: Path, settings: dict) -> dict | None:
    """The JSON an earlier, stopped run of a long benchmark left at ``path``, if it ran with exactly ``settings``
    (so that ``--resume`` can keep what it finished); None when there is none or its settings differ."""
    if not path.exists():
        return None
    earlier = json.loads(path.read_text())
    if earlier.get("settings") != settings:
        print(f"{path.name}: the earlier run had other settings; starting afresh")
        return None
    return earlier


def rd_benchmark(inputs, codecs, ratios=None, bpps=None, reference="jpeg2000", name="rd",
                 out_dir=Path("experiments/results"), key=None, command="", images=None) -> dict:
    """``inputs``: image files; or ``images`` already read (a dataset's case selection, medcomp.cli)."""
    out_dir = Path(out_dir)
    # Before any work, as compress and decompress do: the results are two plain files in out_dir (rewritten on a
    # rerun), never an input (`--name rd --out-dir .` beside rd.png replaced the image with its plot) nor outside it.
    if not name or Path(name).name != name or name in (".", ".."):
        raise MedcompError(f"--name {name!r}: a file name without folders (the results go to --out-dir {out_dir})")
    for suffix in (".json", ".png"):
        check_output_path(out_dir / f"{name}{suffix}", list(inputs), force=True)
    if reference not in codecs:
        raise MedcompError(f"reference codec '{reference}' is not among the benchmarked codecs {codecs}")
    if not ratios and not bpps:
        ratios = [32, 64, 128, 256]
    targets = [Target(ratio=r) for r in ratios] if ratios else [Target(bpp=b) for b in bpps]
    if images is None:
        images = [read_image(p, key=key) for p in inputs]
    points = rd_points(images, codecs, targets)
    curves = rd_curves(points, codecs, targets)
    if reference not in curves:
        raise MedcompError(f"reference codec '{reference}' is not among the benchmarked codecs {codecs}")
    bd = {c: bd_metrics(curves[reference], curves[c]) for c in codecs if c != reference}
    result = {"name": name, "command": command, "inputs": [str(p) for p in inputs] or [im.name for im in images],
              "reference": reference,
              "curves": curves, "bd_vs_reference": bd, "points": points, "machine": machine(),
              "date": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_text(out_dir / f"{name}.json", json.dumps(result, indent=2))
    plot_rd({name: curves}, out_dir / f"{name}.png", title=name)
    return result


X_AXES = {"bpp": "bits per pixel (file bytes)", "ratio_actual": "compression ratio (file bytes)"}
Y_AXES = {"psnr": "PSNR (dB, original units)", "ssim": "SSIM", "ms_ssim": "MS-SSIM"}


def plot_rd(groups: dict[str, dict], path: Path, title: str, x: str = "bpp", metrics=("psnr", "ssim")):
    """One row per data group (e.g. one input), one column per metric, one line per codec; log x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(5 * len(metrics), 4 * len(groups)), squeeze=False)
    for row, (group, curves) in zip(axes, groups.items()):
        for codec, curve in curves.items():
            c = sorted(curve, key=lambda p: p[x])
            for ax, m in zip(row, metrics):
                if all(p.get(m) is not None for p in c):
                    ax.plot([p[x] for p in c], [p[m] for p in c], "o-", label=codec)
        for ax, m in zip(row, metrics):
            ax.set_xlabel(X_AXES.get(x, x))
            ax.set_ylabel(Y_AXES.get(m, m))
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.grid(alpha=0.3)
            if len(groups) > 1:
                ax.set_title(group, fontsize=10)
        row[0].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """A benchmark's plot: laid out, written whole or not at all (atomic), and closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
