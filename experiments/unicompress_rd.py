"""UniCompress against per-block SIREN and the classical codecs, on real CT, at the same ratios.

    python experiments/unicompress_rd.py                 # (make bench) → experiments/results/unicompress_rd.json/png

Per ratio: UniCompress teacher, per-block SIREN (same fit steps), JPEG 2000, JPEG XL, HEVC. At one ratio
(--kd-ratio): the KD student (from that teacher's checkpoint) and the same-size student without KD. Reports
PSNR/SSIM against actual CR from file bytes, BD-PSNR against HEVC, the SIREN/UniCompress encode-time ratio at each
CR (with both PSNRs beside it: it is a same-CR, not a same-PSNR, comparison) and the KD gain.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.classical_rd import shared_data  # noqa: E402
from medcomp.bench import _plot, bd_metrics  # noqa: E402
from medcomp.codecs.base import Target, get_codec  # noqa: E402
from medcomp.data.readers import read_image  # noqa: E402
from medcomp.pipeline import compose, evaluate, fit_model  # noqa: E402
from medcomp.utils.atomic import atomic_write_text  # noqa: E402


def fit_learned(model: str, image, ratio: float, steps: int, out_dir: str, extra=()):
    cfg = compose([f"model={model}", "data=volume", "logger=none", "callbacks=none", "baselines=[]",
                   f"compression.ratio={ratio}", "compression.bpp=null", f"compression.name=cr{ratio:g}",
                   f"model.fit_steps={steps}", f"paths.output_dir={out_dir}", "trainer.enable_progress_bar=false",
                   *extra])
    model_obj, _, _, fit_s = fit_model(cfg, images=[image])
    container = model_obj.export()[0]
    row, _ = evaluate(image, container, model, fit_s, Target(ratio=ratio))
    row["model_info"] = model_obj.describe() if hasattr(model_obj, "describe") else {}
    return row, Path(out_dir) / "checkpoints" / "final.ckpt"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", help="default: ../shared/data/ct/abdomen_ct_122x101x112.nii.gz")
    ap.add_argument("--ratios", nargs="+", type=float, default=[64, 128, 256, 512, 1024])
    ap.add_argument("--steps", type=int, default=1000, help="fit steps for every learned codec")
    ap.add_argument("--kd-ratio", type=float, default=256)
    ap.add_argument("--classical", nargs="+", default=["jpeg2000", "jpegxl", "hevc"])
    ap.add_argument("--name", default="unicompress_rd")
    ap.add_argument("--out-dir", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args(argv)
    command = "python experiments/unicompress_rd.py " + " ".join(argv if argv is not None else sys.argv[1:])
    src = args.input or (shared_data() / "ct" / "abdomen_ct_122x101x112.nii.gz" if shared_data() else None)
    if src is None:
        sys.exit("no input: pass --input or provide ../shared/data")
    image = read_image(src)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in args.ratios:
            teacher, ckpt = fit_learned("unicompress", image, ratio, args.steps, f"{tmp}/t{ratio:g}")
            rows.append(teacher)
            rows.append(fit_learned("siren", image, ratio, args.steps, f"{tmp}/s{ratio:g}")[0])
            for name in args.classical:
                t0 = time.perf_counter()
                c = get_codec(name).encode(image, Target(ratio=ratio))
                rows.append(evaluate(image, c, name, time.perf_counter() - t0, Target(ratio=ratio))[0])
            if ratio == args.kd_ratio:
                # KD student from this teacher; the same-size student without KD never sees a teacher.
                for exp, label, teacher in (("unicompress_kd", "unicompress_student_kd", ckpt),
                                            ("unicompress_nokd", "unicompress_student_nokd", None)):
                    row = fit_learned("unicompress_student", image, ratio, args.steps, f"{tmp}/{exp}",
                                      [f"experiment={exp}", f"model.teacher_ckpt={teacher or 'null'}"])[0]
                    row["codec"] = label
                    rows.append(row)
            print({r["codec"]: round(r["psnr"], 2) for r in rows if r["ratio_target"] == ratio}, flush=True)

    curves = {}
    for r in rows:
        curves.setdefault(r["codec"], []).append({k: r[k] for k in ("ratio_target", "ratio_actual", "bpp", "psnr", "ssim",
                                                                    "encode_s", "decode_s")})
    bd = {c: bd_metrics(curves["hevc"], pts) for c, pts in curves.items() if c != "hevc" and len(pts) >= 4}
    by = {(r["codec"], r["ratio_target"]): r for r in rows}
    time_ratio = {f"cr{ratio:g}": {"siren_encode_s": by[("siren", ratio)]["encode_s"],
                                   "unicompress_encode_s": by[("unicompress", ratio)]["encode_s"],
                                   "speedup": by[("siren", ratio)]["encode_s"] / by[("unicompress", ratio)]["encode_s"],
                                   "siren_psnr": by[("siren", ratio)]["psnr"],
                                   "unicompress_psnr": by[("unicompress", ratio)]["psnr"]} for ratio in args.ratios}
    kd = {}
    if ("unicompress_student_kd", args.kd_ratio) in by:
        s_kd, s_no = by[("unicompress_student_kd", args.kd_ratio)], by[("unicompress_student_nokd", args.kd_ratio)]
        kd = {"ratio": args.kd_ratio, "psnr_kd": s_kd["psnr"], "psnr_nokd": s_no["psnr"],
              "gain_db": s_kd["psnr"] - s_no["psnr"], "ratio_actual": s_kd["ratio_actual"],
              "student_param_ratio": s_kd["model_info"].get("param_ratio")}
    result = {"name": args.name, "command": command, "input": str(src), "steps": args.steps, "curves": curves,
              "bd_vs_hevc": bd, "encode_time_same_cr": time_ratio, "kd_gain": kd, "points": rows,
              "machine": {"node": platform.node(), "processor": platform.processor() or platform.machine(),
                          "cpus": len(__import__("os").sched_getaffinity(0))},
              "date": datetime.now(UTC).isoformat(timespec="seconds")}
    out = Path(args.out_dir)
    atomic_write_text(out / f"{args.name}.json", json.dumps(result, indent=2, default=float))
    _plot(curves, out / f"{args.name}.png", title=f"{args.name}: {Path(src).name}")
    print(json.dumps({"bd_vs_hevc": bd, "encode_time_same_cr": time_ratio, "kd_gain": kd}, indent=2, default=float))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
