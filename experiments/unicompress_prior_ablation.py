"""UniCompress from the paper's random start, from the shipped prior, and from the prior with Δ coding (issue 37).

    python experiments/unicompress_prior_ablation.py --inputs abdomen_ct thorax_cta_a --name unicompress_prior_ablation
    python experiments/unicompress_prior_ablation.py --inputs thorax_cta_b isbi_em --name unicompress_prior_ablation_cta

(run side by side, each pinned to one core with taskset and OMP_NUM_THREADS=1, as the recorded peers were). An
input whose kind has no shipped prior (EM) keeps its recorded rows only: model.prior=auto fits it from the paper start.

The harness is experiments/unicompress_rd.py's (its fit_learned: a probe fit sizes each fit to --budget-s of CPU wall
time; the same inputs, ratios and seeds). The prior rows are fitted here; the paper-start rows and every peer
(per-block SIREN, HEVC, SPERR, JPEG 2000) are read from that benchmark's recorded JSON of the same inputs
(--baseline), which ran the unchanged code path (model.prior=none writes the bytes it wrote before); the JSON names
its source. Per input: RD points at --ratios, mean ± sd over --seeds at --seed-ratios, the mean PSNR gap to HEVC
and to SPERR over --bd-range (what unicompress_rd reports as psnr_gap_vs_*), the dB gained per halving of the ratio,
and the fit seconds the prior start needs to reach the file PSNR the paper start reaches in the whole budget (from
file-PSNR traces at --trace-ratio). Rewritten after each input; --resume runs only the inputs not yet done.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unicompress_rd import INPUTS, fit_learned, load_input, mean_psnr_gap, plot_traces  # noqa: E402

from medcomp.bench import earlier_result, machine, plot_rd, shared_data_or_exit  # noqa: E402
from medcomp.codecs.unicompress_prior import default_prior_path, image_kind, load_prior  # noqa: E402
from medcomp.utils.atomic import atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"unicompress_prior": ["model.prior=auto", "model.delta=false"],
            "unicompress_prior_delta": ["model.prior=auto", "model.delta=true"]}
PEERS = ("unicompress", "siren", "hevc", "sperr", "jpeg2000")  # from the recorded unicompress_rd run
LABELS = {"unicompress": "unicompress (paper start)"}


def recorded_rows(name: str, baselines: list[Path]) -> tuple[list[dict], str]:
    for path in baselines:
        data = json.loads(path.read_text())
        if name in data.get("inputs", {}):
            rows = [dict(p) for p in data["inputs"][name]["points"] if p["codec"] in PEERS]
            return rows, f"{path.relative_to(ROOT)} ({data['command']}; {data['date']})"
    raise SystemExit(f"no recorded unicompress_rd result holds input {name!r}: run experiments/unicompress_rd.py first")


def time_to_psnr(trace: list[dict], target: float) -> float | None:
    """Fit seconds of the first trace point whose file PSNR reaches ``target`` (None: never within the budget)."""
    return next((p["fit_s"] for p in trace if p["psnr"] >= target), None)


def summarise(name: str, rows: list[dict], args) -> dict:
    curves = {}
    for r in rows:
        curves.setdefault(r["codec"], []).append(r)
    lo, hi = args.bd_range
    gaps = {f"psnr_gap_vs_{ref}_cr{lo:g}_{hi:g}": {c: mean_psnr_gap(curves[ref], pts, lo, hi)
                                                  for c, pts in curves.items() if c != ref}
            for ref in ("hevc", "sperr")}
    halving = {c: {f"cr{b['ratio_target']:g}_vs_{a['ratio_target']:g}": b["psnr"] - a["psnr"]
                   for a, b in zip(pts[::-1], pts[-2::-1])}
               for c, pts in ((c, sorted(p, key=lambda q: q["ratio_target"])) for c, p in curves.items())
               if c.startswith("unicompress")}
    by = {(r["codec"], r["ratio_target"]): r for r in rows}
    speed = {}
    paper, prior = by.get(("unicompress", args.trace_ratio)), by.get(("unicompress_prior_delta", args.trace_ratio))
    if paper and prior and "psnr_trace" in prior:
        reach = time_to_psnr(prior["psnr_trace"], paper["psnr"] - 1e-6)
        speed = {"ratio": args.trace_ratio, "paper_start_psnr": paper["psnr"], "paper_start_fit_s": paper["encode_s"],
                 "prior_delta_s_to_that_psnr": reach,
                 "speedup": paper["encode_s"] / reach if reach else None,
                 "prior_delta_final_psnr": prior["psnr"]}
    return {"curves": {c: [{k: p[k] for k in ("ratio_target", "ratio_actual", "bpp", "psnr", "ssim")} for p in pts]
                       for c, pts in curves.items()},
            **gaps, "gain_per_halving_db": halving, "time_to_paper_psnr": speed, "points": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    ap.add_argument("--ratios", nargs="+", type=float, default=[64, 128, 256, 512, 1024])
    ap.add_argument("--budget-s", type=float, default=30.0)
    ap.add_argument("--em-crop", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-ratios", nargs="*", type=float, default=[256])
    ap.add_argument("--trace-ratio", type=float, default=256)
    ap.add_argument("--trace-points", type=int, default=10)
    ap.add_argument("--bd-range", nargs=2, type=float, default=[256, 1024])
    ap.add_argument("--baseline", nargs="+", default=["experiments/results/unicompress_rd.json",
                                                      "experiments/results/unicompress_rd_cta.json"])
    ap.add_argument("--name", default="unicompress_prior_ablation")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    shared_data_or_exit("runs on the unicompress_rd inputs (real CT and EM)")
    torch.set_num_threads(1)  # the recorded peers ran so: the same CPU per fit
    out = ROOT / "experiments" / "results"
    json_path = out / f"{args.name}.json"
    settings = {k: v for k, v in vars(args).items() if k != "resume"}
    earlier = earlier_result(json_path, settings) if args.resume else None
    results, wall = (earlier["inputs"], earlier["wall_s"]) if earlier else ({}, 0.0)
    started = time.perf_counter()
    baselines = [ROOT / b for b in args.baseline]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.inputs:
            if name in results:
                continue
            image, source = load_input(name, args.em_crop)
            kind = image_kind(image)
            rows, recorded = recorded_rows(name, baselines)
            shipped = default_prior_path(kind)
            prior = load_prior(shipped) if shipped.exists() else None  # none: model.prior=auto fits from the paper start
            for variant, extra in VARIANTS.items() if prior else ():
                for ratio in args.ratios:
                    trace = args.trace_points if variant == "unicompress_prior_delta" and ratio == args.trace_ratio else 0
                    row = fit_learned("unicompress", image, ratio, args.budget_s, f"{tmp}/{name}_{variant}_{ratio:g}",
                                      extra, trace_every=trace)
                    row["codec"] = variant
                    if ratio in args.seed_ratios:
                        runs = [row["psnr"]] + [
                            fit_learned("unicompress", image, ratio, args.budget_s,
                                        f"{tmp}/{name}_{variant}_s{s}_{ratio:g}", [*extra, f"seed={42 + s}"])["psnr"]
                            for s in range(1, args.seeds)]
                        row["seed_psnr"] = {"mean": float(np.mean(runs)), "sd": float(np.std(runs, ddof=1)),
                                            "runs": runs, "seeds": [42 + s for s in range(len(runs))]}
                    rows.append(row)
                    print(f"{name} {variant} CR {ratio:g}: {row['psnr']:.2f} dB at CR {row['ratio_actual']:.1f} "
                          f"({row['steps']} steps)", flush=True)
            results[name] = {"input": source, "kind": kind, "peers_from": recorded,
                             "prior": {"id": prior.id, "sha256": prior.sha256} if prior else None,
                             "no_prior_why": None if prior else f"no {kind} prior is shipped (docs/methods.md, UniCompress: "
                                                                "learned prior): model.prior=auto fits from the paper start",
                             **summarise(name, rows, args)}
            complete = all(n in results for n in args.inputs)
            atomic_write_text(json_path, json.dumps(
                {"name": args.name, "command": "python experiments/unicompress_prior_ablation.py " + " ".join(argv or sys.argv[1:]),
                 "settings": settings, "complete": complete, "inputs": results,
                 "wall_s": wall + time.perf_counter() - started, "machine": machine(),
                 "date": datetime.now(UTC).isoformat(timespec="seconds")}, indent=2, default=float))
            groups = {n: {LABELS.get(c, c): pts for c, pts in r["curves"].items()} for n, r in results.items()}
            plot_rd(groups, out / f"{args.name}.png", "UniCompress: paper start vs shipped prior (30 s fits; "
                    "peers from unicompress_rd)", x="bpp", metrics=("psnr",))
            plot_traces({n: {"points": [p for p in r["points"] if "psnr_trace" in p and
                                        p["ratio_target"] == args.trace_ratio and p["codec"] in
                                        ("unicompress", "unicompress_prior_delta")]} for n, r in results.items()},
                        out / f"{args.name}_time.png")


if __name__ == "__main__":
    main()
