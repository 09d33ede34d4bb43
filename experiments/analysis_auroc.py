"""Diagnosis from degraded chest X-rays: how much AUROC low resolution and JPEG cost, and how much distillation wins
back. Every row is a `python run.py …` run (its command is in the JSON) on ../shared/data/cxr/kermany224, with model
selection on a patient-level val split cut from train; test is touched once, for the recorded number.

    python experiments/analysis_auroc.py            # (make bench) → experiments/results/analysis_auroc.json/png

Rows
- MLCAK: the ViT teacher at 224 px; students at 112, 56 and 28 px without KD and with KD from that teacher.
- CT-Lite: its teacher on uncompressed images; students on JPEG input at three levels (compression=cr10/cr20/cr40,
  the file ratio measured), with the dense and the BTT (SFP) head, with and without FAST from that teacher.
Per row: test AUROC (normal vs pneumonia) with a bootstrap 95 % interval, findings AUROC (bacterial/viral),
trainable parameters, training seconds. A run left unfinished can go on with --resume (same settings).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from medcomp.bench import earlier_result, machine, shared_data
from medcomp.utils.atomic import atomic_path, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def plan(args) -> list[dict]:
    """The rows, in the order they must run (teachers before the students that distil from them)."""
    rows = [{"key": "mlcak_teacher_224", "method": "mlcak", "resolution": 224, "kd": False,
             "overrides": ["model=mlcak", f"model.epochs={args.teacher_epochs}"]}]
    for res in args.resolutions:
        for kd in (False, True):
            over = [f"experiment={'mlcak_kd' if kd else 'mlcak_student'}", f"data.resolution={res}",
                    f"model.epochs={args.epochs}"]
            if kd:
                over.append("model.teacher_ckpt={mlcak_teacher_224}")
            rows.append({"key": f"mlcak_student_{res}{'_kd' if kd else ''}", "method": "mlcak", "resolution": res,
                         "kd": kd, "overrides": over})
    rows.append({"key": "ct_lite_teacher", "method": "ct_lite", "jpeg": None, "head": "btt", "fast": False,
                 "overrides": ["experiment=ct_lite_teacher", f"model.epochs={args.teacher_epochs}"]})
    for level in args.jpeg_levels:
        for head in ("dense", "btt"):
            for fast in (False, True):
                over = ["experiment=ct_lite_fast" if fast else "model=ct_lite", f"compression={level}",
                        f"model.head={head}", f"model.epochs={args.epochs}"]
                if fast:
                    over.append("model.teacher_ckpt={ct_lite_teacher}")
                rows.append({"key": f"ct_lite_{level}_{head}{'_fast' if fast else ''}", "method": "ct_lite",
                             "jpeg": level, "head": head, "fast": fast, "overrides": over})
    return rows


def run_row(row: dict, args, done: dict, log_dir: Path) -> dict:
    overrides = [o.format(**{k: v["checkpoint"] for k, v in done.items()}) for o in row["overrides"]]
    overrides += ["data=kermany", f"data.root={args.root}", f"data.batch_size={args.batch_size}",
                  f"seed={args.seed}", "logger=csv", f"hydra.run.dir={log_dir / row['key']}",
                  *([f"data.max_train={args.max_train}"] if args.max_train else []), *args.extra]
    command = "python run.py " + " ".join(overrides)
    print(f"── {row['key']}: {command}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides], cwd=ROOT, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        print(r.stdout[-4000:])
        raise SystemExit(f"{row['key']} failed (exit {r.returncode}): {command}")
    m = json.loads((log_dir / row["key"] / "metrics.json").read_text())
    test = m["summary"]["test"]
    out = {k: v for k, v in row.items() if k not in ("overrides",)}
    out.update(command=command, auroc=test["auroc"], ci_low=test["ci_low"], ci_high=test["ci_high"],
               auroc_findings=test["auroc_findings"], test_images=test["images"],
               val_auroc=m["summary"]["val"]["auroc"], best_epoch=m["summary"]["val"]["epoch"],
               parameters=m["model_info"]["parameters"], fit_s=m["fit_s"], wall_s=time.perf_counter() - t0,
               model_info=m["model_info"], checkpoint=str(log_dir / row["key"] / "checkpoints" / "final.ckpt"))
    if m.get("jpeg"):
        out.update(jpeg_quality=m["jpeg"]["quality"], ratio_target=m["jpeg"]["ratio_target"],
                   ratio_actual=m["jpeg"]["ratio_actual_test"], bpp=m["jpeg"]["bpp_test"])
    print(f"   test AUROC {out['auroc']:.4f} [{out['ci_low']:.4f}, {out['ci_high']:.4f}], "
          f"{out['parameters']:,} parameters, {out['fit_s']:.0f} s", flush=True)
    return out


def targets(rows: dict, args) -> dict:
    """The issue's targets, each with the numbers it was judged on."""
    out = {}
    low = min(args.resolutions)
    if f"mlcak_student_{low}_kd" in rows:
        a = rows[f"mlcak_student_{low}_kd"]["auroc"]
        out[f"mlcak_student_{low}_kd_auroc_ge_0.96"] = {"auroc": a, "met": a >= 0.96}
    for res in args.resolutions:
        kd, no = rows.get(f"mlcak_student_{res}_kd"), rows.get(f"mlcak_student_{res}")
        if kd and no:
            out[f"mlcak_kd_beats_nokd_{res}"] = {"kd": kd["auroc"], "nokd": no["auroc"], "met": kd["auroc"] > no["auroc"]}
    mid = args.jpeg_levels[len(args.jpeg_levels) // 2]
    teacher = rows.get("ct_lite_teacher")
    for head in ("dense", "btt"):
        s = rows.get(f"ct_lite_{mid}_{head}_fast")
        if teacher and s:
            gap = (teacher["auroc"] - s["auroc"]) / teacher["auroc"]
            out[f"ct_lite_gap_{mid}_{head}_fast_le_2pct"] = {"teacher": teacher["auroc"], "student": s["auroc"],
                                                            "relative_gap": gap, "met": gap <= 0.02}
    for level in args.jpeg_levels:
        d, b = rows.get(f"ct_lite_{level}_dense_fast"), rows.get(f"ct_lite_{level}_btt_fast")
        if d and b:
            ratio = b["model_info"]["projection"] / d["model_info"]["projection"]
            out[f"ct_lite_btt_vs_dense_{level}"] = {"param_ratio": ratio, "dense": d["auroc"], "btt": b["auroc"],
                                                    "met": ratio <= 0.55 and b["auroc"] >= d["auroc"] - 0.005}
    return out


def plot(rows: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    err = lambda r: [[r["auroc"] - r["ci_low"]], [r["ci_high"] - r["auroc"]]]  # noqa: E731
    for kd, colour in ((False, "tab:blue"), (True, "tab:red")):
        pts = [rows[k] for k in (f"mlcak_student_{r}{'_kd' if kd else ''}" for r in args.resolutions) if k in rows]
        for r in pts:
            a.errorbar(r["resolution"], r["auroc"], yerr=err(r), fmt="o", color=colour, capsize=3)
        a.plot([r["resolution"] for r in pts], [r["auroc"] for r in pts], color=colour,
               label="student + MLCAK KD" if kd else "student, no KD")
    if "mlcak_teacher_224" in rows:
        t = rows["mlcak_teacher_224"]
        a.errorbar(224, t["auroc"], yerr=err(t), fmt="s", color="k", capsize=3, label="teacher 224 px")
    a.set(xscale="log", xlabel="input resolution (px)", ylabel="test AUROC (95 % CI)", title="MLCAK on Kermany")
    a.set_xticks([28, 56, 112, 224], labels=["28", "56", "112", "224"])
    a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    a.legend()
    styles = {("dense", False): ("tab:gray", "dense"), ("btt", False): ("tab:green", "BTT"),
              ("dense", True): ("tab:blue", "dense + FAST"), ("btt", True): ("tab:red", "BTT + FAST")}
    for (head, fast), (colour, label) in styles.items():
        pts = [rows[k] for k in (f"ct_lite_{lv}_{head}{'_fast' if fast else ''}" for lv in args.jpeg_levels)
               if k in rows]
        for r in pts:
            b.errorbar(r["ratio_actual"], r["auroc"], yerr=err(r), fmt="o", color=colour, capsize=3)
        b.plot([r["ratio_actual"] for r in pts], [r["auroc"] for r in pts], color=colour, label=label)
    if "ct_lite_teacher" in rows:
        b.axhline(rows["ct_lite_teacher"]["auroc"], color="k", ls="--", label="teacher, uncompressed")
    b.set(xlabel="JPEG compression ratio (from the files)", ylabel="test AUROC (95 % CI)",
          title="CT-Lite on JPEG-compressed Kermany")
    b.legend()
    fig.suptitle(f"Kermany test split ({args.epochs} student / {args.teacher_epochs} teacher epochs, CPU)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="Kermany root (default: ../shared/data/cxr/kermany224)")
    ap.add_argument("--resolutions", nargs="+", type=int, default=[112, 56, 28])
    ap.add_argument("--jpeg-levels", nargs="+", default=["cr10", "cr20", "cr40"])
    # Defaults: what 2 CPU cores allow in about 80 minutes (≈ 3.5 min per teacher epoch at 224 px on half of train).
    ap.add_argument("--epochs", type=int, default=6, help="student epochs")
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-train", type=int, default=2400,
                    help="a seeded, class-stratified subset of train (CPU budget; 0 = all 4.7k)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--only", nargs="+", default=None, help="run only these row keys (and keep the others)")
    ap.add_argument("--extra", nargs="*", default=[], help="more run.py overrides for every row")
    ap.add_argument("--name", default="analysis_auroc")
    ap.add_argument("--out-dir", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--work-dir", default=str(ROOT / "logs" / "analysis_auroc"), help="the runs' own directories")
    ap.add_argument("--resume", action="store_true", help="keep the rows an earlier run of the same settings finished")
    args = ap.parse_args(argv)
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
    command = "python experiments/analysis_auroc.py " + " ".join(given)
    if args.root is None:
        if shared_data() is None:
            sys.exit("no ../shared/data (set MEDCOMP_SHARED_DATA or --root): this benchmark runs on Kermany")
        args.root = str(shared_data() / "cxr" / "kermany224")
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "out_dir", "only", "name")}
    out = Path(args.out_dir)
    earlier = earlier_result(out / f"{args.name}.json", settings) if args.resume else None
    done = earlier["rows"] if earlier else {}
    t_start = time.perf_counter() - (earlier["wall_s"] if earlier else 0.0)
    rows = plan(args)
    for row in rows:
        if row["key"] in done or (args.only and row["key"] not in args.only):
            continue
        done[row["key"]] = run_row(row, args, done, Path(args.work_dir))
        result = {"name": args.name, "command": command, "settings": settings,
                  "complete": all(r["key"] in done for r in rows), "rows": done, "targets": targets(done, args),
                  "wall_s": time.perf_counter() - t_start, "machine": {**machine(), "gpu": None},
                  "date": datetime.now(UTC).isoformat(timespec="seconds")}
        atomic_write_text(out / f"{args.name}.json", json.dumps(result, indent=2, default=float))
        plot(done, args, out / f"{args.name}.png")
    print(json.dumps(targets(done, args), indent=2, default=float))


if __name__ == "__main__":
    main()
