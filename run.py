"""Hydra entry point: python run.py model=siren data=sample compression=cr64"""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from medcomp.errors import MedcompError
    from medcomp.pipeline import run_experiment
    from medcomp.utils.wandb import finish_wandb

    try:
        metrics = run_experiment(cfg)
    except MedcompError as exc:
        finish_wandb(exit_code=2)
        print(f"medcomp: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BaseException:
        finish_wandb(exit_code=1)
        raise
    finish_wandb()
    codec, _, key = str(cfg.optimized_metric).partition("/")
    value = metrics.get("summary", {}).get(codec, {}).get(key)
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
