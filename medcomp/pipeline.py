"""The task behind ``run.py`` and the learned-codec path of ``medcomp compress``.

fit the configured model on the configured data → write one ``.mcz`` per image → decode each file → metrics from
the file's bytes → the same for the classical baselines at the same target → metrics.json, figures, W&B, summary.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from medcomp.codecs.base import decode_container, get_codec, is_learned
from medcomp.codecs.container import Container
from medcomp.data.image import Image
from medcomp.errors import MedcompError
from medcomp.metrics import bits_per_pixel, compression_ratio, ms_ssim, psnr, ssim
from medcomp.target import Target
from medcomp.utils.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger("medcomp")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def target_from_cfg(compression: DictConfig) -> Target:
    return Target(ratio=compression.get("ratio"), bpp=compression.get("bpp"))


def evaluate(image: Image, container: Container, codec: str, encode_s: float, target: Target,
             ckpt: Path | None = None) -> tuple[dict, Image]:
    """Metrics of one compressed image, everything measured on the bytes a decoder would read.
    ``ckpt``: the weights file of a trained codec (CAL-VAE, RNN-Conv)."""
    data = container.to_bytes()
    t0 = time.perf_counter()
    decoded = decode_container(Container.from_bytes(data), **({"ckpt": ckpt} if ckpt else {}))
    decode_s = time.perf_counter() - t0
    row = {
        "codec": codec, "image": image.name, "shape": list(image.array.shape), "dtype": image.array.dtype.name,
        "original_bytes": image.nbytes, "file_bytes": len(data),
        "ratio_target": target.ratio_for(image), "ratio_actual": compression_ratio(image.nbytes, len(data)),
        "bpp": bits_per_pixel(len(data), image.array.size),
        "psnr": psnr(image.array, decoded.array), "ssim": ssim(image.array, decoded.array),
        "ms_ssim": ms_ssim(image.array, decoded.array) if image.array.ndim == 2 else None,
        "encode_s": encode_s, "decode_s": decode_s,
    }
    return row, decoded


def aggregate(rows: list[dict]) -> list[dict]:
    """One line per codec: ratio from summed bytes, quality averaged over images, times summed."""
    out = []
    for codec in dict.fromkeys(r["codec"] for r in rows):
        rs = [r for r in rows if r["codec"] == codec]
        orig, file = sum(r["original_bytes"] for r in rs), sum(r["file_bytes"] for r in rs)
        n_pix = sum(int(np.prod(r["shape"])) for r in rs)
        out.append({
            "codec": codec, "images": len(rs),
            "ratio_target": float(np.mean([r["ratio_target"] for r in rs])),
            "ratio_actual": compression_ratio(orig, file), "bpp": bits_per_pixel(file, n_pix),
            "psnr": float(np.mean([r["psnr"] for r in rs])), "ssim": float(np.mean([r["ssim"] for r in rs])),
            "encode_s": float(sum(r["encode_s"] for r in rs)), "decode_s": float(sum(r["decode_s"] for r in rs)),
        })
    return out


def fit_model(cfg: DictConfig, images: list[Image] | None = None, loggers: list | None = None,
              extra_callbacks: list | None = None, top_level: bool = True):
    """Instantiate data, model and trainer from the config and fit. Returns (model, datamodule, trainer, seconds)."""
    import lightning as L
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    target = target_from_cfg(cfg.compression)
    # _partial_: real Image objects must not be turned into DictConfigs by instantiate
    dm = instantiate(cfg.data, _partial_=True)(images=images) if images is not None else instantiate(cfg.data)
    # _convert_="all": plain lists/dicts in hparams, so checkpoints load with torch.load(weights_only=True)
    model = instantiate(cfg.model, _partial_=True, _convert_="all")(target=target)
    if hasattr(dm, "view_for"):  # data=<dataset>: codecs get images as blocks, classifiers labelled batches
        dm = dm.view_for(model)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks += extra_callbacks or []
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    if top_level:  # a learned baseline's fit inside a run joins the run's process group as it is
        _children_run_this_job_only(cfg)
    ckpt = resume_checkpoint(cfg) if top_level else None
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    fit_s = time.perf_counter() - t0
    model.output_dir, model.made_by = cfg.paths.output_dir, _command_line()
    if getattr(model, "_trainer", None) is None:  # ddp_spawn detaches the main process's model at teardown
        model.trainer = trainer
        if hasattr(model, "restore_spawned_fit"):
            model.restore_spawned_fit(dm)

    if not trainer.fast_dev_run and cfg.get("save_final_checkpoint", True):
        # The fitted model, for a later stage (e.g. the UniCompress teacher a student distils from).
        trainer.save_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "final.ckpt", weights_only=False)
    return model, dm, trainer, fit_s


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """``resume=auto``: the ``last.ckpt`` of the newest unfinished run of this task with the same overrides (the
    same command without ``resume=…``); ``resume=PATH``: that checkpoint; ``resume=null``: start afresh."""
    choice = cfg.get("resume")
    if not choice:
        return None
    if str(choice) != "auto":
        p = Path(str(choice)).expanduser()
        if not p.is_file():
            raise MedcompError(f"{p}: checkpoint to resume from not found")
        return p
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf as OC

    if not HydraConfig.initialized():
        return None
    mine = sorted(o for o in HydraConfig.get().overrides.task if not o.startswith("resume="))
    here = Path(cfg.paths.output_dir).resolve()
    runs = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
    for run in sorted(runs.glob("*"), reverse=True):
        last, overrides = run / "checkpoints" / "last.ckpt", run / ".hydra" / "overrides.yaml"
        if run.resolve() == here or not last.is_file() or not overrides.is_file() or (run / "metrics.json").exists():
            continue
        theirs = sorted(o for o in OC.load(overrides) if not str(o).startswith("resume="))
        if theirs == mine:
            log.info("resume=auto: continuing %s", last)
            return last
    log.info("resume=auto: no unfinished run with these overrides under %s; starting afresh", runs)
    return None


_RANK_VARIABLES = {"LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                   "MASTER_PORT", "PL_TRAINER_GPUS"}
_ENV_AT_START = set(__import__("os").environ)


def _children_run_this_job_only(cfg: DictConfig) -> None:
    """Multirun × DDP. Lightning starts ranks > 0 by re-running ``sys.argv`` (with ``-m`` and the whole grid)
    and puts them in ``hydra.run.dir`` (a new timestamped folder): rank 1 would re-launch the sweep. Inside a
    multirun job, make both mean this job: its own overrides, its own directory."""
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    # The previous job's DDP left its rank variables in this process: Lightning would then think the ranks are
    # started by someone else and wait for a rank 1 that never comes. Clear what was not there at start-up.
    import os

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in _RANK_VARIABLES - _ENV_AT_START:
        os.environ.pop(key, None)
    hydra_cfg = HydraConfig.instance().cfg.hydra
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = str(cfg.paths.output_dir)
    sys.argv = [sys.argv[0], *HydraConfig.get().overrides.task]


def _command_line() -> str:
    """The run.py command that made this run (for weights files that must say how they were made)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return "python run.py " + " ".join(HydraConfig.get().overrides.task)
    return ""


def _learned_overrides(cfg: DictConfig) -> list[str]:
    """A learned baseline is fitted like the run's model: same accelerator, devices, strategy and nodes, so that
    under DDP every rank takes part in its fit (rank zero alone would wait for ranks that have left)."""
    out = []
    if cfg.trainer.get("fast_dev_run"):
        out.append("+trainer.fast_dev_run=true")
    for key in ("accelerator", "devices", "strategy", "num_nodes"):
        if isinstance(cfg.trainer.get(key), (str, int)):
            out.append(f"++trainer.{key}={cfg.trainer.get(key)}")
    return out


def encode_learned(model_name: str, image: Image, target: Target, overrides: list[str] | None = None) -> Container:
    """Encode one image with a learned codec through the same configs and code as run.py
    (``model=<name> data=volume``, the image handed to the data module; ``overrides`` as on run.py's command line)."""
    import tempfile

    rate = ([f"compression.ratio={target.ratio}", "compression.bpp=null"] if target.ratio is not None
            else [f"compression.bpp={target.bpp}", "compression.ratio=null"])
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # one image of a larger run: no repeated "GPU available" banners
    try:
        with tempfile.TemporaryDirectory(prefix="medcomp-") as tmp:
            cfg = compose([f"model={model_name}", "data=volume", "logger=none", "callbacks=none", "baselines=[]",
                           f"compression.name={target.describe()}", *rate, f"paths.output_dir={tmp}",
                           "+save_final_checkpoint=false", *(overrides or [])])
            model, _, _, _ = fit_model(cfg, images=[image], top_level=False)
            return model.export()[0]
    finally:
        quiet.setLevel(level)


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import medcomp.utils.resolvers  # noqa: F401

    if GlobalHydra.instance().is_initialized():  # inside run.py (a learned baseline): Hydra already has conf/
        return hydra_compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def run_experiment(cfg: DictConfig) -> dict:
    """The whole run. Returns the metrics dict that is also written to ``metrics.json``."""
    from hydra.utils import instantiate

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = target_from_cfg(cfg.compression)
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg and "_target_" in lg]
    config_plain = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(config_plain)

    model, dm, trainer, fit_s = fit_model(cfg, loggers=loggers)
    # Learned baselines are fitted by every rank (a DDP fit is a collective); only rank zero uses the results.
    learned = {}
    if getattr(model, "is_codec", True) and not getattr(model, "is_classifier", False):
        for name in [n for n in cfg.get("baselines") or [] if is_learned(n)]:
            for i, image in enumerate(dm.images):
                t0 = time.perf_counter()
                container = encode_learned(name, image, target, _learned_overrides(cfg))
                learned[name, i] = (container, time.perf_counter() - t0)
    if not trainer.is_global_zero:  # under DDP only rank zero writes files and logs results
        return {}
    if getattr(model, "is_classifier", False):  # diagnosis models: test AUROC, not a bitstream
        return classifier_results(cfg, model, dm, trainer, fit_s, loggers)
    if not getattr(model, "is_codec", True):  # e.g. feature pretraining: its product is a checkpoint
        saved = model.export()
        metrics = {"task_name": cfg.task_name, "model": cfg.model_name, "data": cfg.data_name, "fit_s": fit_s,
                   "checkpoint": str(saved), **{k: float(v) for k, v in trainer.callback_metrics.items()}}
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        print(f"saved {saved}  ({fit_s:.0f} s)")
        return metrics

    rows, figures, mcz_files = [], [], []
    containers = model.export()
    total_vox = sum(im.array.size for im in dm.images)
    for image, container in zip(dm.images, containers):
        # The fit trains every image's networks at once; its time is shared out by voxel count.
        row, decoded = evaluate(image, container, cfg.model_name, fit_s * image.array.size / total_vox, target,
                                getattr(model, "weights_path", None))
        _log_row(row)
        mcz_files.append(_write_mcz(out, image, cfg.model_name, container))
        figures.append(_figure(out, image, decoded, row))
        rows.append(row)
    for name in cfg.get("baselines") or []:
        codec = get_codec(name)
        for i, image in enumerate(dm.images):
            if (name, i) in learned:  # fitted above, like run.py would, following this run's trainer limits
                container, encode_s = learned[name, i]
            else:
                t0 = time.perf_counter()
                container = codec.encode(image, target)
                encode_s = time.perf_counter() - t0
            row, decoded = evaluate(image, container, name, encode_s, target)
            _log_row(row)
            mcz_files.append(_write_mcz(out, image, name, container))
            figures.append(_figure(out, image, decoded, row))
            rows.append(row)

    summary = aggregate(rows)
    metrics = {
        "task_name": cfg.task_name, "model": cfg.model_name, "data": cfg.data_name, "compression": cfg.compression.name,
        "summary": {r["codec"]: r for r in summary}, "images": rows,
        "files": [str(p.relative_to(out)) for p in mcz_files],
        "model_info": model.describe() if hasattr(model, "describe") else {},
        "machine": {"node": platform.node(), "python": platform.python_version(), "cpu_count": usable_cpus()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    _log_results(loggers, summary, rows, figures, mcz_files, cfg)
    from medcomp.utils.report import summary_table

    print(summary_table(summary, title=f"{cfg.model_name} on {cfg.data_name}, target {target.describe()}"))
    print(f"outputs: {out}")
    return metrics


def classifier_results(cfg: DictConfig, model, dm, trainer, fit_s: float, loggers: list) -> dict:
    """Test the model selected on the validation split; metrics.json, a summary table, attention figures."""
    from medcomp.utils.report import classification_table

    out = Path(cfg.paths.output_dir)
    trainer.test(model, datamodule=dm, verbose=False)
    res = model.test_results
    summary = {"test": {**res["mcct"], "auroc_findings": res["mlct_auroc"], "images": res["n_test"]},
               "val": {"auroc": model.best_val, "epoch": model.best_epoch}}
    metrics = {"task_name": cfg.task_name, "model": cfg.model_name, "data": cfg.data_name, "summary": summary,
               "model_info": model.describe(), "fit_s": fit_s, "jpeg": getattr(dm, "jpeg", {}),
               "compression": cfg.compression.name if getattr(dm, "degrade_jpeg", False) else None,
               "machine": {"node": platform.node(), "python": platform.python_version(), "cpu_count": usable_cpus()},
               "date": datetime.now(UTC).isoformat(timespec="seconds")}
    figure = attention_figure(model, dm, out / "attention.png") if hasattr(model, "attention_maps") else None
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    for lg in loggers:
        lg.log_metrics({f"final/{k}": float(v) for k, v in summary["test"].items()}
                       | {f"jpeg/{k}": float(v) for k, v in metrics["jpeg"].items() if isinstance(v, (int, float))})
        if figure is not None and type(lg).__name__ == "WandbLogger":
            import wandb

            lg.experiment.log({"attention": wandb.Image(str(figure))})
            run = lg.experiment
            log_artifact(run, f"figures-{cfg.task_name}-{run.id}", "figures", [figure])
            log_artifact(run, f"checkpoints-{cfg.task_name}-{run.id}", "model", sorted((out / "checkpoints").glob("*")))
        lg.save()
    print(classification_table([{"split": "val (selection)", "auroc": model.best_val},
                                {"split": "test", **summary["test"]}],
                               title=f"{cfg.model_name} on {cfg.data_name}: normal vs abnormal AUROC"))
    print(f"outputs: {out}")
    return metrics


def attention_figure(model, dm, path: Path, n: int = 4) -> Path:
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
    shown = {name: levels[-1].cpu().numpy() for name, levels in maps.items()}
    return draw(batch["image"][:, 0].cpu().numpy(), shown, path, title="class-token attention, last level")


def log_artifact(run, name: str, kind: str, paths: list[Path]) -> None:
    """Files as one W&B artifact (offline runs keep it for `wandb sync`)."""
    import wandb

    files = [Path(p) for p in paths if Path(p).is_file()]
    if not files:
        return
    art = wandb.Artifact(name, type=kind)
    for p in files:
        art.add_file(str(p))
    run.log_artifact(art)


def _log_row(row: dict) -> None:
    log.info("%s %s: CR %.1f (target %.1f), %.3f bpp, PSNR %.2f dB, SSIM %.4f, encode %.1f s", row["codec"],
             row["image"], row["ratio_actual"], row["ratio_target"], row["bpp"], row["psnr"], row["ssim"], row["encode_s"])


def usable_cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _write_mcz(out: Path, image: Image, codec: str, container: Container) -> Path:
    path = out / "mcz" / f"{image.name}.{codec}.mcz"
    atomic_write_bytes(path, container.to_bytes())
    return path


def _figure(out: Path, image: Image, decoded: Image, row: dict) -> Path:
    from medcomp.utils.report import reconstruction_figure

    title = f"{image.name} · {row['codec']} · CR {row['ratio_actual']:.1f} · {row['psnr']:.2f} dB · SSIM {row['ssim']:.4f}"
    return reconstruction_figure(image.array, decoded.array, title, out / "recon" / f"{image.name}.{row['codec']}.png")


def _log_results(loggers, summary, rows, figures, mcz_files, cfg):
    for lg in loggers:
        flat = {f"{r['codec']}/{k}": r[k] for r in summary for k in
                ("ratio_target", "ratio_actual", "bpp", "psnr", "ssim", "encode_s", "decode_s")}
        lg.log_metrics(flat)
        if type(lg).__name__ == "WandbLogger":
            import wandb

            run = lg.experiment
            run.log({"reconstructions": [wandb.Image(str(p), caption=p.stem) for p in figures]})
            cols = ["codec", "image", "ratio_target", "ratio_actual", "bpp", "psnr", "ssim", "encode_s", "decode_s"]
            run.log({"rd_points": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])})
            log_artifact(run, f"mcz-{cfg.task_name}-{run.id}", "compressed-images", mcz_files)
            log_artifact(run, f"figures-{cfg.task_name}-{run.id}", "figures", figures)
            log_artifact(run, f"checkpoints-{cfg.task_name}-{run.id}", "model",
                         sorted((Path(cfg.paths.output_dir) / "checkpoints").glob("*")))
        lg.save()
