"""What ``python run.py`` does, by the config's ``task`` (set by the model's YAML):

- ``compress``: fit the model, write one ``.mcz`` per image, decode it, measure, beside the baselines;
- ``classify``: fit a diagnosis model, test the one the validation split selected;
- ``pretrain``: fit a model whose product is another file (an extractor, a UniCompress prior) and save it.

Each task takes the models of one contract (medcomp.models.contracts; classifiers: ClassifierModule).
"""

from __future__ import annotations

from omegaconf import DictConfig

from medcomp.errors import MedcompError

TASKS = {"compress": "medcomp.tasks.compress", "classify": "medcomp.tasks.classify",
         "pretrain": "medcomp.tasks.pretrain"}
CONTRACTS = {"compress": "medcomp.models.contracts.CompressionModel", "classify": "medcomp.models.diagnosis.classifier.ClassifierModule",
             "pretrain": "medcomp.models.contracts.Pretrainer"}


def check_model_runs_task(cfg: DictConfig, task: str) -> None:
    """A model runs a task only if it holds that task's contract: one line before anything is fitted."""
    from hydra.utils import get_class

    model, contract = get_class(cfg.model._target_), get_class(CONTRACTS[task])
    if not issubclass(model, contract):
        raise MedcompError(f"model={cfg.get('model_name')} ({model.__name__}) cannot run task={task}: it is not a "
                           f"{contract.__name__}")


def run_task(cfg: DictConfig) -> dict:
    """The run. Returns the metrics dict that is also written to ``metrics.json`` (empty on ranks > 0)."""
    import importlib

    from omegaconf.errors import MissingMandatoryValue

    from medcomp.config import check_model_takes_data

    task = cfg.get("task", "compress")
    if task not in TASKS:
        raise MedcompError(f"task={task} is not one of {', '.join(TASKS)}")
    check_model_takes_data(cfg)
    check_model_runs_task(cfg, task)
    try:
        return importlib.import_module(TASKS[task]).run(cfg)
    except MissingMandatoryValue as exc:  # a '???' in the YAML: the user has to give it
        raise MedcompError(f"{exc.full_key} has no value: data={cfg.get('data_name')} needs it on the command "
                           f"line ({exc.full_key}=...)") from None
