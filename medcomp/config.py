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


def data_kind_of(name: str) -> str | None:
    """The ``data_kind`` a data config declares (the datasets take theirs from conf/data/_dataset.yaml)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml")
    return raw.get("data_kind") or ("dataset" if "_dataset" in (raw.get("defaults") or []) else None)


def check_model_takes_data(cfg: DictConfig) -> None:
    """A model YAML's ``data_kinds`` against the data YAML's ``data_kind``, checked before anything is built: a
    wrong pair would otherwise fail deep inside a constructor (``unexpected keyword argument 'normalise'``)."""
    from medcomp.errors import MedcompError

    takes, kind = cfg.get("data_kinds"), cfg.get("data_kind")
    if not takes or kind is None or kind in takes:
        return
    names = sorted(p.stem for p in (CONF_DIR / "data").glob("[!_]*.yaml") if data_kind_of(p.stem) in takes)
    raise MedcompError(f"model={cfg.get('model_name')} does not take data={cfg.get('data_name')} ({kind}); "
                       f"it takes {' or '.join(takes)} data: data={', '.join(names)}")
