"""Per-block SIREN codec: every block gets its own small SIREN, fitted by gradient descent (the INR baseline
of TINC, SCI and UniCompress). Fitting *is* encoding, so the LightningModule builds its networks in ``setup``,
once it knows the blocks and the rate target, and ``export`` writes one ``.mcz`` per image."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from medcomp.codecs.base import Codec, image_header
from medcomp.codecs.container import Container
from medcomp.codecs.deblock import check_strength, deblock, signal_best_strength
from medcomp.codecs.quantize import dequantize, fill_budget, pack_symbols, quantize, top_for_bits, unpack_symbols
from medcomp.data.block_datamodules import denormalise
from medcomp.data.blocks import BlockLayout, assemble_blocks
from medcomp.data.image import Image
from medcomp.errors import MedcompError
from medcomp.models.built_in_setup import BuiltInSetup
from medcomp.nn.siren import (
    BatchedSiren,
    evaluate_in_pieces,
    grid_coordinates,
    siren_param_count,
    siren_shapes,
    width_for_budget,
)
from medcomp.target import Target
from medcomp.utils import devices
from medcomp.utils.devices import compute_device

# Raw floats, or "quantized": per-layer symmetric integers (one scale per weight/bias tensor of all blocks),
# entropy-coded, with as many levels as fill the byte target (the same quantiser as UniCompress's file).
WEIGHT_DTYPES = {"float16": np.float16, "float32": np.float32, "quantized": None}
QUANTIZED_BITS = (8, 16)  # the width is solved for 8-bit weights; the levels then fill the budget up to 16 bits


PACKED_HEADER = 10  # pack_symbols' tag byte + fixed-width packing's header: the placeholder's worst case


def bytes_per_weight(weight_dtype: str) -> float:
    """What one weight costs before fitting: its float size, or 8 bits when quantised (no entropy-coding gain)."""
    return QUANTIZED_BITS[0] / 8 if weight_dtype == "quantized" else np.dtype(WEIGHT_DTYPES[weight_dtype]).itemsize


def siren_container(image: Image, layout: BlockLayout, ranges: np.ndarray, width: int, depth: int, w0: float,
                    weight_dtype: str, weights: bytes | None = None, scales: bytes = b"") -> Container:
    n_params = siren_param_count(width, depth, len(layout.block))
    header = {**image_header(image), "layout": layout.to_dict(), "width": width, "depth": depth, "w0": w0,
              "weight_dtype": weight_dtype, "deblock": 0}  # the strength is chosen once the file is written
    quantized = weight_dtype == "quantized"
    if weights is None:  # a placeholder of the right size, to measure the file before fitting
        weights = bytes(PACKED_HEADER + int(np.ceil(layout.n_blocks * n_params * bytes_per_weight(weight_dtype))))
        scales = bytes(4 * 2 * depth) if quantized else b""
    sections = {"ranges": ranges.astype("<f4").tobytes(), "weights": weights}
    if quantized:
        sections["ws"] = scales
    return Container("siren", header, sections)


def solve_width(image: Image, layout: BlockLayout, ranges: np.ndarray, target: Target, depth: int, w0: float,
                weight_dtype: str) -> int:
    """Widest SIREN whose whole ``.mcz`` (header, ranges, weights) fits the target bytes."""
    budget = target.target_bytes(image)
    itemsize = bytes_per_weight(weight_dtype)
    fixed = len(siren_container(image, layout, ranges, 1, depth, w0, weight_dtype, b"").to_bytes())
    width = width_for_budget((budget - fixed) / layout.n_blocks / itemsize, depth, len(layout.block))
    while width >= 1 and len(siren_container(image, layout, ranges, width, depth, w0, weight_dtype).to_bytes()) > budget:
        width -= 1
    if width < 2:
        raise MedcompError(
            f"{image.name}: target {target.describe()} leaves no room for a SIREN on {layout.n_blocks} blocks of "
            f"{layout.block}; lower the ratio or enlarge data.block_size"
        )
    return width


class SirenCodec(BuiltInSetup, L.LightningModule):
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
        out = []
        for net, width, image, layout, ranges in zip(self.nets, self.widths, dm.images, dm.layouts, dm.block_ranges):
            if hp.weight_dtype != "quantized":
                flat = net.flat_parameters().detach().cpu().numpy().astype(WEIGHT_DTYPES[hp.weight_dtype])
                container = siren_container(image, layout, ranges, width, hp.depth, hp.w0, hp.weight_dtype,
                                            flat.astype(flat.dtype.newbyteorder("<")).tobytes())
            else:
                params = [t.detach().cpu().numpy() for pair in zip(net.weights, net.biases) for t in pair]

                def build(top, params=params, width=width, image=image, layout=layout, ranges=ranges):
                    ints, scales = quantize(params, top)
                    return siren_container(image, layout, ranges, width, hp.depth, hp.w0, hp.weight_dtype,
                                           pack_symbols(ints), scales.astype("<f4").tobytes())

                container = fill_budget(build, self.target.target_bytes(image), *map(top_for_bits, QUANTIZED_BITS))
            out.append(signal_best_strength(container, image.array, layout, decode_siren))
        return out


@torch.no_grad()
def decode_siren(container: Container, chunk_points: int | None = None) -> np.ndarray:
    """Decoded a group of blocks at a time (``chunk_points`` voxels per group): memory is the output image plus
    one group's activations, whatever the image's size. The networks run on medcomp.utils.devices.compute_device()."""
    h = container.header
    device = compute_device()
    chunk_points = chunk_points or devices.chunk_points(1 << 20)
    layout = BlockLayout.from_dict(h["layout"])
    n, d = layout.n_blocks, len(layout.block)
    per_net = siren_param_count(h["width"], h["depth"], d)
    ranges = np.frombuffer(container.sections["ranges"], dtype="<f4")
    net = BatchedSiren(n, d, h["width"], h["depth"], 1, h["w0"])
    if h["weight_dtype"] == "quantized":
        params = dequantize(unpack_symbols(container.sections["weights"]), np.frombuffer(container.sections["ws"], "<f4"),
                            siren_shapes(h["width"], h["depth"], d, n_nets=n))
        flat = np.concatenate([p.reshape(n, -1) for p in params], axis=1)
    else:
        dtype = np.dtype(WEIGHT_DTYPES[h["weight_dtype"]]).newbyteorder("<")
        flat = np.frombuffer(container.sections["weights"], dtype=dtype).astype(np.float32)
    if flat.size != n * per_net or ranges.size != 2 * n:
        raise MedcompError("corrupt .mcz: SIREN weights do not match the header")
    net.load_flat_parameters(torch.from_numpy(flat.reshape(n, per_net)))
    net.to(device)
    coords = grid_coordinates(layout.block).to(device)
    ranges = ranges.reshape(n, 2)
    per = max(1, chunk_points // coords.shape[0])

    def chunks():
        for i in range(0, n, per):
            group = slice(i, min(n, i + per))
            values = evaluate_in_pieces(net, coords.expand(group.stop - i, -1, -1), nets=group).squeeze(-1)
            yield i, denormalise(values.cpu().numpy(), ranges[group])

    return deblock(assemble_blocks(layout, h["dtype"], chunks()), layout, check_strength(h.get("deblock", 0)))

