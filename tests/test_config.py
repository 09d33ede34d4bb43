"""Every config group composes, and what it builds is the object it names."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medcomp.config import CONF_DIR, check_model_takes_data, compose, data_kind_of
from medcomp.errors import MedcompError

# conf/codec is the codec registry (tests below), not a group of the run's defaults list
GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml") if not p.stem.startswith("_")) for g in CONF_DIR.iterdir()
          if g.is_dir() and g.name not in ("hydra", "codec")}
BUILDS = {"model": "model", "experiment": "model", "data": "data", "trainer": "trainer", "debug": "trainer",
          "hparams_search": "model", "logger": "logger", "callbacks": "callbacks"}
# What an option is used with (as the README's commands do), so that what it builds can be built here.
PAIRED = {"images": ["model=cal_vae", "data.train=[pydicom-data:CT_small.dcm]", "data.eval=[pydicom-data:CT_small.dcm]"],
          "codec_train": ["model=cal_vae"], "sample_2d": ["model=cal_vae"],
          "pretrain_blocks_2d": ["model=feature_pretrain"], "pretrain_blocks_3d": ["model=feature_pretrain"],
          "pneumoniamnist": ["model=mlcak"], "unicompress_prior": ["data=prior_ct"],
          **{f"prior_{k}": ["model=unicompress_prior"] for k in ("ct", "em", "2d")}, "gpu": ["trainer.accelerator=cpu"],
          "fsdp": ["trainer.accelerator=cpu", "trainer.devices=2"], "multinode": ["trainer.accelerator=cpu"]}
NEEDS_TEACHER = {"ct_lite_fast", "mlcak_kd"}  # distillation configs refuse to build without a teacher checkpoint


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
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}", *PAIRED.get(option, [])]
    if group in ("data", "experiment"):
        overrides.append("data.path=/some/file.nii.gz") if option in ("volume",) else None
    cfg = compose(overrides)
    if "root" in cfg.data and cfg.data.root in (None, "???") or OmegaConf.is_missing(cfg.data, "root"):
        cfg = compose([*overrides, f"data.root={tmp_path}"])
    if cfg.task == "classify" and group != "data":  # diagnosis models take their finding names from a CXR dataset
        cfg = compose([*overrides, "data=kermany"])
    assert cfg.model._target_ and cfg.data._target_ and cfg.trainer._target_
    if group == "data":  # each data option, with the model the README uses it with, passes the data-kind check
        check_model_takes_data(cfg)
    if group == "compression":
        assert (cfg.compression.ratio is None) != (cfg.compression.bpp is None)
        assert cfg.compression.name == option
        return
    if group not in BUILDS:
        return
    # and what the option sets builds: the object its _target_ names, with the option's arguments
    node = cfg[BUILDS[group]]
    if group == "logger":
        from lightning.pytorch.loggers import Logger

        assert all(isinstance(instantiate(v), Logger) for v in node.values() if v and "_target_" in v)
        return
    if group == "callbacks":
        assert all(type(instantiate(v)).__name__ == v._target_.rsplit(".", 1)[1] for v in node.values() if v)
        return
    if option in NEEDS_TEACHER:  # a clear error, not a half-built student
        with pytest.raises(MedcompError, match="teacher_ckpt is required"):
            instantiate(node, _partial_=True, _convert_="all")(target=None)
        return
    if BUILDS[group] == "model":
        from medcomp.config import target_from_cfg

        built = instantiate(node, _partial_=True, _convert_="all")(target=target_from_cfg(cfg.compression))
    elif option == "fsdp" and not __import__("torch").cuda.is_available():
        with pytest.raises(Exception, match="requires a GPU accelerator"):  # Lightning's FSDP is GPU only
            instantiate(node, logger=False)
        return
    elif group == "trainer" or group == "debug":
        built = instantiate(node, logger=False)
    else:
        built = instantiate(node)
    assert type(built).__name__ == node._target_.rsplit(".", 1)[1]


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "codec").glob("*.yaml")))
def test_every_codec_entry_builds_its_codec(name):
    """conf/codec is the one registry: each entry builds a Codec that names itself as the file does."""
    from medcomp.codecs.base import Codec
    from medcomp.codecs.registry import available_codecs, get_codec

    codec = get_codec(name)
    assert isinstance(codec, Codec) and codec.name == name and name in available_codecs()


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
    from medcomp.config import target_from_cfg

    t = target_from_cfg(compose(["compression=bpp0.5", f"paths.output_dir={tmp_path}"]).compression)
    assert t.bpp == 0.5 and t.ratio is None


def test_ddp_trainer_config(tmp_path):
    cfg = compose(["trainer=ddp", f"paths.output_dir={tmp_path}"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2


def test_debug_fdr_sets_fast_dev_run(tmp_path):
    assert compose(["debug=fdr", f"paths.output_dir={tmp_path}"]).trainer.fast_dev_run is True


def test_conf_dir_is_the_repo_conf():
    assert CONF_DIR == Path(__file__).resolve().parent.parent / "conf"


def test_every_data_config_has_a_kind_some_model_takes():
    kinds = {name: data_kind_of(name) for name in GROUPS["data"]}
    assert None not in kinds.values(), kinds
    taken = {k for m in GROUPS["model"] for k in OmegaConf.load(CONF_DIR / "model" / f"{m}.yaml").data_kinds}
    assert set(kinds.values()) == taken


@pytest.mark.parametrize("overrides,message", [
    (["data=images", "data.train=[pydicom-data:CT_small.dcm]"],
     r"^model=unicompress does not take data=images \(corpus\); it takes volumes or dataset data: data=.*msd_liver.*"),
    (["model=cal_vae", "data=sample"], r"^model=cal_vae does not take data=sample \(volumes\); it takes corpus data: "
                                       r"data=codec_train, images, sample_2d$"),
    (["model=mlcak", "data=sample"], r"^model=mlcak does not take data=sample"),
    (["model=cal_vae", "data=images"], r"^data.train has no value: data=images needs it on the command line"),
])
def test_a_model_given_data_it_cannot_take_is_one_clear_error(overrides, message, tmp_path):
    from medcomp.tasks import run_task

    cfg = compose([*overrides, "logger=none", f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(MedcompError, match=message):
        run_task(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("model,task,ok", [("unicompress", "compress", True), ("cal_vae", "compress", True),
                                           ("unicompress_prior", "pretrain", True), ("mlcak", "classify", True),
                                           ("mlcak", "compress", False), ("siren", "pretrain", False)])
def test_a_model_runs_only_the_tasks_of_its_contract(model, task, ok, tmp_path):
    from medcomp.tasks import check_model_runs_task

    cfg = compose([f"model={model}", f"paths.output_dir={tmp_path}"])
    if ok:
        check_model_runs_task(cfg, task)
    else:
        with pytest.raises(MedcompError, match=f"model={model} .* cannot run task={task}: it is not a"):
            check_model_runs_task(cfg, task)
