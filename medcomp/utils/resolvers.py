"""OmegaConf resolvers the configs use (registered on import, by run.py and by medcomp.config.compose)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def _mkdir(d: str) -> str:
    """${mkdir:DIR}: make DIR and return it (an sqlite-backed Optuna study needs its folder before any job runs)."""
    Path(d).mkdir(parents=True, exist_ok=True)
    return str(d)


def sweep_group() -> str | None:
    """${sweep_group:}: in a multirun, the sweep's directory name (one W&B group per sweep); otherwise null."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"{HydraConfig.get().job.name}-{Path(HydraConfig.get().sweep.dir).name}"
    return None


def register() -> None:
    OmegaConf.register_new_resolver("mkdir", _mkdir, replace=True)
    OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)


register()
