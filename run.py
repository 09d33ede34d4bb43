"""Hydra entry point: python run.py model=siren data=sample compression=cr64"""

import json
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

import medcomp.utils.resolvers  # noqa: F401 — ${mkdir:…}, ${sweep_group:} in the configs


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _job_failed(cfg: DictConfig, message: str, code: int) -> float:
    """A failed job of a multirun: say so, leave ``failed.json`` in its directory, let the sweep go on (an Optuna
    trial that returns NaN is marked failed)."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from medcomp.utils.atomic import atomic_write_text
    from medcomp.utils.failed_jobs import note_failure

    atomic_write_text(out / "failed.json", json.dumps({"error": message, "exit_code": code}, indent=2))
    note_failure(out, message)
    return float("nan")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from medcomp.errors import MedcompError
    from medcomp.runtime import one_log_stream
    from medcomp.tasks import run_task
    from medcomp.utils.wandb import finish_wandb

    one_log_stream()
    try:
        metrics = run_task(cfg)
    except MedcompError as exc:
        finish_wandb(exit_code=2)
        print(f"medcomp: error: {exc}", file=sys.stderr)
        if _in_multirun():
            return _job_failed(cfg, str(exc), 2)
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit):
        finish_wandb(exit_code=1)
        raise
    except Exception:
        finish_wandb(exit_code=1)
        if _in_multirun():  # one broken job must not stop or corrupt the others
            print(traceback.format_exc(), file=sys.stderr)
            return _job_failed(cfg, traceback.format_exc(), 1)
        raise
    finish_wandb()
    codec, _, key = str(cfg.optimized_metric).partition("/")
    value = metrics.get("summary", {}).get(codec, {}).get(key)
    return None if value is None else float(value)


if __name__ == "__main__":
    from medcomp.utils.failed_jobs import FAILED

    main()
    if FAILED:
        print(f"medcomp: error: {len(FAILED)} job(s) of the multirun failed; see failed.json in: "
              + "; ".join(f"{job}: {line}" for job, line in FAILED.items()), file=sys.stderr)
        sys.exit(2)
