"""The prepared GPU check (issue 34): what a session that is lent a GPU runs once, in one call, in under 8 minutes on
one H100, and commits: experiments/results/gpu_check.json (per step: command, exit code, wall time, ms per fit step,
PSNR, peak GPU memory from nvidia-smi).

Steps (each its own process, as a user runs it):
  env               torch / CUDA / device name
  unicompress_300   the default UniCompress fit, trainer=gpu, on a 300×512×512 int16 CT at CR 256
  decode_cpu        its .mcz decoded by a separate process that cannot see the GPU; PSNR equal within 0.01 dB
  unicompress_ddp1  the same fit under trainer=ddp trainer.devices=1
  precision_fp32 / precision_bf16   a small fit at 32 and bf16-mixed: the INR fit stays fp32 (one log line says so)
  fsdp_small        trainer=fsdp on the small fit (runs as ddp, says so)
  siren_cli_cuda    medcomp compress --codec siren --device cuda, decoded on the GPU and by a CPU-only process
  cal_vae_train / rnn_conv_train   training steps on the GPU (data=sample_2d), their files decoded on the CPU
  mlcak_workers     MLCAK with loader workers (num_workers=4, pinned memory) for 2 epochs
  gpu_tests         pytest -m gpu (tests/test_gpu.py)

The CT is the shared abdomen DICOM series mirrored along z to 300 slices when ../shared/data is there (it does not
travel to the device machine), else a synthetic CT-like volume; Kermany likewise (a synthetic miniature otherwise).

On the device machine (its python3 is 3.12 with torch and Lightning; the rest travels in .whl, made here by
`make gpu-wheels`, ≈ 40 MB beside the 17 MB repository, under the 64 MiB a call carries; CompressAI has no 3.12
wheel and is built there from its sdist — not yet tried), with carry [".whl"]:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/compressai-*.tar.gz && \\
    PYTHONPATH=/tmp/site:. python3 experiments/gpu_check.py --out $OUT/gpu_check.json
Here: `python experiments/gpu_check.py --dry-run` composes every run.py step's config and parses every CLI step's
flags, prepares the inputs at a small size, and runs nothing on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# ── inputs ──────────────────────────────────────────────────────────────────────────────────────────────────────────
def shared_data() -> Path | None:
    for p in (os.environ.get("MEDCOMP_SHARED_DATA"), ROOT.parent / "shared" / "data"):
        if p and Path(p).is_dir():
            return Path(p)
    return None


def make_ct(path: Path, slices: int) -> str:
    """A ``slices``×512×512 int16 CT in HU; returns where it came from."""
    shared = shared_data()
    if shared is not None:
        from medcomp.data.readers import read_image

        series = read_image(str(shared / "ct" / "abdomen_ct_dicom_series")).array  # (20, 512, 512)
        period = np.concatenate([series, series[::-1]])  # mirrored: no jump where the copies meet
        out = np.resize(period, (slices, *series.shape[1:])).astype(np.int16)
        source = f"shared abdomen_ct_dicom_series mirrored to {slices} slices"
    else:
        rng = np.random.default_rng(0)
        y, x = np.mgrid[-1:1:512j, -1:1:512j]
        out = np.empty((slices, 512, 512), np.int16)
        for z in range(slices):  # a body ellipse with organs whose size drifts along z, bone ring, noise
            t = z / max(slices - 1, 1)
            body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
            organ = ((x - 0.25) / (0.2 + 0.1 * t)) ** 2 + ((y + 0.1) / 0.25) ** 2 < 1
            bone = np.abs(np.hypot(x / 0.8, y / 0.6) - 0.9) < 0.03
            s = np.where(body, 40.0, -1000.0) + 60 * organ + 900 * bone + rng.normal(0, 15, x.shape)
            out[z] = np.clip(s, -1024, 3071)
        source = f"synthetic CT-like volume, {slices} slices"
    np.save(path, out)
    return source


def make_kermany(root: Path, per_class: int = 24, test_per_class: int = 8) -> str:
    shared = shared_data()
    for split, n in (("train", per_class), ("test", test_per_class)):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            if shared is not None:
                files = sorted((shared / "cxr" / "kermany224" / split / cls).iterdir())
                for f in files[:: max(1, len(files) // n)][:n]:
                    shutil.copy(f, root / split / cls / f.name)
                continue
            from PIL import Image

            rng = np.random.default_rng(hash((split, cls)) % 2**32)
            for i in range(n):
                a = rng.normal(120 + (30 if cls == "PNEUMONIA" else 0), 40, (224, 224)).clip(0, 255).astype(np.uint8)
                name = f"IM-{i:04d}-0001" if cls == "NORMAL" else f"person{i}_{'bacteria' if i % 2 else 'virus'}_{i}"
                Image.fromarray(a).save(root / split / cls / f"{name}.jpeg")
    return "shared kermany224 (a miniature)" if shared is not None else "synthetic Kermany-layout miniature"


# ── measuring one step ──────────────────────────────────────────────────────────────────────────────────────────────
class GpuMemory:
    """Peak memory in use on GPU 0 while a step runs (nvidia-smi every 0.2 s), less what was in use before."""

    def __init__(self):
        self.tool = shutil.which("nvidia-smi")
        self.peak, self._stop = None, threading.Event()

    def _used(self) -> int | None:
        try:
            out = subprocess.run([self.tool, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
            return int(out.splitlines()[0])
        except Exception:  # noqa: BLE001
            return None

    def __enter__(self):
        if self.tool:
            self.base = self._used() or 0
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            used = self._used()
            if used is not None:
                self.peak = max(self.peak or 0, used - self.base)
            time.sleep(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        if self.tool:
            self.thread.join()


def run_step(name: str, argv: list[str], work: Path, timeout: int, env: dict | None = None) -> dict:
    with GpuMemory() as mem:
        t0 = time.perf_counter()
        try:
            p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})})
            code, out = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as exc:
            code, out = 124, f"timed out after {timeout} s\n{exc.stdout or ''}{exc.stderr or ''}"
        wall = time.perf_counter() - t0
    (work / f"{name}.log").write_text(out if isinstance(out, str) else out.decode(errors="replace"))
    tail = [line for line in str(out).splitlines() if line.strip()][-3:]
    return {"step": name, "command": " ".join(map(str, argv)), "exit_code": code, "wall_s": round(wall, 2),
            "peak_gpu_memory_mib": mem.peak, "tail": tail}


def run_metrics(log_dir: Path) -> dict:
    files = sorted(log_dir.rglob("metrics.json"))
    return json.loads(files[-1].read_text()) if files else {}


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    err, rng = 0.0, float(original.max()) - float(original.min())
    for z in range(original.shape[0]):  # a slice at a time: float64 of the whole CT would be 630 MB
        err += float(np.sum((original[z].astype(np.float64) - decoded[z].astype(np.float64)) ** 2))
    return float(10 * np.log10(rng**2 / max(err / original.size, 1e-300)))


# ── the steps ───────────────────────────────────────────────────────────────────────────────────────────────────────
PY = sys.executable


def plan(work: Path, ct: Path, small: Path, kermany: Path) -> list[tuple[str, list[str], dict]]:
    """(name, argv, options) for every step; options: 'logs' (a run.py log dir), 'timeout', 'env'."""
    def run_py(name, *overrides, timeout=150):
        logs = work / name
        return name, [PY, "run.py", *overrides, "logger=none", f"paths.log_dir={logs}"], {"logs": logs, "timeout": timeout}

    uni = ["model=unicompress", "data=volume", f"data.path={ct}", "compression=cr256", "baselines=[]"]
    small_uni = ["model=unicompress", "data=volume", f"data.path={small}", "compression=cr256", "baselines=[]",
                 "model.fit_steps=300"]
    # 2-D codecs train on slices of the CT written here (pydicom-data, 34 MB, does not fit what a call may carry)
    corpus = ["data=images", f"data.train=[{work / 'slices_train.npy'}]", f"data.eval=[{work / 'slices_eval.npy'}]",
              "compression=bpp0.5", "model.fit_steps=200", "baselines=[]", "trainer=gpu"]
    cli = [PY, "-m", "medcomp.cli"]
    return [
        ("env", [PY, "-c", "import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,"
                           " 'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))"],
         {"timeout": 60}),
        run_py("unicompress_300", *uni, "trainer=gpu", timeout=240),
        ("decode_cpu", [*cli, "decompress", "{unicompress_300.mcz}", str(work / "ct_cpu.npy"), "--device", "auto"],
         {"timeout": 240, "env": {"CUDA_VISIBLE_DEVICES": ""}}),
        run_py("unicompress_ddp1", *uni, "trainer=ddp", "trainer.devices=1", timeout=240),
        run_py("precision_fp32", *small_uni, "trainer=gpu"),
        run_py("precision_bf16", *small_uni, "trainer=gpu", "trainer.precision=bf16-mixed"),
        run_py("fsdp_small", *small_uni, "trainer=fsdp", "trainer.devices=1"),
        ("siren_cli_cuda", [*cli, "compress", str(small), str(work / "siren.mcz"), "--codec", "siren", "--ratio", "64",
                            "--device", "cuda", "--force"], {"timeout": 150}),
        ("siren_decode_cpu", [*cli, "decompress", str(work / "siren.mcz"), str(work / "siren_cpu.npy"), "--device",
                              "auto", "--force"], {"timeout": 120, "env": {"CUDA_VISIBLE_DEVICES": ""}}),
        ("siren_decode_cuda", [*cli, "decompress", str(work / "siren.mcz"), str(work / "siren_cuda.npy"), "--device",
                               "cuda", "--force"], {"timeout": 120}),
        run_py("cal_vae_train", "model=cal_vae", *corpus),
        run_py("rnn_conv_train", "model=rnn_conv", *corpus),
        run_py("mlcak_workers", "model=mlcak", "data=kermany", f"data.root={kermany}", "data.batch_size=16",
               "data.num_workers=4", "data.pin_memory=true", "data.persistent_workers=true", "model.epochs=2",
               "trainer=gpu"),
        ("gpu_tests", [PY, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider"],
         {"timeout": 300}),
    ]


def dry_run(steps) -> list[str]:
    """Every run.py step's config composes and every CLI step's flags parse; returns the problems."""
    from medcomp.cli import build_parser
    from medcomp.config import compose

    problems = []
    for name, argv, _ in steps:
        try:
            if argv[1] == "run.py":
                compose([a for a in argv[2:] if not a.startswith("paths.")])
            elif argv[1:3] == ["-m", "medcomp.cli"]:
                build_parser().parse_args([a.replace("{unicompress_300.mcz}", "x.mcz") for a in argv[3:]])
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "gpu_check.json"))
    p.add_argument("--work", default="/tmp/medcomp_gpu_check")
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--dry-run", action="store_true", help="compose configs, parse flags, prepare small inputs; no GPU")
    p.add_argument("--only", nargs="+", help="run only these steps")
    p.add_argument("--rehearse-on-cpu", action="store_true",
                   help="every step on the CPU, 8 slices, 30 fit steps: checks this script, measures nothing")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ct, small, kermany = work / "ct.npy", work / "ct_small.npy", work / "kermany"
    slices = 4 if args.dry_run else 8 if args.rehearse_on_cpu else args.slices
    sources = {"ct": make_ct(ct, slices), "kermany": make_kermany(kermany)}
    volume = np.load(ct, mmap_mode="r")
    np.save(small, volume[: min(32, slices), 192:320, 192:320])
    np.save(work / "slices_train.npy", volume[: min(16, slices), :256, :256])  # the 2-D codecs' corpus: apart from
    np.save(work / "slices_eval.npy", volume[-min(2, slices):, 256:, 256:])   # the two slices they are scored on
    steps = plan(work, ct, small, kermany)
    if args.dry_run:
        problems = dry_run(steps)
        print(json.dumps({"dry_run": True, "steps": [s[0] for s in steps], "inputs": sources, "problems": problems},
                         indent=2))
        return 1 if problems else 0

    from medcomp.bench import machine

    results, original = [], np.load(ct, mmap_mode="r")
    for name, argv, opts in steps:
        if args.only and name not in args.only:
            continue
        argv = [a.replace("{unicompress_300.mcz}", str(next((work / "unicompress_300").rglob("*.mcz"), "missing.mcz")))
                for a in argv]
        if args.rehearse_on_cpu:
            if name == "gpu_tests":
                continue
            argv = [{"trainer=gpu": "trainer=cpu", "cuda": "cpu"}.get(a, a) for a in argv]
            fit_steps = [] if "model=mlcak" in argv else ["model.fit_steps=30"]
            argv = [a for a in argv if a not in ("trainer.devices=1",) and not a.startswith("model.fit_steps=")] + \
                (["trainer.accelerator=cpu", "trainer.devices=1", *fit_steps] if argv[1] == "run.py" else [])
            argv = [a for a in argv if not (a == "data.num_workers=4")]
        row = run_step(name, argv, work, opts.get("timeout", 150), opts.get("env"))
        if "logs" in opts:
            m = run_metrics(opts["logs"])
            summary = m.get("summary", {})
            model = m.get("model")
            if model in summary and isinstance(summary[model], dict):
                row["psnr"] = summary[model].get("psnr")
                row["ratio_actual"] = summary[model].get("ratio_actual")
            if m.get("fit_s") and m.get("fit_steps"):
                row["ms_per_fit_step"] = round(1000 * m["fit_s"] / m["fit_steps"], 2)
            if model == "mlcak":
                row["test_auroc"] = summary.get("test", {}).get("auroc")
            row["fp32_override_said"] = any("fits in fp32" in f.read_text() for f in opts["logs"].rglob("run.log"))
        if name == "decode_cpu" and row["exit_code"] == 0:
            row["psnr"] = psnr(original, np.load(work / "ct_cpu.npy", mmap_mode="r"))
            gpu_run = next((r for r in results if r["step"] == "unicompress_300"), {})
            row["psnr_minus_gpu_run_db"] = row["psnr"] - gpu_run.get("psnr", float("nan"))
        if name in ("siren_decode_cpu", "siren_decode_cuda") and row["exit_code"] == 0:
            row["psnr"] = psnr(np.load(small), np.load(work / f"siren_{name.rsplit('_', 1)[-1]}.npy"))
            cpu = next((r for r in results if r["step"] == "siren_decode_cpu"), {})
            if name == "siren_decode_cuda" and "psnr" in cpu:
                row["psnr_minus_cpu_decode_db"] = row["psnr"] - cpu["psnr"]
        results.append(row)
        print(f"{name:18s} exit {row['exit_code']:3d}  {row['wall_s']:7.1f} s  "
              f"psnr {row.get('psnr')}  ms/step {row.get('ms_per_fit_step')}  peak MiB {row['peak_gpu_memory_mib']}",
              flush=True)
    record = {"benchmark": "gpu_check", "command": "python experiments/gpu_check.py", "machine": machine(),
              "rehearsal_on_cpu": args.rehearse_on_cpu,
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "inputs": sources, "steps": results,
              "all_passed": all(r["exit_code"] == 0 for r in results)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0 if record["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
