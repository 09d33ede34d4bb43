"""``task=classify``: fit a diagnosis model (CT-Lite, MLCAK), test the one the validation split selected;
metrics.json, test_predictions.npz (per-image scores), a summary table and teacher/student attention figures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from medcomp import runtime
from medcomp.fitting import fit
from medcomp.utils.atomic import atomic_path, atomic_write_text
from medcomp.utils.wandb import log_files, wandb_loggers


def run(cfg: DictConfig) -> dict:
    from medcomp.utils.report import classification_table

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    loggers = runtime.start_loggers(cfg)
    fitted = fit(cfg, loggers=loggers)
    model, dm, trainer = fitted.model, fitted.datamodule, fitted.trainer
    if not trainer.is_global_zero:  # under DDP only rank zero tests, writes files and logs results
        return {}
    res = model.test_in_this_process(dm.test_dataloader(), trainer.precision_plugin.forward_context())
    summary = {"test": {**res["mcct"], "auroc_findings": res["mlct_auroc"], "images": res["n_test"]},
               "val": {"auroc": model.best_val, "epoch": model.best_epoch}}
    metrics = {"task_name": cfg.task_name, "model": cfg.model_name, "data": cfg.data_name, "summary": summary,
               "model_info": model.describe(), "fit_s": fitted.seconds, "fit_steps": trainer.global_step, "jpeg": getattr(dm, "jpeg", {}),
               "compression": cfg.compression.name if getattr(dm, "degrade_jpeg", False) else None,
               "machine": runtime.machine(), "date": datetime.now(UTC).isoformat(timespec="seconds")}
    figure = attention_figure(model, dm, out / "attention.png")
    with atomic_path(out / "test_predictions.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **res["predictions"])  # per test image: scores and labels (paired tests between runs)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    for lg in loggers:
        lg.log_metrics({f"final/{k}": float(v) for k, v in summary["test"].items()}
                       | {f"jpeg/{k}": float(v) for k, v in metrics["jpeg"].items() if isinstance(v, (int, float))})
    for lg in wandb_loggers(loggers):
        if figure is not None:
            lg.log_image("attention", [str(figure)])
            log_files(lg, f"figures-{cfg.task_name}", "figures", [figure])
        log_files(lg, f"checkpoints-{cfg.task_name}", "model", sorted((out / "checkpoints").glob("*")))
    for lg in loggers:
        lg.save()
    print(classification_table([{"split": "val (selection)", "auroc": model.best_val},
                                {"split": "test", **summary["test"]}],
                               title=f"{cfg.model_name} on {cfg.data_name}: normal vs abnormal AUROC"))
    print(f"outputs: {out}")
    return metrics


def attention_figure(model, dm, path: Path, n: int = 4) -> Path | None:
    """Teacher vs student class-token attention (last level) on ``n`` test images, normal and abnormal in turn."""
    import torch
    from torch.utils.data import default_collate

    from medcomp.utils.report import attention_figure as draw

    data = dm.test_dataloader().dataset
    by_class: dict[int, list[int]] = {0: [], 1: []}
    for i in range(len(data)):  # the first normal and abnormal test images, in turn
        by_class[int(data[i]["label"])].append(i)
        if min(len(v) for v in by_class.values()) >= n // 2:
            break
    picks = [i for pair in zip(*by_class.values()) for i in pair][:n] or list(range(min(n, len(data))))
    batch = {k: v.to(model.device) for k, v in default_collate([data[i] for i in picks]).items()}
    model.eval()
    with torch.no_grad():
        maps = model.attention_maps(batch)
    if maps is None:  # a model without attention maps (CT-Lite): no figure
        return None
    shown = {name: levels[-1].cpu().numpy() for name, levels in maps.items()}
    return draw(batch["image"][:, 0].cpu().numpy(), shown, path, title="class-token attention, last level")
