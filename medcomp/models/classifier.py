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

log = logging.getLogger("medcomp")


class ClassifierModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self._outputs: dict[str, list] = {"val": [], "test": []}
        self.best_val, self.best_epoch, self._best_state = -math.inf, -1, None
        self.test_results: dict = {}

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
        steps = max(1, self.hparams.epochs * len(self.trainer.datamodule.train_dataloader()))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=steps + 1,
                                                    pct_start=0.1, anneal_strategy="cos")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_epoch_end(self):
        if self.current_epoch + 1 >= self.hparams.epochs:
            self.trainer.should_stop = True

    def _collect(self, stage: str, batch):
        mcct, mlct, _ = self.heads(batch)
        self._outputs[stage].append((torch.sigmoid(mcct).detach().cpu(), torch.sigmoid(mlct).detach().cpu(),
                                     batch["label"].cpu(), batch["findings"].cpu()))

    def validation_step(self, batch, batch_idx):
        self._collect("val", batch)

    def test_step(self, batch, batch_idx):
        self._collect("test", batch)

    def _gathered(self, stage: str):
        outs, self._outputs[stage] = self._outputs[stage], []
        return [torch.cat(parts) for parts in zip(*outs)]

    def on_validation_epoch_end(self):
        if not self._outputs["val"]:
            return
        p_mcct, p_mlct, y, findings = self._gathered("val")
        value = auroc(p_mcct, y)
        self.log_dict({"val/auroc": value, "val/auroc_findings": auroc(p_mlct, findings)})
        # Model selection on the validation split only: keep the best epoch's weights, restored before testing.
        if value > self.best_val:
            self.best_val, self.best_epoch = value, self.current_epoch
            self._best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}

    def on_fit_end(self):
        if self._best_state is not None:
            self.load_state_dict(self._best_state)
            log.info("restored the epoch-%d weights (best val AUROC %.4f)", self.best_epoch, self.best_val)

    def on_test_epoch_end(self):
        p_mcct, p_mlct, y, findings = self._gathered("test")
        self.test_results = {"mcct": bootstrap_auroc(p_mcct, y), "mlct_auroc": auroc(p_mlct, findings),
                             "n_test": len(y),
                             # per image, in test-loader order: what paired comparisons between runs need
                             "predictions": {"mcct": p_mcct.numpy(), "mlct": p_mlct.numpy(), "label": y.numpy(),
                                             "findings": findings.numpy()}}
        self.log_dict({"test/auroc": self.test_results["mcct"]["auroc"], "test/auroc_findings": auroc(p_mlct, findings)})

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
        raise MedcompError(f"model.teacher_ckpt is required for {what} (train the teacher first; see the README)")
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
