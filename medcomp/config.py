"""Where the Hydra configs live, and how code other than ``run.py`` composes them (the CLI, tests, experiments)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from medcomp.target import Target

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str]) -> DictConfig:
    """``conf/config.yaml`` with ``overrides``, as ``python run.py OVERRIDES`` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import medcomp.utils.resolvers  # noqa: F401

    if GlobalHydra.instance().is_initialized():  # inside run.py (a fitted baseline): Hydra already has conf/
        return hydra_compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def target_from_cfg(compression: DictConfig) -> Target:
    return Target(ratio=compression.get("ratio"), bpp=compression.get("bpp"))
