"""Every config group composes, and what it builds is the object it names."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from medcomp.pipeline import CONF_DIR, compose

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONF_DIR.iterdir() if g.is_dir() and g.name != "hydra"}


def test_required_options_exist():
    assert {"siren"} <= set(GROUPS["model"])
    assert {"sample", "volume"} <= set(GROUPS["data"])
    assert {"cr64", "cr128", "cr256", "cr512", "cr1024", "bpp0.25", "bpp0.5", "bpp1"} <= set(GROUPS["compression"])
    assert {"cpu", "gpu", "ddp"} <= set(GROUPS["trainer"])
    assert {"wandb", "csv", "none"} <= set(GROUPS["logger"])
    assert {"default"} <= set(GROUPS["callbacks"])
    assert {"fdr", "limit"} <= set(GROUPS["debug"])


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes(group, option, tmp_path):
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}"]
    if group in ("data", "experiment"):
        overrides.append("data.path=/some/file.nii.gz") if option in ("volume",) else None
    cfg = compose(overrides)
    assert cfg.model._target_ and cfg.data._target_ and cfg.trainer._target_
    if group == "compression":
        assert (cfg.compression.ratio is None) != (cfg.compression.bpp is None)
        assert cfg.compression.name == option


def test_defaults_and_instantiation(tmp_path):
    cfg = compose([f"paths.output_dir={tmp_path}"])
    assert cfg.model_name == "unicompress" and cfg.data_name == "sample" and cfg.compression.ratio == 256
    assert cfg.data.normalise == "image" and list(cfg.baselines) == ["siren", "jpeg2000", "hevc"]
    assert cfg.trainer.max_steps == cfg.model.fit_steps
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_steps == cfg.model.fit_steps
    cbs = [instantiate(c) for c in cfg.callbacks.values()]
    assert {type(c).__name__ for c in cbs} == {"ModelCheckpoint", "TQDMProgressBar"}
    dm = instantiate(cfg.data)
    assert type(dm).__name__ == "SampleDataModule" and dm.default_block[2] == (64, 64)  # set by model=unicompress


def test_compression_override_reaches_model(tmp_path):
    from medcomp.pipeline import target_from_cfg

    t = target_from_cfg(compose(["compression=bpp0.5", f"paths.output_dir={tmp_path}"]).compression)
    assert t.bpp == 0.5 and t.ratio is None


def test_ddp_trainer_config(tmp_path):
    cfg = compose(["trainer=ddp", f"paths.output_dir={tmp_path}"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2


def test_debug_fdr_sets_fast_dev_run(tmp_path):
    assert compose(["debug=fdr", f"paths.output_dir={tmp_path}"]).trainer.fast_dev_run is True


def test_conf_dir_is_the_repo_conf():
    assert CONF_DIR == Path(__file__).resolve().parent.parent / "conf"
