"""What the two diagnosis models (MLCAK, CT-Lite) share: two heads — MCCT (normal vs abnormal, binary) and MLCT
(multi-label local findings) — validation AUROC with model selection on it, test AUROC with a bootstrap interval,
an epoch budget, and loading a frozen teacher from an earlier run's checkpoint."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from medcomp.errors import MedcompError
from medcomp.metrics.classification import auroc, bootstrap_auroc
from medcomp.utils.distributed import gather_in_order

log = logging.getLogger("medcomp")


class ClassifierModule(L.LightningModule):
    # Tensors held outside parameters and buffers on purpose: the best epoch's weights, a copy restored at fit end.
    TRANSIENT_TENSORS = ("_best_state",)

    def __init__(self):
        super().__init__()
        self._outputs: dict[str, list] = {"val": [], "test": []}
        # The selection, in buffers: checkpoints and ddp_spawn's hand-back to the main process keep them.
        self.register_buffer("best_val_auroc", torch.tensor(-math.inf, dtype=torch.float64))
        self.register_buffer("best_val_epoch", torch.tensor(-1))
        self._best_state = None
        self.test_results: dict = {}

    def attention_maps(self, batch) -> dict[str, list] | None:
        """Class-token attention per level for a figure (MLCAK's ViTs); None: the model has none to show."""
        return None

    @property
    def best_val(self) -> float:
        return float(self.best_val_auroc)

    @property
    def best_epoch(self) -> int:
        return int(self.best_val_epoch)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("best_val_auroc", "best_val_epoch"):  # checkpoints written before they were buffers
            state_dict.setdefault(prefix + name, getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # Subclasses: heads(batch) → (mcct logits (B,), mlct logits (B, K), extras dict) and training_step.
    def heads(self, batch):
        raise NotImplementedError

    @staticmethod
    def classification_loss(mcct: torch.Tensor, mlct: torch.Tensor, batch) -> torch.Tensor:
        return (F.binary_cross_entropy_with_logits(mcct, batch["label"].float())
                + F.binary_cross_entropy_with_logits(mlct, batch["findings"]))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        # this rank's optimiser steps over the fit (its shard of each epoch, max_epochs = model.epochs)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=steps + 1,
                                                    pct_start=0.1, anneal_strategy="cos")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _collect(self, stage: str, batch):
        mcct, mlct, _ = self.heads(batch)
        # float32 on the host: under bf16-mixed the logits are bf16, which NumPy cannot take
        self._outputs[stage].append((torch.sigmoid(mcct).detach().float().cpu(), torch.sigmoid(mlct).detach().float().cpu(),
                                     batch["label"].cpu(), batch["findings"].cpu()))

    def validation_step(self, batch, batch_idx):
        self._collect("val", batch)

    def test_step(self, batch, batch_idx):
        self._collect("test", batch)

    def _gathered(self, stage: str, across_ranks: bool = True):
        """This stage's scores and labels over the whole split, in loader order: ``across_ranks``, the same on every
        rank (each rank scored its own unpadded shard: medcomp.utils.distributed); else this process's alone."""
        outs, self._outputs[stage] = self._outputs[stage], []
        # a rank whose shard is empty sends 1-D empties: torch.cat skips them beside the other ranks' (n, K) parts
        parts = [torch.cat(p) for p in zip(*outs)] if outs else \
            [torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0)]
        return gather_in_order(parts) if across_ranks else parts

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self._outputs["val"] = []
            return
        p_mcct, p_mlct, y, findings = self._gathered("val")
        if not len(y):
            return
        value = auroc(p_mcct, y)
        # the same numbers on every rank (gathered): no sync needed, and every rank picks the same best epoch
        self.log_dict({"val/auroc": value, "val/auroc_findings": auroc(p_mlct, findings)}, rank_zero_only=True)
        # Model selection on the validation split only: keep the best epoch's weights, restored before testing.
        if value > self.best_val:
            self.best_val_auroc.fill_(value)
            self.best_val_epoch.fill_(self.current_epoch)
            self._best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}

    def on_fit_end(self):
        if self._best_state is not None:
            self.load_state_dict(self._best_state)
            log.info("restored the epoch-%d weights (best val AUROC %.4f)", self.best_epoch, self.best_val)

    def on_test_epoch_end(self):
        self.test_results = self._test_results()
        self.log_dict({"test/auroc": self.test_results["mcct"]["auroc"],
                       "test/auroc_findings": self.test_results["mlct_auroc"]}, rank_zero_only=True)

    def _test_results(self, across_ranks: bool = True) -> dict:
        p_mcct, p_mlct, y, findings = self._gathered("test", across_ranks)
        return {"mcct": bootstrap_auroc(p_mcct, y), "mlct_auroc": auroc(p_mlct, findings), "n_test": len(y),
                # per image, in test-loader order: what paired comparisons between runs need
                "predictions": {"mcct": p_mcct.numpy(), "mlct": p_mlct.numpy(), "label": y.numpy(),
                                "findings": findings.numpy()}}

    @torch.no_grad()
    def test_in_this_process(self, loader, precision_context=None) -> dict:
        """The test split scored by this process alone, outside the trainer (rank zero, after a fit under any
        strategy: ``trainer.test`` from one rank would wait on ranks that have left). Sets ``test_results``."""
        import contextlib

        was_training = self.training
        self.eval()
        with precision_context or contextlib.nullcontext():
            for batch in loader:
                self._collect("test", {k: v.to(self.device) for k, v in batch.items()})
        self.train(was_training)
        self.test_results = self._test_results(across_ranks=False)
        return self.test_results

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "teacher", None) is not None:  # a frozen teacher stays in eval mode (no dropout)
            self.teacher.eval()
        return self

    def trainable_parameters(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("teacher."))


def load_teacher(cls, path: str | None, what: str, distill_flag: str) -> L.LightningModule:
    """A frozen, eval-mode ``cls`` from the checkpoint of an earlier run (``checkpoints/final.ckpt``), built without
    a teacher of its own (``distill_flag`` off)."""
    if not path:
        raise MedcompError(f"model.teacher_ckpt is required for {what} (train the teacher first: docs/methods.md, Diagnosis)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise MedcompError(f"{p}: teacher checkpoint not found")
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    hp = dict(ckpt.get("hyper_parameters", {}))
    hp.update({"teacher_ckpt": None, distill_flag: False})
    try:
        teacher = cls(**hp)
        teacher.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if not k.startswith("teacher.")})
    except (TypeError, RuntimeError, KeyError) as exc:
        raise MedcompError(f"{p}: not a {cls.__name__} teacher checkpoint ({str(exc).splitlines()[0]})") from exc
    teacher.eval().requires_grad_(False)
    return teacher
