"""Hydra entry point: python run.py model=siren data=sample compression=cr64"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

# ${mkdir:DIR} makes DIR and returns it: an sqlite-backed Optuna study needs its folder before the first job runs.
OmegaConf.register_new_resolver("mkdir", lambda d: (Path(d).mkdir(parents=True, exist_ok=True), str(d))[1],
                                replace=True)


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
