"""``task=pretrain``: fit a model whose product is a file other than a .mcz (an extractor checkpoint, a UniCompress
prior: medcomp.models.contracts.Pretrainer) and save it."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from medcomp import runtime
from medcomp.fitting import fit
from medcomp.utils.atomic import atomic_write_text


def run(cfg: DictConfig) -> dict:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fitted = fit(cfg, loggers=runtime.start_loggers(cfg))
    if not fitted.trainer.is_global_zero:
        return {}
    saved = fitted.model.save_product()
    metrics = {"task_name": cfg.task_name, "model": cfg.model_name, "data": cfg.data_name, "fit_s": fitted.seconds,
               "checkpoint": str(saved), **{k: float(v) for k, v in fitted.trainer.callback_metrics.items()}}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    print(f"saved {saved}  ({fitted.seconds:.0f} s)")
    return metrics
