"""What ``python run.py`` does, by the config's ``task`` (set by the model's YAML):

- ``compress``: fit the model, write one ``.mcz`` per image, decode it, measure, beside the baselines;
- ``classify``: fit a diagnosis model, test the one the validation split selected;
- ``pretrain``: fit a feature extractor and save it.
"""

from __future__ import annotations

from omegaconf import DictConfig

from medcomp.errors import MedcompError

TASKS = {"compress": "medcomp.tasks.compress", "classify": "medcomp.tasks.classify",
         "pretrain": "medcomp.tasks.pretrain"}


def run_task(cfg: DictConfig) -> dict:
    """The run. Returns the metrics dict that is also written to ``metrics.json`` (empty on ranks > 0)."""
    import importlib

    from omegaconf.errors import MissingMandatoryValue

    from medcomp.config import check_model_takes_data

    task = cfg.get("task", "compress")
    if task not in TASKS:
        raise MedcompError(f"task={task} is not one of {', '.join(TASKS)}")
    check_model_takes_data(cfg)
    try:
        return importlib.import_module(TASKS[task]).run(cfg)
    except MissingMandatoryValue as exc:  # a '???' in the YAML: the user has to give it
        raise MedcompError(f"{exc.full_key} has no value: data={cfg.get('data_name')} needs it on the command "
                           f"line ({exc.full_key}=...)") from None
