"""What a run needs from its surroundings: where to resume from, and how a multirun job and Lightning's DDP ranks
agree on which job they are (Hydra and Lightning each assume they own ``sys.argv`` and the output directory)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from medcomp.errors import MedcompError
from medcomp.utils.parallel import usable_cpus

log = logging.getLogger("medcomp")


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
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    mine = sorted(o for o in HydraConfig.get().overrides.task if not o.startswith("resume="))
    here = Path(cfg.paths.output_dir).resolve()
    runs = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
    for run in sorted(runs.glob("*"), reverse=True):
        last, overrides = run / "checkpoints" / "last.ckpt", run / ".hydra" / "overrides.yaml"
        if run.resolve() == here or not last.is_file() or not overrides.is_file() or (run / "metrics.json").exists():
            continue
        theirs = sorted(o for o in OmegaConf.load(overrides) if not str(o).startswith("resume="))
        if theirs == mine:
            log.info("resume=auto: continuing %s", last)
            return last
    log.info("resume=auto: no unfinished run with these overrides under %s; starting afresh", runs)
    return None


_RANK_VARIABLES = {"LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                   "MASTER_PORT", "PL_TRAINER_GPUS"}
_ENV_AT_START = set(os.environ)


def this_job_only(cfg: DictConfig) -> None:
    """Multirun × DDP. Lightning starts ranks > 0 by re-running ``sys.argv`` (with ``-m`` and the whole grid)
    and puts them in ``hydra.run.dir`` (a new timestamped folder): rank 1 would re-launch the sweep. Inside a
    multirun job, make both mean this job: its own overrides, its own directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    # The previous job's DDP left its rank variables in this process: Lightning would then think the ranks are
    # started by someone else and wait for a rank 1 that never comes. Clear what was not there at start-up.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in _RANK_VARIABLES - _ENV_AT_START:
        os.environ.pop(key, None)
    hydra_cfg = HydraConfig.instance().cfg.hydra
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = str(cfg.paths.output_dir)
    sys.argv = [sys.argv[0], *HydraConfig.get().overrides.task]


def command_line() -> str:
    """The run.py command that made this run (for weights files that must say how they were made)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return "python run.py " + " ".join(HydraConfig.get().overrides.task)
    return ""


def trainer_overrides(cfg: DictConfig) -> list[str]:
    """A fitted baseline is fitted like the run's model: same accelerator, devices, strategy, nodes and precision
    (and the same medcomp.fitting.trainer_rules), so that under DDP every rank takes part in its fit (rank zero
    alone would wait for ranks that have left)."""
    out = []
    if cfg.trainer.get("fast_dev_run"):
        out.append("+trainer.fast_dev_run=true")
    for key in ("accelerator", "devices", "strategy", "num_nodes", "precision"):
        if isinstance(cfg.trainer.get(key), (str, int)):
            out.append(f"++trainer.{key}={cfg.trainer.get(key)}")
    return out


def machine() -> dict:
    """Where a run or a benchmark ran: the one record every metrics.json and results JSON carries.

    torch_threads is part of the result: a seeded CPU fit gives the same bytes at the same thread count, under any
    load, and other bytes at another (UniCompress, abdomen CT, CR 256, 100 steps: 28.5991 dB at 1 thread twice,
    28.5575 at 2 twice): the matmul reductions are split by thread. None in a process that never loaded torch (the
    classical benchmarks keep torch out of their memory)."""
    import platform

    torch = sys.modules.get("torch")
    return {"node": platform.node(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpus": usable_cpus(),
            "torch_threads": torch.get_num_threads() if torch is not None else None}


def start_loggers(cfg: DictConfig) -> list:
    """The configured Lightning loggers, with the whole resolved config as their hyperparameters."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg and "_target_" in lg]
    config_plain = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(config_plain)
    return loggers


class _NoAdvertisements(logging.Filter):
    """Drops Lightning's "💡 Tip: … try installing litlogger / litmodels" lines: they are not about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def one_log_stream() -> None:
    """Every log line once. Importing ``lightning`` gives its logger a console handler of its own while its records
    also reach the root logger, which Hydra has given a console and a file handler: each Lightning banner was printed
    twice. Under Hydra (root has handlers) Lightning's own console handler goes; its records keep reaching the
    run's console and run.log through the root."""
    import lightning  # noqa: F401 — its import is what adds the handler

    root = logging.getLogger()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if root.handlers:
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertisements) for f in rank_zero.filters):
        rank_zero.addFilter(_NoAdvertisements())
