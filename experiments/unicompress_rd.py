"""UniCompress against per-block SIREN and the classical codecs, on real CT and EM, at the same ratios.

    python experiments/unicompress_rd.py --budget-s 30   # (make bench) → experiments/results/unicompress_rd.json/png

Every learned point gets the same CPU wall budget for its fit (--budget-s): a short probe fit measures that codec's
seconds per step on that input and ratio, and the fit then runs budget ÷ (s/step) steps (recorded per point), so
a codec with cheaper steps gets more of them. Setup, export and decoding are outside the budget.

Inputs (../shared/data): the abdomen CT, the two thoracic CTA crops and the ISBI 2012 EM stack (its 30 training
slices, centre-cropped in-plane to --em-crop px, default 256, to keep a CPU run to a few hours; 0 keeps 512).
The JSON is rewritten after each input, so a stopped run keeps the inputs it finished ("complete": false); the same
command with --resume runs only the rest (same settings required; wall_s adds up the sittings).
Per input and ratio: UniCompress teacher, per-block SIREN (same wall budget), JPEG 2000, JPEG XL, HEVC (--hevc-preset,
default veryslow: its best practical preset) and the 3-D error-bounded codecs SPERR and SZ3 (what the INR-compression
literature compares with), with PSNR/SSIM against the actual CR of the file and BD-PSNR/BD-rate against HEVC and
against SPERR over all ratios, and the mean PSNR gap to each over --bd-range. At --seed-ratios both learned codecs are fitted with --seeds seeds
(mean ± sd; the curves hold the first seed). UniCompress points also give their export (quantisation) loss: the
PSNR of the same weights at 16 bits minus the file's. At --trace-ratios both learned encoders export and decode
their file every --trace-every steps; the encode-time ratio is the fit time each needs to reach the PSNR both reach
(the lower of the two final PSNRs), measured in this one run on the same blocks. On the first input, at --kd-ratio:
the KD student (from that teacher's checkpoint) against the same-size student without KD; the KD student's curve at
--student-ratios (each from the teacher of its ratio).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import lightning as L
import numpy as np
import torch

from medcomp.bench import (
    add_device_options,
    bd_metrics,
    earlier_result,
    machine,
    plot_rd,
    save_figure,
    shared_data,
    shared_data_or_exit,
)
from medcomp.callbacks import FilePsnrTrace
from medcomp.codecs.registry import decode_container, get_codec
from medcomp.config import compose
from medcomp.data.block_datamodules import center_crop
from medcomp.data.readers import read_image
from medcomp.errors import MedcompError
from medcomp.evaluation import evaluate
from medcomp.fitting import fit
from medcomp.metrics.quality import psnr
from medcomp.models.compression.unicompress import UniCompress
from medcomp.target import Target
from medcomp.utils.atomic import atomic_write_text
from medcomp.utils.devices import computing_on, resolve_device

ROOT = Path(__file__).resolve().parent.parent
REFERENCES = ("hevc", "sperr")  # the BD-rate references: the best video codec and the 3-D wavelet codec

INPUTS = {"abdomen_ct": "ct/abdomen_ct_122x101x112.nii.gz", "thorax_cta_a": "ct/thorax_cta_crop_a.nii.gz",
          "thorax_cta_b": "ct/thorax_cta_crop_b.nii.gz", "isbi_em": "em/isbi2012/train/image"}


def load_input(name: str, em_crop: int):
    src = shared_data() / INPUTS[name]
    image = read_image(src)
    image.name = name
    if name == "isbi_em" and em_crop:
        return center_crop(image, em_crop), f"{src} (centre {em_crop}x{em_crop} px of each slice)"
    return image, str(src)


class StepClock(L.Callback):
    """Wall time at the end of every training step (the probe that sizes a fit to the wall budget)."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter())


FIT_OVERRIDES: list[str] = []  # --trainer: Hydra overrides for every fit (e.g. trainer=gpu)


def learned_cfg(model: str, ratio: float, steps: int, out_dir: str, extra=()):
    return compose([*FIT_OVERRIDES, f"model={model}", "data=volume", "logger=none", "callbacks=none", "baselines=[]",
                    f"compression.ratio={ratio}", "compression.bpp=null", f"compression.name=cr{ratio:g}",
                    f"model.fit_steps={steps}", f"paths.output_dir={out_dir}", "trainer.enable_progress_bar=false",
                    "++save_final_checkpoint=false", *extra])


def steps_for_budget(model: str, image, ratio: float, budget_s: float, out_dir: str, extra=(), probe: int = 32) -> int:
    """Steps that fill ``budget_s`` of fit time: seconds per step from a ``probe``-step fit (its first steps, which
    include one-off warm-up, are left out of the rate). UniCompress steps are dearer before its codes freeze
    (model.freeze_codes_at of the fit) than after: both kinds are timed and weighted by their share of the fit (the
    fit's own time is recorded beside each point as encode_s)."""
    clock = StepClock()
    cfg = learned_cfg(model, ratio, probe, out_dir, extra)
    fit(cfg, images=[image], extra_callbacks=[clock])
    step_s = np.diff(clock.times)  # step_s[k]: step k + 1
    frozen_from = int(cfg.model.get("freeze_codes_at", 0) * probe)  # UniCompress: steps before it are dearer
    dear, cheap = step_s[3 : max(frozen_from - 1, 3)], step_s[max(frozen_from - 1, 3) :]
    share = frozen_from / probe if dear.size else 0.0
    per_step = share * (dear.mean() if dear.size else 0.0) + (1 - share) * cheap.mean()
    return max(probe, int(budget_s / per_step))


def fit_learned(model: str, image, ratio: float, budget_s: float, out_dir: str, extra=(), trace_every: int = 0):
    steps = steps_for_budget(model, image, ratio, budget_s, f"{out_dir}_probe", extra)
    trace = FilePsnrTrace(max(1, steps // trace_every)) if trace_every else None
    cfg = learned_cfg(model, ratio, steps, out_dir, extra)
    fitted = fit(cfg, images=[image], extra_callbacks=[trace] if trace else None)
    model_obj = fitted.model
    container = model_obj.export()[0]
    row, _ = evaluate(image, container, model_obj.as_codec(), fitted.seconds, Target(ratio=ratio), model)
    row["model_info"] = model_obj.describe()
    row["steps"], row["budget_s"] = steps, budget_s
    if isinstance(model_obj, UniCompress):  # what quantising the weights costs
        model_obj.hparams.weight_bits_min = model_obj.hparams.weight_bits_max = 16
        fine = decode_container(model_obj.export()[0])
        row["psnr_16bit_weights"] = psnr(image.array, fine.array)
        row["export_loss_db"] = row["psnr_16bit_weights"] - row["psnr"]
    if trace:
        row["encode_s"] = trace.trace[-1]["fit_s"]  # the fit without the trace's own export/decode time
        row["psnr_trace"] = trace.trace
    return row


def fit_student(experiment: str, label: str, image, ratio: float, budget_s: float, out_dir: str, teacher_ckpt) -> dict:
    row = fit_learned("unicompress_student", image, ratio, budget_s, out_dir,
                      [f"experiment={experiment}", f"model.teacher_ckpt={teacher_ckpt or 'null'}"])
    row["codec"] = label
    return row


def equal_psnr_speed(siren: dict, uni: dict) -> dict:
    """Fit seconds each encoder needs to reach the PSNR both reach, from their file-PSNR traces."""
    target = min(siren["psnr"], uni["psnr"]) - 1e-6  # the last trace point is the reported file
    first = {name: next(p for p in row["psnr_trace"] if p["psnr"] >= target)
             for name, row in (("siren", siren), ("unicompress", uni))}
    return {"psnr_target": target, "siren_s": first["siren"]["fit_s"], "siren_step": first["siren"]["step"],
            "unicompress_s": first["unicompress"]["fit_s"], "unicompress_step": first["unicompress"]["step"],
            "speedup": first["siren"]["fit_s"] / first["unicompress"]["fit_s"],
            "siren_final_psnr": siren["psnr"], "unicompress_final_psnr": uni["psnr"]}


def run_input(name, image, args, tmp, kd: bool) -> tuple[list[dict], list[dict]]:
    """RD points of every codec at every ratio; a codec that cannot meet a ratio is listed in ``unreachable``."""
    rows, unreachable, spread = [], [], {}

    def attempt(codec: str, ratio: float, encode, *a, **kw):
        try:
            row = encode(*a, **kw)
        except MedcompError as exc:  # e.g. per-block SIREN on a small 8-bit stack at CR 1024: no room for a network
            unreachable.append({"codec": codec, "ratio_target": ratio, "why": str(exc)})
            return
        if row["ratio_actual"] < 0.8 * ratio:
            # A per-slice codec at its size floor (JPEG 2000's headers alone exceed 32 B a slice) codes no
            # image data: that point says nothing about the codec's RD curve, so it is listed, not plotted.
            unreachable.append({"codec": codec, "ratio_target": ratio, "ratio_actual": row["ratio_actual"],
                                "psnr": row["psnr"], "why": "smallest file the codec makes is above the budget"})
        else:
            rows.append(row)

    def classical(codec, ratio):
        encoder = get_codec(codec, **({"preset": args.hevc_preset} if codec == "hevc" else {}))
        t0 = time.perf_counter()
        c = encoder.encode(image, Target(ratio=ratio))
        return evaluate(image, c, encoder, time.perf_counter() - t0, Target(ratio=ratio))[0]

    for ratio in args.ratios:
        trace = args.trace_points if ratio in args.trace_ratios else 0
        teacher_dir = Path(tmp) / f"{name}_t{ratio:g}"
        ckpt = teacher_dir / "checkpoints" / "final.ckpt"  # fit() saves the fitted teacher here
        keep = ["++save_final_checkpoint=true"] if kd else []  # the KD students start from it
        attempt("unicompress", ratio, fit_learned, "unicompress", image, ratio, args.budget_s, teacher_dir, keep,
                trace_every=trace)
        attempt("siren", ratio, fit_learned, "siren", image, ratio, args.budget_s, f"{tmp}/{name}_s{ratio:g}",
                trace_every=trace)
        if ratio in args.seed_ratios:  # the same fits with other seeds: is a difference larger than the spread?
            for codec in ("unicompress", "siren"):
                first = [r["psnr"] for r in rows if r["codec"] == codec and r["ratio_target"] == ratio]
                others = [fit_learned(codec, image, ratio, args.budget_s, f"{tmp}/{name}_{codec}_seed{seed}_{ratio:g}",
                                      [f"seed={42 + seed}"])["psnr"] for seed in range(1, args.seeds)] if first else []
                if first:
                    runs = first + others
                    spread[f"{codec}_cr{ratio:g}"] = {"psnr": runs, "mean": float(np.mean(runs)),
                                                      "sd": float(np.std(runs, ddof=1)) if len(runs) > 1 else None,
                                                      "seeds": [42 + k for k in range(len(runs))]}
        for codec in args.classical:
            attempt(codec, ratio, classical, codec, ratio)
        # On the KD input: the KD student (from this ratio's teacher) at every --student-ratios ratio, its curve;
        # at --kd-ratio also the same-size student without KD, which never sees a teacher (the KD gain).
        students = []
        if kd and (ratio in args.student_ratios or ratio == args.kd_ratio) and ckpt.exists():
            students.append(("unicompress_kd", "unicompress_student_kd", ckpt))
        if kd and ratio == args.kd_ratio:
            students.append(("unicompress_nokd", "unicompress_student_nokd", None))
        for exp, label, teacher_ckpt in students:
            attempt(label, ratio, fit_student, exp, label, image, ratio, args.budget_s, f"{tmp}/{name}_{exp}_{ratio:g}",
                    teacher_ckpt)
        print(name, {r["codec"]: round(r["psnr"], 2) for r in rows if r["ratio_target"] == ratio}, flush=True)
    return rows, unreachable, spread


def mean_psnr_gap(ref: list[dict], test: list[dict], lo: float, hi: float) -> float | None:
    """Mean PSNR of ``test`` minus ``ref`` over the ratios [lo, hi], both curves piecewise linear in log(ratio): the
    BD-PSNR idea over a sub-range that holds only 3 of the benchmark's points (the bjontegaard package needs 4)."""
    def line(pts):
        pts = sorted(pts, key=lambda p: p["ratio_actual"])
        return np.log([p["ratio_actual"] for p in pts]), np.array([p["psnr"] for p in pts])

    (xr, yr), (xt, yt) = line(ref), line(test)
    a, b = max(np.log(lo), xr[0], xt[0]), min(np.log(hi), xr[-1], xt[-1])
    if len(xr) < 2 or len(xt) < 2 or b - a < 0.5 * np.log(hi / lo):  # less than half the range covered: no figure
        return None
    grid = np.linspace(a, b, 200)
    return float(np.mean(np.interp(grid, xt, yt) - np.interp(grid, xr, yr)))


def summarise(rows: list[dict], args) -> dict:
    curves = {}
    for r in rows:
        curves.setdefault(r["codec"], []).append({k: r[k] for k in ("ratio_target", "ratio_actual", "bpp", "psnr", "ssim",
                                                                    "encode_s", "decode_s")})
    by = {(r["codec"], r["ratio_target"]): r for r in rows}
    lo, hi = args.bd_range

    def in_range(pts):
        return [p for p in pts if lo <= p["ratio_target"] <= hi]

    against = {}  # each learned and classical curve against the video codec and the 3-D wavelet codec, where run
    for ref in (r for r in REFERENCES if r in curves):
        against[f"bd_vs_{ref}"] = {c: bd_metrics(curves[ref], pts) for c, pts in curves.items()
                                   if c != ref and len(pts) >= 4}
        against[f"psnr_gap_vs_{ref}_cr{lo:g}_{hi:g}"] = {c: mean_psnr_gap(curves[ref], pts, lo, hi)
                                                         for c, pts in curves.items() if c != ref}
    return {
        "curves": curves,
        **against,
        # dB gained by each halving of the ratio (acceptance: ≥ 1 dB each, CR 1024 → 64)
        "gain_per_halving_db": {c: {f"cr{b['ratio_target']:g}_vs_{a['ratio_target']:g}": b["psnr"] - a["psnr"]
                                    for a, b in zip(pts[::-1], pts[-2::-1])}
                                for c, pts in ((c, sorted(p, key=lambda q: q["ratio_target"])) for c, p in curves.items())
                                if c in ("unicompress", "siren")},
        "encode_time_equal_psnr": {f"cr{r:g}": equal_psnr_speed(by[("siren", r)], by[("unicompress", r)])
                                   for r in args.trace_ratios if ("siren", r) in by and ("unicompress", r) in by},
        "points": rows,
    }


def plot_traces(results: dict, path: Path) -> None:
    """File PSNR against fit seconds, one panel per input and traced ratio: would more time still help?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, p["ratio_target"], p) for n, r in results.items() for p in r["points"] if "psnr_trace" in p]
    keys = sorted({(n, ratio) for n, ratio, _ in panels}, key=str)
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), squeeze=False)
    for ax, (n, ratio) in zip(axes[0], keys):
        for _, _, p in (q for q in panels if q[:2] == (n, ratio)):
            ax.plot([t["fit_s"] for t in p["psnr_trace"]], [t["psnr"] for t in p["psnr_trace"]], "o-", label=p["codec"])
        ax.set_title(f"{n} CR {ratio:g}", fontsize=9)
        ax.set_xlabel("fit time (s, CPU)")
        ax.set_ylabel("PSNR of the file (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def kd_gain(rows: list[dict], ratio: float) -> dict:
    by = {r["codec"]: r for r in rows if r["ratio_target"] == ratio}
    s_kd, s_no = by["unicompress_student_kd"], by["unicompress_student_nokd"]
    return {"ratio": ratio, "image": s_kd["image"], "psnr_kd": s_kd["psnr"], "psnr_nokd": s_no["psnr"],
            "gain_db": s_kd["psnr"] - s_no["psnr"], "ratio_actual": s_kd["ratio_actual"],
            "student_param_ratio": s_kd["model_info"].get("param_ratio")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", nargs="+", default=["abdomen_ct", "thorax_cta_b", "isbi_em", "thorax_cta_a"],
                    choices=list(INPUTS))
    ap.add_argument("--em-crop", type=int, default=256)
    ap.add_argument("--ratios", nargs="+", type=float, default=[64, 128, 256, 512, 1024])
    ap.add_argument("--budget-s", type=float, default=30.0, help="fit wall seconds for every learned point")
    ap.add_argument("--trace-ratios", nargs="+", type=float, default=[256, 1024])
    ap.add_argument("--trace-points", type=int, default=6, help="file-PSNR trace points per traced fit")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-ratios", nargs="*", type=float, default=[256])
    ap.add_argument("--bd-range", nargs=2, type=float, default=[256, 1024], help="ratios of the second BD figure")
    ap.add_argument("--hevc-preset", default="veryslow")
    ap.add_argument("--kd-ratio", type=float, default=256)
    ap.add_argument("--student-ratios", nargs="*", type=float, default=[64, 128, 256, 512, 1024],
                    help="ratios of the KD student's curve (first input only)")
    ap.add_argument("--classical", nargs="+", default=["jpeg2000", "jpegxl", "hevc", "sperr", "sz3"])
    ap.add_argument("--name", default="unicompress_rd")
    ap.add_argument("--out-dir", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--resume", action="store_true",
                    help="keep the inputs an earlier, stopped run of the same settings finished; run only the rest")
    add_device_options(ap)
    args = ap.parse_args(argv)
    FIT_OVERRIDES[:] = args.trainer
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
    command = "python experiments/unicompress_rd.py " + " ".join(given)
    shared_data_or_exit("runs on its real CT and EM")
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "out_dir")}
    out = Path(args.out_dir)
    earlier = earlier_result(out / f"{args.name}.json", settings) if args.resume else None
    results, kd = (earlier["inputs"], earlier.get("kd_gain", {})) if earlier else ({}, {})
    t_start = time.perf_counter() - (earlier["wall_s"] if earlier else 0.0)
    with tempfile.TemporaryDirectory() as tmp, computing_on(resolve_device(args.device)):
        for i, name in enumerate(args.inputs):
            if name in results:
                print(f"{name}: kept from the earlier run")
                results[name].update(summarise(results[name]["points"], args))  # BD etc. by the current code
                continue
            t_input = time.perf_counter()
            image, src = load_input(name, args.em_crop)
            rows, unreachable, spread = run_input(name, image, args, tmp, kd=i == 0)
            results[name] = {"input": src, "shape": list(image.array.shape), "dtype": image.array.dtype.name,
                             **summarise(rows, args), "seed_spread": spread, "unreachable": unreachable,
                             "wall_s": time.perf_counter() - t_input}
            if i == 0:
                kd = kd_gain(rows, args.kd_ratio)
            # Written after every input, so a stopped run keeps what it finished ("complete" says whether all did).
            result = {"name": args.name, "command": command, "settings": settings, "budget_s": args.budget_s,
                      "complete": all(n in results for n in args.inputs),
                      "inputs": results, "kd_gain": kd, "wall_s": time.perf_counter() - t_start,
                      "machine": {**machine(), "torch_threads": torch.get_num_threads(), "gpu": None},
                      "date": datetime.now(UTC).isoformat(timespec="seconds")}
            atomic_write_text(out / f"{args.name}.json", json.dumps(result, indent=2, default=float))
            plot_rd({f"{n} {r['shape']} {r['dtype']}": r["curves"] for n, r in results.items()},
                    out / f"{args.name}.png", title=f"{args.name} ({args.budget_s:g} s fit per learned point, CPU)",
                    x="ratio_actual")
            plot_traces(results, out / f"{args.name}_time.png")
    print(json.dumps({n: {k: v for k, v in r.items() if k.startswith("bd_vs_") or k == "encode_time_equal_psnr"}
                      for n, r in results.items()} | {"kd_gain": kd}, indent=2, default=float))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
