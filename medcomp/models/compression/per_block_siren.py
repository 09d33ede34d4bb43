"""Per-block SIREN codec: every block gets its own small SIREN, fitted by gradient descent (the INR baseline
of TINC, SCI and UniCompress). Fitting *is* encoding, so the LightningModule builds its networks in ``setup``,
once it knows the blocks and the rate target, and ``export`` writes one ``.mcz`` per image."""

from __future__ import annotations

import lightning as L
import torch

from medcomp.codecs.base import Codec
from medcomp.codecs.container import Container
from medcomp.codecs.siren import WEIGHT_DTYPES, siren_file, solve_width  # the file format
from medcomp.errors import MedcompError
from medcomp.models.built_in_setup import BuiltInSetup
from medcomp.models.contracts import ImageFit
from medcomp.nn.siren import BatchedSiren, grid_coordinates
from medcomp.target import Target


class PerBlockSiren(BuiltInSetup, ImageFit, L.LightningModule):
    full_precision_fit = True  # fp32 whatever trainer.precision says (medcomp.fitting.trainer_rules)

    def __init__(self, depth: int = 5, w0: float = 30.0, lr: float = 1e-3, weight_dtype: str = "float16",
                 fit_steps: int = 1500, target: Target | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["target"])
        if weight_dtype not in WEIGHT_DTYPES:
            raise MedcompError(f"model.weight_dtype must be one of {list(WEIGHT_DTYPES)}")
        self.target = target
        self.nets = torch.nn.ModuleList()
        self.widths: list[int] = []

    def setup(self, stage=None):
        if len(self.nets):
            return
        dm = self.data
        hp = self.hparams
        for i, (image, layout, ranges) in enumerate(zip(dm.images, dm.layouts, dm.block_ranges)):
            width = solve_width(image, layout, ranges, self.target, hp.depth, hp.w0, hp.weight_dtype)
            self.widths.append(width)
            self.nets.append(BatchedSiren(layout.n_blocks, len(layout.block), width, hp.depth, 1, hp.w0))
            self.register_buffer(f"coords_{i}", grid_coordinates(layout.block), persistent=False)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        steps = max(1, self.trainer.max_steps if self.trainer.max_steps > 0 else self.hparams.fit_steps)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=self.hparams.lr * 0.05)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        sse, count = 0.0, 0
        for i, (net, (idx, values)) in enumerate(zip(self.nets, batch)):
            coords = getattr(self, f"coords_{i}")[idx]
            pred = net(coords).squeeze(-1)
            sse = sse + torch.sum((pred - values) ** 2)
            count += values.numel()
        loss = sse / count
        self.log("train/loss", loss, prog_bar=True)
        # PSNR of the normalised blocks (range 2): a training signal only; the reported PSNR comes from the file.
        self.log("train/psnr_norm", 10 * torch.log10(4.0 / loss.detach()), prog_bar=True)
        return loss

    def as_codec(self) -> Codec:
        """This fit as a codec: it encodes the images it was fitted on (their :meth:`export` files) and decodes any
        file of its kind (decoding needs only the file)."""
        from medcomp.codecs.registry import get_codec

        return get_codec("siren").holding(self)

    def export(self) -> list[Container]:
        """One container per image: weights rounded to ``weight_dtype``, or quantised with the most levels that fit;
        the header's deblocking strength is the one that suits the decoded file best."""
        dm = self.data
        hp = self.hparams
        return [siren_file(image, layout, ranges, net, width, hp.depth, hp.w0, hp.weight_dtype,
                           self.target.target_bytes(image))
                for net, width, image, layout, ranges in zip(self.nets, self.widths, dm.images, dm.layouts,
                                                             dm.block_ranges)]

