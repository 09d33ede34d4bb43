"""A dataset sweep end to end on 2 CPU cores (issue 39): the 6-case miniature MSD Liver (make_miniature.py, the shared
volumes at full size), 3 shards × 3 targets through the joblib launcher two jobs at a time, then `medcomp report`.

    python experiments/dataset_sweep.py        # → experiments/results/dataset_sweep.json / .png (≈ 30 min)

Per-block SIREN (300 steps: a short fit, named beside every figure) with HEVC, JPEG 2000 and SPERR at the same
targets; BD against HEVC per case. The JSON is the report plus the command, the machine, the sweep's wall time and
the largest job process's peak memory (GNU time's maximum resident set of the waited-for processes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medcomp.bench import shared_data_or_exit  # noqa: E402
from medcomp.runtime import machine  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit-steps", type=int, default=300)
    parser.add_argument("--targets", default="cr64,cr128,cr256")
    parser.add_argument("--side", type=int, default=None, help="crop the miniature's cases (default: full size)")
    parser.add_argument("--name", default="dataset_sweep")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args(argv)
    shared = shared_data_or_exit("the dataset sweep")
    sys.path.insert(0, str(ROOT / "experiments"))
    from make_miniature import build

    work = Path(tempfile.mkdtemp(prefix="dataset_sweep_"))
    build(work / "mini", shared, side=args.side)
    logs = work / "logs"
    sweep = [sys.executable, "run.py", "-m", "data=msd_liver", f"data.root={work / 'mini'}", "data.split=all",
             "data.shard=0/3,1/3,2/3", "model=siren", f"model.fit_steps={args.fit_steps}",
             f"compression={args.targets}", "baselines=[hevc,jpeg2000,sperr]", "logger=wandb",
             "save_recon=false", "save_final_checkpoint=false", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    env = {**os.environ, "MEDCOMP_LOG_DIR": str(logs), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    start = time.perf_counter()
    run = subprocess.run(["/usr/bin/time", "-v", *sweep], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
    from medcomp.dataset_report import make_report, print_report

    report = make_report(sorted((logs / "run" / "multiruns").iterdir()), out=work / "report", reference="hevc")
    print_report(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "report" / "report_rd.png", args.out_dir / f"{args.name}.png")
    result = {"name": args.name, "command": "python experiments/dataset_sweep.py " + " ".join(argv or sys.argv[1:]),
              "sweep": " ".join(sweep[1:]), "sweep_exit": run.returncode, "sweep_wall_s": wall,
              "peak_rss_bytes_largest_process": int(peak.group(1)) * 1024 if peak else None,
              "fit": f"per-block SIREN, {args.fit_steps} steps a case (a short fit on 2 CPU cores)",
              "machine": machine(), **{k: v for k, v in report.items() if k not in ("rows", "jobs")},
              "jobs": [{k: j[k] for k in ("cases", "done", "skipped", "failed", "pid", "started", "ended")}
                       for j in report["jobs"]],
              "rows": [{k: v for k, v in r.items() if k != "folder"} for r in report["rows"]]}
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(f"{args.out_dir / args.name}.json: sweep {wall:.0f} s, exit {run.returncode}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
