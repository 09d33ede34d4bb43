"""Lightning callbacks of the framework's own."""

from __future__ import annotations

import time

import lightning as L

from medcomp.codecs.registry import decode_container
from medcomp.metrics import psnr


class FilePsnrTrace(L.Callback):
    """Every ``every`` steps: export the file, decode it and record (fit seconds, PSNR) of the first image.

    The fit clock excludes the time spent here, so the trace answers "how long does this codec's encoder need to
    reach X dB" with the PSNR of the real file, not of a training loss. Used by the encode-time-at-equal-PSNR
    benchmark (experiments/unicompress_rd.py).
    """

    def __init__(self, every: int = 50):
        self.every = every
        self.trace: list[dict] = []
        self._fit_s = 0.0
        self._t0 = 0.0

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def _record(self, trainer, pl_module):
        self._fit_s += time.perf_counter() - self._t0
        image = trainer.datamodule.images[0]
        was_training = pl_module.training
        pl_module.eval()
        decoded = decode_container(pl_module.export()[0])
        pl_module.train(was_training)
        self.trace.append({"step": trainer.global_step, "fit_s": self._fit_s, "psnr": psnr(image.array, decoded.array)})
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self._record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if not self.trace or self.trace[-1]["step"] != trainer.global_step:
            self._record(trainer, pl_module)

    def seconds_to(self, target_psnr: float) -> float | None:
        """Fit seconds at the first trace point at or above ``target_psnr`` (None if never reached)."""
        return next((p["fit_s"] for p in self.trace if p["psnr"] >= target_psnr), None)
