"""W&B that never needs the network: offline unless the user has logged in (or set WANDB_MODE)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC", Path.home() / ".netrc")).authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def wandb_mode() -> str:
    return os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


def make_wandb_logger(save_dir: str, project: str = "medcomp", name: str | None = None, group: str | None = None,
                      tags: list | None = None, **kwargs):
    """Lightning's WandbLogger with the mode decided here. The run directory sits in the Hydra output dir."""
    from lightning.pytorch.loggers import WandbLogger

    os.makedirs(save_dir, exist_ok=True)
    mode = wandb_mode()
    return WandbLogger(save_dir=save_dir, project=project, name=name, group=group, tags=list(tags or []),
                       offline=(mode == "offline"), mode=mode, settings=_settings(), **kwargs)


def _settings():
    import wandb

    # No console capture, no code upload, no git probing: quiet and deterministic offline runs.
    return wandb.Settings(console="off", save_code=False, disable_git=True, silent=True)


def finish_wandb(exit_code: int = 0) -> None:
    """Always called at the end of a job, failed or not, so a multirun never hangs on an open run."""
    import sys

    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def wandb_loggers(loggers: list) -> list:
    """The run's W&B loggers (Lightning's WandbLogger), for what only W&B keeps: images, tables, artifacts."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def log_files(logger, name: str, kind: str, paths: list) -> None:
    """Files as one W&B artifact of the logger's run (offline runs keep it for `wandb sync`)."""
    import wandb

    files = [Path(p) for p in paths if Path(p).is_file()]
    if not files:
        return
    art = wandb.Artifact(f"{name}-{logger.experiment.id}", type=kind)
    for p in files:
        art.add_file(str(p))
    logger.experiment.log_artifact(art)
