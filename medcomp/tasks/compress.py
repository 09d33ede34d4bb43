"""``task=compress``: fit the model → one ``.mcz`` per image → decode each file → metrics from the file's bytes →
the same for every baseline codec at the same target → metrics.json, figures, W&B, a summary table."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig

from medcomp import runtime
from medcomp.codecs.base import Codec
from medcomp.codecs.container import Container
from medcomp.codecs.registry import get_codec, is_fitted
from medcomp.config import target_from_cfg
from medcomp.data.image import Image
from medcomp.evaluation import aggregate, evaluate, timed_encode
from medcomp.fitting import fit
from medcomp.utils.atomic import atomic_write_bytes, atomic_write_text
from medcomp.utils.devices import computing_on
from medcomp.utils.wandb import log_files, wandb_loggers

log = logging.getLogger("medcomp")


def baseline_codecs(cfg: DictConfig) -> dict[str, Codec]:
    """``baselines: [siren, jpeg2000, hevc]``: conf/codec entries. Fitted ones are fitted like the run's model
    (same accelerator, devices, strategy)."""
    return {name: get_codec(name, **({"overrides": runtime.trainer_overrides(cfg)} if is_fitted(name) else {}))
            for name in cfg.get("baselines") or []}


def run(cfg: DictConfig) -> dict:
    """The run; with ``data.cases`` or ``data.shard`` on a dataset, each selected case as a run of its own
    (medcomp.tasks.cases: written once, skipped when done, a failed case does not stop the others)."""
    from medcomp.tasks.cases import is_case_run, run_cases

    if is_case_run(cfg):
        return run_cases(cfg, run_one)
    return run_one(cfg)


def run_one(cfg: DictConfig) -> dict:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = target_from_cfg(cfg.compression)  # the run's one target: the model's fit, every baseline, evaluation
    loggers = runtime.start_loggers(cfg)
    fitted = fit(cfg, target=target, loggers=loggers)
    # the learned files are decoded (deblocking choice, evaluation) on the fit's device: a 300-slice UniCompress
    # decode is ≈ 1.25 TFLOP, minutes on a CPU
    with computing_on(fitted.trainer.strategy.root_device):
        return _encode_and_evaluate(cfg, out, target, loggers, fitted)


def _encode_and_evaluate(cfg: DictConfig, out: Path, target, loggers: list, fitted) -> dict:
    model, images = fitted.model, fitted.datamodule.images
    baselines = baseline_codecs(cfg)
    # Fitted baselines are fitted by every rank (a DDP fit is a collective); only rank zero uses the results.
    encoded = {}
    for name, codec in baselines.items():
        if codec.fitted:
            for i, image in enumerate(images):
                encoded[name, i] = timed_encode(codec, image, target)
    if not fitted.trainer.is_global_zero:  # under DDP only rank zero writes files and logs results
        return {}

    rows, figures, mcz_files = [], [], []

    def record(image: Image, container: Container, codec: Codec, encode_s: float, label: str) -> None:
        row, decoded = evaluate(image, container, codec, encode_s, target, label)
        _log_row(row)
        mcz_files.append(_write_mcz(out, image, label, container))
        if cfg.get("save_recon", True):
            figures.append(_figure(out, image, decoded, row))
        rows.append(row)

    total_vox = sum(im.array.size for im in images)
    model_codec = model.as_codec()
    for image in images:
        container, encode_s = timed_encode(model_codec, image, target)
        if model_codec.fitted:  # the fit trained every image's networks at once: its time, shared out by voxels
            encode_s = fitted.seconds * image.array.size / total_vox
        record(image, container, model_codec, encode_s, cfg.model_name)
    for name, codec in baselines.items():
        for i, image in enumerate(images):
            container, encode_s = encoded.get((name, i)) or timed_encode(codec, image, target)
            record(image, container, codec, encode_s, name)

    summary = aggregate(rows)
    metrics = {
        "task_name": cfg.task_name, "model": cfg.model_name, "data": cfg.data_name, "compression": cfg.compression.name,
        "summary": {r["codec"]: r for r in summary}, "images": rows,
        "files": [str(p.relative_to(out)) for p in mcz_files],
        "model_info": model.describe(),
        "fit_s": fitted.seconds, "fit_steps": fitted.trainer.global_step,
        "machine": runtime.machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    _log_results(loggers, summary, rows, figures, mcz_files, cfg)
    from medcomp.utils.report import summary_table

    print(summary_table(summary, title=f"{cfg.model_name} on {cfg.data_name}, target {target.describe()}"))
    print(f"outputs: {out}")
    return metrics


def _log_row(row: dict) -> None:
    log.info("%s %s: CR %.1f (target %.1f), %.3f bpp, PSNR %.2f dB, SSIM %.4f, encode %.1f s", row["codec"],
             row["image"], row["ratio_actual"], row["ratio_target"], row["bpp"], row["psnr"], row["ssim"], row["encode_s"])


def _write_mcz(out: Path, image: Image, label: str, container: Container) -> Path:
    path = out / "mcz" / f"{image.name}.{label}.mcz"
    atomic_write_bytes(path, container.to_bytes())
    return path


def _figure(out: Path, image: Image, decoded: Image, row: dict) -> Path:
    from medcomp.utils.report import reconstruction_figure

    title = f"{image.name} · {row['codec']} · CR {row['ratio_actual']:.1f} · {row['psnr']:.2f} dB · SSIM {row['ssim']:.4f}"
    return reconstruction_figure(image.array, decoded.array, title, out / "recon" / f"{image.name}.{row['codec']}.png")


COLUMNS = ["codec", "image", "ratio_target", "ratio_actual", "bpp", "psnr", "ssim", "encode_s", "decode_s"]


def _log_results(loggers, summary, rows, figures, mcz_files, cfg):
    for lg in loggers:
        lg.log_metrics({f"{r['codec']}/{k}": r[k] for r in summary for k in COLUMNS[2:]})
    for lg in wandb_loggers(loggers):
        lg.log_image("reconstructions", [str(p) for p in figures], caption=[p.stem for p in figures])
        lg.log_table("rd_points", columns=COLUMNS, data=[[r[c] for c in COLUMNS] for r in rows])
        log_files(lg, f"mcz-{cfg.task_name}", "compressed-images", mcz_files)
        log_files(lg, f"figures-{cfg.task_name}", "figures", figures)
        log_files(lg, f"checkpoints-{cfg.task_name}", "model",
                  sorted((Path(cfg.paths.output_dir) / "checkpoints").glob("*")))
    for lg in loggers:
        lg.save()
