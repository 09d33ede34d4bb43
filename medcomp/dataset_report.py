"""``medcomp report SWEEP_DIR…``: a dataset sweep's cases gathered into the figures a paper reports (issue 39).

A sweep's jobs (``data.shard``/``data.cases`` runs, medcomp.tasks.cases) each leave ``cases.json`` in their Hydra job
folder, naming the case folders they coded; a case folder holds ``metrics.json`` (done) or ``failed.json`` (its error
line). Given multirun folders, case folders, or any folder above them, the report collects every case once and
writes ``report.json`` and ``report_rd.png``:

- per dataset, codec and target: n cases, and the mean with a 95 % bootstrap CI over cases (scipy.stats.bootstrap,
  percentile, 10 000 resamples, seed 0) of PSNR, SSIM, actual CR, bpp, encode and decode seconds;
- per case, BD-rate and BD-PSNR of each codec against a reference (default HEVC) over that case's targets
  (medcomp.bench.bd_metrics: the bjontegaard package; two targets make straight lines), then their mean and CI;
- the RD plot: mean PSNR against mean bpp, one line a codec, the PSNR CI as a band;
- the failed cases with their error lines, and the cases a job selected that have no result (cut off).

The same tables go to W&B as one summary run in the sweep's group (offline unless logged in).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from medcomp.errors import MedcompError
from medcomp.utils.atomic import atomic_write_text

log = logging.getLogger("medcomp")

METRICS = ("psnr", "ssim", "ratio_actual", "bpp", "encode_s", "decode_s")
CONFIDENCE = 0.95
RESAMPLES = 10_000


# ── finding the cases ───────────────────────────────────────────────────────────────────────────────────────────


def case_folders(roots: list[Path]) -> tuple[list[Path], list[dict]]:
    """(every case folder under or named by ``roots``, once, sorted; the jobs' cases.json records found)."""
    folders, jobs = set(), []
    for root in roots:
        if not root.is_dir():
            raise MedcompError(f"{root}: not a folder (give a sweep's multirun folder or its cases folder)")
        for record in sorted(root.rglob("cases.json")):
            job = json.loads(record.read_text())
            jobs.append({**job, "record": str(record)})
            folders.update(Path(job["cases_dir"]) / name for name in job["case_folders"])
        for name in ("metrics.json", "failed.json"):
            folders.update(p.parent for p in root.rglob(name) if _is_case_folder(p.parent))
    return sorted(folders), jobs


def _is_case_folder(folder: Path) -> bool:
    """A case run's folder: <cases_dir>/<settings digest>/<case> (medcomp.tasks.cases.case_dir)."""
    digest = folder.parent.name
    return len(digest) == 10 and all(c in "0123456789abcdef" for c in digest)


def gather(roots: list[Path]) -> dict:
    """Rows (one a dataset, codec, target and case), failures, and cases selected but never finished.

    A baseline coded by several runs (each model's sweep codes HEVC too) counts once: the first found. A model's own
    codec run with other settings (fit steps, width…: another curve id in the case's case.json, the settings less
    the target) is another curve, named ``<codec>@<curve>`` when a dataset has more than one."""
    folders, jobs = case_folders(roots)
    rows, seen, failed, missing, duplicates = [], set(), [], [], 0
    for folder in folders:
        metrics, failure = folder / "metrics.json", folder / "failed.json"
        record = folder / "case.json"
        digest = json.loads(record.read_text())["curve"] if record.is_file() else folder.parent.name
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            for r in m.get("images", []):
                own = r["codec"] == m["model"]
                key = (m["data"], r["codec"], m["compression"], folder.name, digest if own else None)
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                rows.append({"data": m["data"], "model": m["model"], "codec": r["codec"], "target": m["compression"],
                             "ratio_target": r.get("ratio_target"), "case": folder.name, "folder": str(folder),
                             "settings": digest if own else None, **{k: r.get(k) for k in METRICS}})
        elif failure.is_file():
            f = json.loads(failure.read_text())
            failed.append({"case": f.get("case", folder.name), "folder": str(folder), "error": f.get("error", "")})
        else:
            missing.append({"case": folder.name, "folder": str(folder)})
    if not rows and not failed:
        raise MedcompError(f"{', '.join(map(str, roots))}: no case results (metrics.json or failed.json of a "
                           f"data.shard / data.cases run) found")
    settings = defaultdict(set)
    for r in rows:
        if r["settings"]:
            settings[(r["data"], r["codec"])].add(r["settings"])
    for r in rows:
        if len(settings.get((r["data"], r["codec"]), ())) > 1:
            r["codec"] = f"{r['codec']}@{r['settings']}"
    return {"rows": rows, "failed": failed, "missing": missing, "duplicates": duplicates, "jobs": jobs}


# ── statistics ──────────────────────────────────────────────────────────────────────────────────────────────────


def mean_ci(values: list[float], seed: int = 0) -> dict:
    """n, mean and the 95 % percentile-bootstrap CI of the mean over cases (None bounds with fewer than 2 cases;
    equal values give a zero-width interval)."""
    from scipy.stats import bootstrap

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    out = {"n": int(v.size), "mean": float(v.mean()) if v.size else None, "ci_low": None, "ci_high": None}
    if v.size >= 2:
        if np.all(v == v[0]):
            out["ci_low"] = out["ci_high"] = float(v[0])
        else:
            ci = bootstrap((v,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile",
                           rng=np.random.default_rng(seed)).confidence_interval
            out["ci_low"], out["ci_high"] = float(ci.low), float(ci.high)
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Per dataset, codec and target: n and mean ± CI of every metric, in the order targets rise in ratio."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["data"], r["codec"], r["target"])].append(r)
    out = []
    for (data, codec, target), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                           kv[1][0]["ratio_target"] or 0)):
        out.append({"data": data, "codec": codec, "target": target, "ratio_target": rs[0]["ratio_target"],
                    "n": len(rs), "cases": sorted(r["case"] for r in rs),
                    **{m: mean_ci([r[m] for r in rs]) for m in METRICS}})
    return out


def bd_per_case(rows: list[dict], reference: str) -> dict:
    """{data: {codec: {"cases": {case: bd_metrics}, "bd_rate": mean_ci, "bd_psnr": mean_ci}}} against
    ``reference``, over each case's targets (at least two on both curves)."""
    from medcomp.bench import bd_metrics

    curves = defaultdict(lambda: defaultdict(list))  # (data, case) → codec → points
    for r in rows:
        curves[(r["data"], r["case"])][r["codec"]].append({"bpp": r["bpp"], "psnr": r["psnr"]})
    out = defaultdict(dict)
    codecs = sorted({r["codec"] for r in rows} - {reference})
    for data in sorted({r["data"] for r in rows}):
        for codec in codecs:
            cases = {}
            for (d, case), by_codec in sorted(curves.items()):
                if d == data and codec in by_codec and reference in by_codec:
                    cases[case] = bd_metrics(by_codec[reference], by_codec[codec], min_points=2)
            if cases:
                out[data][codec] = {"cases": cases, **{m: mean_ci([c[m] for c in cases.values()])
                                                       for m in ("bd_rate", "bd_psnr")}}
    return dict(out)


# ── outputs ─────────────────────────────────────────────────────────────────────────────────────────────────────


def plot_bands(summary: list[dict], path: Path) -> None:
    """Mean PSNR against mean bpp, one line a codec, the PSNR's 95 % CI as a band; one panel a dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medcomp.bench import X_AXES, Y_AXES, save_figure

    datasets = sorted({s["data"] for s in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        for codec in sorted({s["codec"] for s in summary if s["data"] == data}):
            pts = sorted((s for s in summary if s["data"] == data and s["codec"] == codec and s["bpp"]["mean"]),
                         key=lambda s: s["bpp"]["mean"])
            x = [s["bpp"]["mean"] for s in pts]
            line, = ax.plot(x, [s["psnr"]["mean"] for s in pts], "o-", label=f"{codec} (n={max(s['n'] for s in pts)})")
            low = [s["psnr"]["ci_low"] for s in pts]
            if all(v is not None for v in low):
                ax.fill_between(x, low, [s["psnr"]["ci_high"] for s in pts], color=line.get_color(), alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel(X_AXES["bpp"] + ", mean over cases")
        ax.set_ylabel(Y_AXES["psnr"] + ", mean ± 95 % CI")
        ax.set_title(data)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def _fmt(stat: dict, spec: str = "{:.2f}") -> str:
    """mean, then the CI on a second line (a narrow terminal keeps the table readable)."""
    if stat["mean"] is None:
        return "-"
    text = spec.format(stat["mean"])
    if stat["ci_low"] is not None:
        text += f"\n[{spec.format(stat['ci_low'])}, {spec.format(stat['ci_high'])}]"
    return text


def print_report(report: dict) -> None:
    from medcomp.utils.report import rich_table

    rows = [{"data": s["data"], "codec": s["codec"], "target": s["target"], "n": s["n"],
             "psnr": _fmt(s["psnr"]), "ssim": _fmt(s["ssim"], "{:.4f}"), "cr": _fmt(s["ratio_actual"], "{:.1f}"),
             "bpp": _fmt(s["bpp"], "{:.3f}"), "enc": _fmt(s["encode_s"]), "dec": _fmt(s["decode_s"], "{:.3f}")}
            for s in report["summary"]]
    print(rich_table(rows, [("data", "data", "{}"), ("codec", "codec", "{}"), ("target", "target", "{}"),
                            ("n", "n", "{}"), ("PSNR dB [95% CI]", "psnr", "{}"), ("SSIM", "ssim", "{}"),
                            ("CR actual", "cr", "{}"), ("bpp", "bpp", "{}"), ("encode s", "enc", "{}"),
                            ("decode s", "dec", "{}")], "cases: mean and [95 % bootstrap CI]"))
    bd_rows = [{"data": data, "codec": codec, "n": b["bd_rate"]["n"], "rate": _fmt(b["bd_rate"], "{:+.1f}"),
                "n_psnr": b["bd_psnr"]["n"], "psnr": _fmt(b["bd_psnr"], "{:+.2f}")}
               for data, by_codec in report["bd"].items() for codec, b in by_codec.items()]
    if bd_rows:
        print(rich_table(bd_rows, [("data", "data", "{}"), ("codec", "codec", "{}"), ("n", "n", "{}"),
                                   ("BD-rate % [95% CI]", "rate", "{}"), ("n", "n_psnr", "{}"),
                                   ("BD-PSNR dB [95% CI]", "psnr", "{}")],
                         f"per case against {report['reference']}, then averaged"))
    for f in report["failed"]:
        print(f"failed: {f['case']} ({f['folder']}): {f['error'].splitlines()[0] if f['error'] else '?'}")
    for m in report["missing"]:
        print(f"no result (cut off?): {m['case']} ({m['folder']})")


def log_to_wandb(report: dict, out: Path, plot: Path) -> str | None:
    """One W&B run (job_type report) in the sweep's group: the summary and BD tables, the RD plot, and each
    mean as a summary value. Returns the run's folder."""
    import wandb

    from medcomp.utils.wandb import _settings, wandb_mode

    groups = sorted({j.get("sweep_group") for j in report["jobs"] if j.get("sweep_group")})
    run = wandb.init(project="medcomp", group=groups[0] if len(groups) == 1 else None, job_type="report",
                     name=f"report-{groups[0] if len(groups) == 1 else out.name}", dir=str(out), mode=wandb_mode(),
                     settings=_settings(), config={"sweeps": report["sweeps"], "reference": report["reference"]})
    columns = ["data", "codec", "target", "n"] + [f"{m}_{k}" for m in METRICS for k in ("mean", "ci_low", "ci_high")]
    table = wandb.Table(columns=columns, data=[[s["data"], s["codec"], s["target"], s["n"]]
                                              + [s[m][k] for m in METRICS for k in ("mean", "ci_low", "ci_high")]
                                              for s in report["summary"]])
    bd = wandb.Table(columns=["data", "codec", "case", "bd_rate", "bd_psnr"],
                     data=[[d, c, case, v["bd_rate"], v["bd_psnr"]] for d, by in report["bd"].items()
                           for c, b in by.items() for case, v in b["cases"].items()])
    run.log({"report/summary": table, "report/bd_per_case": bd, "report/rd": wandb.Image(str(plot))})
    for s in report["summary"]:
        for m in METRICS:
            run.summary[f"{s['data']}/{s['codec']}/{s['target']}/{m}"] = s[m]["mean"]
    for d, by in report["bd"].items():
        for c, b in by.items():
            run.summary[f"{d}/{c}/bd_rate_vs_{report['reference']}"] = b["bd_rate"]["mean"]
            run.summary[f"{d}/{c}/bd_psnr_vs_{report['reference']}"] = b["bd_psnr"]["mean"]
    run.summary["failed_cases"] = len(report["failed"])
    folder = run.dir
    run.finish()
    return folder


def make_report(roots: list[Path], out: Path | None = None, reference: str = "hevc", wandb: bool = True,
                command: str = "") -> dict:
    roots = [Path(r) for r in roots]
    out = Path(out) if out else roots[0]
    gathered = gather(roots)
    rows = gathered["rows"]
    if rows and reference not in {r["codec"] for r in rows}:
        raise MedcompError(f"--reference {reference}: no case was coded with it (codecs: "
                           f"{', '.join(sorted({r['codec'] for r in rows}))}); add it to the sweep's baselines")
    report = {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "sweeps": [str(r) for r in roots], "out": str(out), "reference": reference,
              "confidence": CONFIDENCE, "bootstrap": {"method": "percentile", "resamples": RESAMPLES, "seed": 0},
              "summary": summarise(rows), "bd": bd_per_case(rows, reference) if rows else {},
              "failed": gathered["failed"], "missing": gathered["missing"],
              "duplicates_skipped": gathered["duplicates"], "jobs": gathered["jobs"], "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    plot = out / "report_rd.png"
    if rows:
        plot_bands(report["summary"], plot)
    if wandb and rows:
        report["wandb_dir"] = log_to_wandb(report, out, plot)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    return report
