"""Diagnosis from degraded chest X-rays: how much AUROC low resolution and JPEG cost, and how much distillation wins
back, over several seeds, with paired tests. Every run is a `python run.py …` (its command is in the JSON) on
../shared/data/cxr/kermany224, with model selection on a patient-level val split cut from train; test is touched
once per run, for the recorded number.

    python experiments/analysis_auroc.py            # (make bench) → experiments/results/analysis_auroc.json/png
    python experiments/analysis_auroc.py --resume   # go on where a stopped run left off (same settings)

Rows (each trained once per seed; a student distils from the teacher of its own seed)
- MLCAK: the R-Ti hybrid teacher at 224 px (all training images); ViT-Ti students at 112, 56 and 28 px without KD
  and with KD from that teacher; the MLCT (multi-label) head on Kermany's bacterial / viral findings; one MLCAK model
  on PneumoniaMNIST (28 px) when ../shared/data has it.
- CT-Lite: its teacher on uncompressed images; students on JPEG input at three levels (compression=cr10/cr20/cr40,
  the file ratio measured), with the dense and the BTT (SFP) head, with and without FAST from that teacher.
Per row: mean ± sd over seeds of test AUROC (normal vs pneumonia) and of the findings AUROC, trainable parameters,
fit seconds. Comparisons (KD vs no KD per resolution, FAST vs none, BTT vs dense, uncompressed vs JPEG): the
difference of mean AUROC with a paired bootstrap over the test images (p-value, 95 % interval) and a paired t-test
over seeds. Runs go two at a time (--jobs), one thread each; every finished run is kept, and --resume also adopts
runs whose directories already hold a finished run of the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from medcomp.bench import earlier_result, machine, save_figure, shared_data
from medcomp.utils.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


# ── what runs ─────────────────────────────────────────────────────────────────────────────────────────────────────


def plan(args) -> list[dict]:
    """The rows, teachers first. ``needs``: the teacher row whose same-seed checkpoint a row distils from."""
    kermany = ["data=kermany", f"data.root={args.root}"]
    student_data = [*kermany, *([f"data.max_train={args.max_train}"] if args.max_train else [])]
    rows = [{"key": "mlcak_teacher_224", "method": "mlcak", "resolution": 224, "kd": False, "needs": None,
             "overrides": ["model=mlcak", f"model.epochs={args.teacher_epochs}", *kermany]}]
    for res in args.resolutions:
        for kd in (False, True):
            over = [f"experiment={'mlcak_kd' if kd else 'mlcak_student'}", f"data.resolution={res}",
                    f"model.epochs={args.epochs}", *student_data]
            if kd:
                over.append("model.teacher_ckpt={teacher}")
            rows.append({"key": f"mlcak_student_{res}{'_kd' if kd else ''}", "method": "mlcak", "resolution": res,
                         "kd": kd, "needs": "mlcak_teacher_224" if kd else None, "overrides": over})
    if args.pneumoniamnist:
        # The 28-px MedMNIST copy: the student's plain ViT-Ti (7 × 7 grid of 4-px patches) on the full image.
        rows.append({"key": "mlcak_pneumoniamnist_28", "method": "mlcak", "resolution": 28, "kd": False,
                     "needs": None, "overrides": ["model=mlcak", "data=pneumoniamnist", f"data.root={args.pneumoniamnist}",
                                                  "model.arch=vit_tiny_patch16_224", "model.patch_size=4",
                                                  "model.depth=6", f"model.epochs={args.epochs}"]})
    rows.append({"key": "ct_lite_teacher", "method": "ct_lite", "jpeg": None, "head": "btt", "fast": False,
                 "needs": None, "overrides": ["experiment=ct_lite_teacher", f"model.epochs={args.epochs}",
                                              *student_data]})
    for level in args.jpeg_levels:
        for head in ("dense", "btt"):
            for fast in (False, True):
                over = ["experiment=ct_lite_fast" if fast else "model=ct_lite", f"compression={level}",
                        f"model.head={head}", f"model.epochs={args.epochs}", *student_data]
                if fast:
                    over.append("model.teacher_ckpt={teacher}")
                rows.append({"key": f"ct_lite_{level}_{head}{'_fast' if fast else ''}", "method": "ct_lite",
                             "jpeg": level, "head": head, "fast": fast, "needs": "ct_lite_teacher" if fast else None,
                             "overrides": over})
    return rows


def comparisons(args) -> list[tuple[str, str, str]]:
    """(name, A, B): the differences the issue asks about, each tested as A − B on the same test images."""
    out = [(f"kd_vs_nokd_{r}", f"mlcak_student_{r}_kd", f"mlcak_student_{r}") for r in args.resolutions]
    for level in args.jpeg_levels:
        out.append((f"jpeg_gap_{level}", f"ct_lite_{level}_btt", "ct_lite_teacher"))  # same model, JPEG vs not
        for head in ("dense", "btt"):
            out.append((f"fast_vs_none_{level}_{head}", f"ct_lite_{level}_{head}_fast", f"ct_lite_{level}_{head}"))
        for fast in ("", "_fast"):
            out.append((f"btt_vs_dense_{level}{fast}", f"ct_lite_{level}_btt{fast}", f"ct_lite_{level}_dense{fast}"))
    return out


def run_id(key: str, seed: int) -> str:
    return f"{key}_s{seed}"


def command_for(row: dict, seed: int, args, runs: dict) -> list[str]:
    teacher = runs[run_id(row["needs"], seed)]["checkpoint"] if row["needs"] else None
    return [*(o.replace("{teacher}", teacher or "") for o in row["overrides"]),
            f"data.batch_size={args.batch_size}", f"seed={seed}", "logger=csv",
            f"hydra.run.dir={Path(args.work_dir) / run_id(row['key'], seed)}", *args.extra]


def collect(row: dict, seed: int, overrides: list[str], run_dir: Path, wall_s: float | None) -> dict:
    """One finished run's figures, from its metrics.json and test_predictions.npz."""
    m = json.loads((run_dir / "metrics.json").read_text())
    test = m["summary"]["test"]
    out = {k: v for k, v in row.items() if k not in ("overrides", "needs")}
    out.update(seed=seed, command="python run.py " + " ".join(overrides), auroc=test["auroc"], ci_low=test["ci_low"],
               ci_high=test["ci_high"], auroc_findings=test["auroc_findings"], test_images=test["images"],
               val_auroc=m["summary"]["val"]["auroc"], best_epoch=m["summary"]["val"]["epoch"],
               parameters=m["model_info"]["parameters"], fit_s=m["fit_s"], wall_s=wall_s,
               torch_threads=m["machine"].get("torch_threads"), model_info=m["model_info"],
               checkpoint=str(run_dir / "checkpoints" / "final.ckpt"),
               predictions=str(run_dir / "test_predictions.npz"))
    with np.load(run_dir / "test_predictions.npz") as p:
        out["auroc_per_finding"] = per_finding_auroc(p["mlct"], p["findings"])
    if m.get("jpeg"):
        out.update(jpeg_quality=m["jpeg"]["quality"], ratio_target=m["jpeg"]["ratio_target"],
                   ratio_actual=m["jpeg"]["ratio_actual_test"], bpp=m["jpeg"]["bpp_test"])
    return out


def finished_in(run_dir: Path, overrides: list[str]) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly these overrides (Hydra records them, less its own
    ``hydra.*`` ones)."""
    import yaml

    needed = [run_dir / "metrics.json", run_dir / "test_predictions.npz", run_dir / ".hydra" / "overrides.yaml"]
    return all(p.exists() for p in needed) and \
        yaml.safe_load(needed[2].read_text()) == [o for o in overrides if not o.startswith("hydra.")]


def per_finding_auroc(scores: np.ndarray, findings: np.ndarray) -> list[float | None]:
    from medcomp.metrics.classification import _auroc_rows

    out = []
    for k in range(findings.shape[1]):
        y = findings[:, k].astype(np.int64)
        out.append(float(_auroc_rows(scores[None, :, k], y[None])[0]) if 0 < y.sum() < len(y) else None)
    return out


# ── what it means ─────────────────────────────────────────────────────────────────────────────────────────────────


def summarise(runs: dict, args) -> dict:
    """Per row: mean ± sd over the seeds that finished."""
    out = {}
    for row in plan(args):
        done = [runs[run_id(row["key"], s)] for s in args.seeds if run_id(row["key"], s) in runs]
        if not done:
            continue
        a = np.array([r["auroc"] for r in done])
        f = np.array([r["auroc_findings"] for r in done], dtype=float)
        out[row["key"]] = {**{k: v for k, v in done[0].items() if k in ("method", "resolution", "kd", "jpeg", "head",
                                                                           "fast", "parameters", "ratio_actual")},
                           "projection_parameters": done[0]["model_info"].get("projection"),
                           "seeds": [r["seed"] for r in done], "auroc": a.tolist(), "auroc_mean": float(a.mean()),
                           "auroc_sd": float(a.std(ddof=1)) if len(a) > 1 else None,
                           "auroc_findings_mean": float(np.nanmean(f)) if np.isfinite(f).any() else None,
                           "auroc_per_finding_mean": np.nanmean(np.array([r["auroc_per_finding"] for r in done],
                                                                         dtype=float), 0).tolist(),
                           "fit_s_mean": float(np.mean([r["fit_s"] for r in done])),
                           "fit_s_total": float(np.sum([r["fit_s"] for r in done])),
                           "complete": len(done) == len(args.seeds)}
    return out


def compare(runs: dict, args) -> dict:
    """Each comparison over the seeds both sides have: paired bootstrap over test images and paired t over seeds."""
    from scipy.stats import ttest_rel

    from medcomp.metrics.classification import paired_bootstrap_auroc

    out = {}
    for name, a, b in comparisons(args):
        seeds = [s for s in args.seeds if run_id(a, s) in runs and run_id(b, s) in runs]
        if not seeds:
            continue
        scores, labels = {a: [], b: []}, None
        for key in (a, b):
            for s in seeds:
                with np.load(runs[run_id(key, s)]["predictions"]) as p:
                    scores[key].append(p["mcct"])
                    if labels is None:
                        labels = p["label"]
                    elif not np.array_equal(labels, p["label"]):
                        raise SystemExit(f"{name}: the runs were tested on different images")
        boot = paired_bootstrap_auroc(scores[a], scores[b], labels, n=args.bootstrap)
        ra, rb = ([runs[run_id(k, s)]["auroc"] for s in seeds] for k in (a, b))
        t = ttest_rel(ra, rb) if len(seeds) > 1 else None
        out[name] = {"a": a, "b": b, "seeds": seeds, "mean_a": float(np.mean(ra)), "mean_b": float(np.mean(rb)),
                     **boot, "p_seeds_paired_t": float(t.pvalue) if t is not None and np.isfinite(t.pvalue) else None}
    return out


def targets(rows: dict, tests: dict, args) -> dict:
    """The issue's acceptance figures, each with the numbers it was judged on."""
    out = {}
    t = rows.get("mlcak_teacher_224")
    if t:
        out["mlcak_teacher_auroc_ge_0.95"] = {"mean": t["auroc_mean"], "sd": t["auroc_sd"], "seeds": t["seeds"],
                                              "met": t["auroc_mean"] >= 0.95 and t["complete"]}
    for res in args.resolutions:
        c = tests.get(f"kd_vs_nokd_{res}")
        if c:
            out[f"mlcak_kd_beats_nokd_{res}"] = {"kd": c["mean_a"], "nokd": c["mean_b"], "p_bootstrap": c["p_value"],
                                                 "p_seeds": c["p_seeds_paired_t"], "met": c["diff"] > 0}
    low = min(args.resolutions)
    if f"mlcak_student_{low}_kd" in rows:  # the MLCAK paper's figure (an earlier issue's target)
        a = rows[f"mlcak_student_{low}_kd"]["auroc_mean"]
        out[f"mlcak_student_{low}_kd_auroc_ge_0.96"] = {"mean": a, "met": a >= 0.96}
    for level in args.jpeg_levels:
        d, b = rows.get(f"ct_lite_{level}_dense"), rows.get(f"ct_lite_{level}_btt")
        if d and b and d.get("projection_parameters") and b.get("projection_parameters"):
            ratio = b["projection_parameters"] / d["projection_parameters"]
            out[f"ct_lite_btt_head_params_vs_dense_{level}"] = {"ratio": ratio, "met": ratio <= 0.55}
    return out


# ── the figure ────────────────────────────────────────────────────────────────────────────────────────────────────


def _p(p: float | None) -> str:
    return "–" if p is None else ("p<0.001" if p < 0.001 else f"p={p:.3f}")


def plot(rows: dict, tests: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    sd = lambda r: r["auroc_sd"] or 0.0  # noqa: E731
    for kd, colour, dx in ((False, "tab:blue", 0.97), (True, "tab:red", 1.03)):
        pts = [rows[k] for k in (f"mlcak_student_{r}{'_kd' if kd else ''}" for r in args.resolutions) if k in rows]
        a.errorbar([r["resolution"] * dx for r in pts], [r["auroc_mean"] for r in pts], yerr=[sd(r) for r in pts],
                   fmt="o-", color=colour, capsize=3, label="student + MLCAK KD" if kd else "student, no KD")
        for r in pts:  # every seed, faint, beside its mean
            a.scatter([r["resolution"] * dx] * len(r["auroc"]), r["auroc"], s=10, color=colour, alpha=0.35)
    for res in args.resolutions:
        c = tests.get(f"kd_vs_nokd_{res}")
        if c:
            top = max(max(rows[c["a"]]["auroc"]), max(rows[c["b"]]["auroc"]))
            few = f" ({len(c['seeds'])} paired seeds)" if len(c["seeds"]) < len(args.seeds) else ""
            a.annotate(f"KD {c['diff']:+.3f}{few}\n{_p(c['p_value'])}", (res, top), textcoords="offset points",
                       xytext=(0, 8), ha="center", fontsize=8)
    if "mlcak_teacher_224" in rows:
        t = rows["mlcak_teacher_224"]
        a.errorbar(224, t["auroc_mean"], yerr=sd(t), fmt="s", color="k", capsize=3, label="teacher 224 px (R-Ti)")
        a.annotate(f"{t['auroc_mean']:.3f} ± {sd(t):.3f}", (224, t["auroc_mean"]), textcoords="offset points",
                   xytext=(-8, -16), ha="right", fontsize=8)
    a.axhline(0.95, color="k", ls=":", lw=0.8)
    a.set(xscale="log", xlabel="input resolution (px)", ylabel="test AUROC, mean ± sd over seeds",
          title="MLCAK on Kermany (p: paired bootstrap, KD − no KD)")
    a.set_xticks([28, 56, 112, 224], labels=["28", "56", "112", "224"])
    a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    a.legend(loc="lower right", fontsize=8)
    styles = {("dense", False): ("tab:gray", "dense"), ("btt", False): ("tab:green", "BTT"),
              ("dense", True): ("tab:blue", "dense + FAST"), ("btt", True): ("tab:red", "BTT + FAST")}
    for (head, fast), (colour, label) in styles.items():
        pts = [rows[k] for k in (f"ct_lite_{lv}_{head}{'_fast' if fast else ''}" for lv in args.jpeg_levels)
               if k in rows]
        b.errorbar([r["ratio_actual"] for r in pts], [r["auroc_mean"] for r in pts], yerr=[sd(r) for r in pts],
                   fmt="o-", color=colour, capsize=3, label=label)
    if "ct_lite_teacher" in rows:
        b.axhline(rows["ct_lite_teacher"]["auroc_mean"], color="k", ls="--", label="teacher, uncompressed")
    if not any(r["method"] == "ct_lite" for r in rows.values()):
        b.text(0.5, 0.5, "no CT-Lite run finished yet\n(python experiments/analysis_auroc.py --resume)",
               transform=b.transAxes, ha="center", va="center", fontsize=9, color="gray")
        b.set_xticks([])
        b.set_yticks([])
    lines = [f"{lv}: JPEG gap {_p(tests[f'jpeg_gap_{lv}']['p_value'])}, FAST {_p(tests[f'fast_vs_none_{lv}_btt']['p_value'])}"
             f" (BTT) {_p(tests[f'fast_vs_none_{lv}_dense']['p_value'])} (dense), BTT−dense "
             f"{_p(tests[f'btt_vs_dense_{lv}']['p_value'])}" for lv in args.jpeg_levels
             if all(k in tests for k in (f"jpeg_gap_{lv}", f"fast_vs_none_{lv}_btt", f"fast_vs_none_{lv}_dense",
                                         f"btt_vs_dense_{lv}"))]
    if lines:
        b.text(0.02, 0.02, "\n".join(lines), transform=b.transAxes, fontsize=7, va="bottom")
    b.set(xlabel="JPEG compression ratio (from the files)", ylabel="test AUROC, mean ± sd over seeds",
          title="CT-Lite on JPEG-compressed Kermany")
    b.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"Kermany test split, {len(args.seeds)} seeds ({args.teacher_epochs} teacher / {args.epochs} "
                 f"student epochs, CPU); p-values: paired bootstrap over the 624 test images", fontsize=9)
    save_figure(fig, path, dpi=110)


# ── the loop ──────────────────────────────────────────────────────────────────────────────────────────────────────


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="Kermany root (default: ../shared/data/cxr/kermany224)")
    ap.add_argument("--pneumoniamnist", default=None,
                    help="PneumoniaMNIST npz (default: ../shared/data/cxr/pneumoniamnist_28_balanced.npz; '' = skip)")
    ap.add_argument("--resolutions", nargs="+", type=int, default=[28, 56, 112])  # 28 px first: the issue's headline
    ap.add_argument("--jpeg-levels", nargs="+", default=["cr10", "cr20", "cr40"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    ap.add_argument("--teacher-epochs", type=int, default=10, help="MLCAK teacher (all training images)")
    ap.add_argument("--epochs", type=int, default=6, help="students, CT-Lite and its teacher")
    ap.add_argument("--max-train", type=int, default=2400,
                    help="students and CT-Lite: a seeded, class-stratified subset of train (CPU budget; 0 = all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--bootstrap", type=int, default=2000, help="resamples of the paired bootstrap")
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (each gets cores / jobs threads)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these row keys (and keep the others)")
    ap.add_argument("--extra", nargs="*", default=[], help="more run.py overrides for every row")
    ap.add_argument("--name", default="analysis_auroc")
    ap.add_argument("--out-dir", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--work-dir", default=str(ROOT / "logs" / "analysis_auroc"), help="the runs' own directories")
    ap.add_argument("--resume", action="store_true", help="keep the runs an earlier run of the same settings finished")
    ap.add_argument("--report", action="store_true",
                    help="with --resume: train nothing; adopt finished run directories, rebuild the JSON and plot")
    args = ap.parse_args(argv)
    given, skipping = [], False  # the command that reproduces the result: without --resume / --report / --only
    for a in argv if argv is not None else sys.argv[1:]:
        skipping = (a == "--only") or (skipping and not a.startswith("--"))
        if not skipping and a not in ("--resume", "--report"):
            given.append(a)
    command = "python experiments/analysis_auroc.py " + " ".join(given)
    if args.root is None:
        if shared_data() is None:
            sys.exit("no ../shared/data (set MEDCOMP_SHARED_DATA or --root): this benchmark runs on Kermany")
        args.root = str(shared_data() / "cxr" / "kermany224")
    if args.pneumoniamnist is None and shared_data() is not None:
        npz = shared_data() / "cxr" / "pneumoniamnist_28_balanced.npz"
        args.pneumoniamnist = str(npz) if npz.exists() else ""
    settings = {k: v for k, v in vars(args).items()
                if k not in ("resume", "report", "out_dir", "only", "name", "jobs")}
    out = Path(args.out_dir)
    earlier = earlier_result(out / f"{args.name}.json", settings) if args.resume else None
    if args.report and not earlier:
        sys.exit(f"--report: no {args.name}.json of these settings in {out} to rebuild (it needs --resume)")
    runs: dict = dict(earlier["runs"]) if earlier else {}
    t_start = time.perf_counter() - (earlier["wall_s"] if earlier else 0.0)
    rows = plan(args)
    todo = [(row, s) for row in rows for s in args.seeds
            if run_id(row["key"], s) not in runs and (not args.only or row["key"] in args.only)]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    running: dict = {}  # run id → (row, seed, overrides, process, log file, start)

    def save():
        summary, tests = summarise(runs, args), compare(runs, args)
        result = {"name": args.name, "command": command, "settings": settings,
                  "complete": all(run_id(r["key"], s) in runs for r in rows for s in args.seeds),
                  "rows": summary, "comparisons": tests, "targets": targets(summary, tests, args), "runs": runs,
                  "wall_s": time.perf_counter() - t_start, "machine": {**machine(), "gpu": None},
                  "date": datetime.now(UTC).isoformat(timespec="seconds")}
        atomic_write_text(out / f"{args.name}.json", json.dumps(result, indent=2, default=float))
        plot(summary, tests, args, out / f"{args.name}.png")
        return result

    while todo or running:
        for row, seed in list(todo):
            if len(running) >= args.jobs:
                break
            if row["needs"] and run_id(row["needs"], seed) not in runs:
                continue  # its teacher is still training (or not yet started)
            todo.remove((row, seed))
            rid, overrides = run_id(row["key"], seed), command_for(row, seed, args, runs)
            run_dir = Path(args.work_dir) / rid
            if args.resume and finished_in(run_dir, overrides):
                print(f"── {rid}: adopting the finished run in {run_dir}", flush=True)
                runs[rid] = collect(row, seed, overrides, run_dir, None)
                save()
                continue
            if args.report:
                continue  # --report trains nothing
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"── {rid}: python run.py {' '.join(overrides)}", flush=True)
            log = open(run_dir.with_suffix(".log"), "w")  # noqa: SIM115 — open while the run lasts
            proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *overrides], cwd=ROOT, env=env, text=True,
                                    stdout=log, stderr=subprocess.STDOUT)
            running[rid] = (row, seed, overrides, proc, log, time.perf_counter())
        if not running and todo:
            if args.report:
                break  # what is left waits for teachers that have not been trained
            raise SystemExit(f"cannot start {todo[0][0]['key']}: its teacher row is not planned or failed")
        time.sleep(2)
        for rid, (row, seed, overrides, proc, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[rid]
            if proc.returncode != 0:
                for other in running.values():
                    other[3].terminate()
                tail = Path(log.name).read_text()[-3000:]
                raise SystemExit(f"{tail}\n{rid} failed (exit {proc.returncode}), log {log.name}: "
                                 f"python run.py {' '.join(overrides)}")
            runs[rid] = collect(row, seed, overrides, Path(args.work_dir) / rid, time.perf_counter() - t0)
            r = runs[rid]
            print(f"   {rid}: test AUROC {r['auroc']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}], "
                  f"{r['parameters']:,} parameters, {r['fit_s']:.0f} s", flush=True)
            save()
    result = save()
    print(json.dumps({"rows": {k: [round(v["auroc_mean"], 4), v["auroc_sd"]] for k, v in result["rows"].items()},
                      "targets": result["targets"]}, indent=2, default=float))


if __name__ == "__main__":
    main()
