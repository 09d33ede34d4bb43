"""Fit the configured model on the configured data: the one training path of run.py's tasks and of the fitted
codecs (SIREN, UniCompress), which call it in-process for each image they encode."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from medcomp.config import target_from_cfg
from medcomp.data.image import Image
from medcomp.models.built_in_setup import BuiltInSetup
from medcomp.target import Target

log = logging.getLogger("medcomp")


class RanksAgree(Callback):
    """At the end of training every rank must hold the same model (DDP keeps parameters equal only if every rank
    takes the same decisions: code freeze, collapse restarts, codebook reseeds). A fit whose ranks drifted apart is
    said in one error line; rank zero's model is still the one exported."""

    def on_train_end(self, trainer, pl_module):
        from medcomp.utils.distributed import tensors_that_disagree

        bad = tensors_that_disagree(pl_module)
        if bad and trainer.is_global_zero:
            log.error("medcomp: DDP ranks ended the fit with other weights than rank 0 (%s%s): a decision differed",
                      ", ".join(bad[:4]), " ..." if len(bad) > 4 else "")


FULL_PRECISION = (None, 32, "32", "32-true")


def trainer_rules(cfg: DictConfig, model) -> dict:
    """Trainer settings that medcomp overrides for correctness, each said in one log line:

    - ``strategy=fsdp`` runs as DDP. Every medcomp model fits in one device's memory; FSDP would shard the weights
      that the export (a file's weights), the rank-zero test pass and the best-epoch copy read whole. (Lightning's
      FSDP needs CUDA, so this rule is tested on CPU only as far as the override.)
    - An INR fit (``model.full_precision_fit``: SIREN, UniCompress) runs in fp32 whatever ``trainer.precision`` says:
      in bf16, sin(60·x) is off by ≈ 2.8 % and a 1024-voxel axis has 768 distinct coordinates, and the decoder runs
      in fp32 (a file fitted in bf16 decodes to other values than the fit saw)."""
    rules = {}
    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, str) and strategy.startswith("fsdp"):
        rank_zero_info("medcomp: trainer.strategy=%s runs as ddp: every medcomp model fits on one device, and its "
                       "export and test read whole weights", strategy)
        rules["strategy"] = "ddp"
    if getattr(model, "full_precision_fit", False) and cfg.trainer.get("precision") not in FULL_PRECISION:
        rank_zero_info("medcomp: %s fits in fp32, not trainer.precision=%s (sine activations and coordinates lose "
                       "accuracy in half precision, and the decoder runs in fp32)", type(model).__name__,
                       cfg.trainer.precision)
        rules["precision"] = "32-true"
    return rules


@dataclass
class FitRun:
    """What one fit leaves: the fitted model, its data, the trainer that ran it and the seconds it took."""

    model: object        # the LightningModule, fitted
    datamodule: object
    trainer: object
    seconds: float


def fit(cfg: DictConfig, images: list[Image] | None = None, target: Target | None = None,
        loggers: list | None = None, extra_callbacks: list | None = None, top_level: bool = True) -> FitRun:
    """Instantiate data, model and trainer from ``cfg`` and fit. ``images``: fit on these instead of the data
    config's files; ``target``: instead of ``cfg.compression``'s. ``top_level``: this is the run itself (resume, multirun × DDP), not a codec's fit inside it."""
    import lightning as L
    from hydra.utils import instantiate

    from medcomp import runtime

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    target = target or target_from_cfg(cfg.compression)
    # _partial_: real Image objects must not be turned into DictConfigs by instantiate
    dm = instantiate(cfg.data, _partial_=True)(images=images) if images is not None else instantiate(cfg.data)
    # _convert_="all": plain lists/dicts in hparams, so checkpoints load with torch.load(weights_only=True)
    model = instantiate(cfg.model, _partial_=True, _convert_="all")(target=target)
    if hasattr(dm, "view_for"):  # data=<dataset>: codecs get images as blocks, classifiers labelled batches
        dm = dm.view_for(cfg.get("task", "compress"))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks += [*(extra_callbacks or []), RanksAgree()]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **trainer_rules(cfg, model))
    if top_level:  # a codec's fit inside a run joins the run's process group as it is
        runtime.this_job_only(cfg)
    ckpt = runtime.resume_checkpoint(cfg) if top_level else None
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    seconds = time.perf_counter() - t0
    model.output_dir, model.made_by = cfg.paths.output_dir, runtime.command_line()
    if getattr(model, "_trainer", None) is None:  # ddp_spawn detaches the main process's model at teardown
        model.trainer = trainer
        dm.setup("fit")  # it ran in the spawned processes only: the images and splits are read here once more
        if isinstance(model, BuiltInSetup):
            model.restore_spawned_fit(dm)

    if not trainer.fast_dev_run and cfg.get("save_final_checkpoint", True):
        # The fitted model, for a later stage (e.g. the UniCompress teacher a student distils from).
        trainer.save_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "final.ckpt", weights_only=False)
    return FitRun(model, dm, trainer, seconds)
