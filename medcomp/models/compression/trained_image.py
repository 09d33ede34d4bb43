"""What the trained 2-D image codecs (CAL-VAE, RNN-Conv) share on the model side: the LightningModule base with its
training loop and the coding steps each network defines. Their files (the weights file, the codec that writes and
reads ``.mcz``): medcomp.codecs.trained2d."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from medcomp.codecs.trained2d import WEIGHTS_FORMAT, TrainedCodec
from medcomp.models.built_in_setup import size_empty_buffers
from medcomp.models.contracts import CompressionModel


class TrainedImageModel(CompressionModel, L.LightningModule):
    """Base of the trained codecs. Subclasses define the network, ``training_loss`` and the three coding steps:
    ``analyse`` (image → encoder state, once), ``stream`` (state, knob → bytes) and ``synthesise`` (bytes, knob →
    image); the knob is searched between ``knob_lo`` and ``knob_hi``."""

    codec_name = ""
    stride = 16
    knob_lo, knob_hi, knob_integer, knob_increasing = 0.0, 1.0, False, True
    knob_name = "knob"  # the header key that carries it (a new meaning gets a new name: old files then fail clearly)

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def analyse(self, x: torch.Tensor):
        raise NotImplementedError

    def stream(self, state, knob: float) -> bytes:
        raise NotImplementedError

    def synthesise(self, data: bytes, knob: float, padded_hw: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def stream_length(self, state, knob: float) -> int | None:
        """The stream's length in bytes where it is known without coding it (the rate search then codes once)."""
        return None

    def prepare_coding(self) -> None:
        """Called once the weights are final, before any coding (entropy models build their tables here)."""

    def freeze_coding(self) -> None:
        """Called when the weights are final, before they are saved: what the decoder must reproduce bit for bit is
        computed here, once, and saved with the weights (CAL-VAE's entropy tables), never recomputed elsewhere."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # Buffers frozen from the trained weights (freeze_coding) are sized by them: a fresh module has them empty.
        size_empty_buffers(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def training_step(self, batch, batch_idx):
        loss, logs = self.training_loss(batch)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    # --- weights file -------------------------------------------------------------------------------------------
    def save_weights(self, path: Path, made_by: str = "") -> Path:
        from medcomp.utils.atomic import atomic_path

        self.freeze_coding()
        hparams = {k: v for k, v in self.hparams.items() if k != "target"}
        payload = {"format": WEIGHTS_FORMAT, "model": self.codec_name, "hparams": hparams, "made_by": made_by,
                   "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path

    def as_codec(self) -> TrainedCodec:
        """This network, trained, as a codec: its weights file is saved in the run directory (``output_dir``, set
        by the fit) and the codec codes with the module in memory, as ``medcomp compress --ckpt`` would."""
        if getattr(self, "_codec", None) is None:
            path = self.save_weights(Path(self.output_dir) / "checkpoints" / f"{self.codec_name}.pt",
                                     made_by=self.made_by)
            self.eval()
            self.prepare_coding()
            self._codec = TrainedCodec.holding(self, path)
        return self._codec

    output_dir = "."
    made_by = ""
