"""The per-block SIREN file format: one small SIREN a block, its weights as floats or quantised and entropy-coded
(the same quantiser as UniCompress's file), the block value ranges, and a deblocking strength. The encoder side
(:func:`siren_file`, and :func:`solve_width`, the widest network whose file fits a target) and the decoder
(:func:`decode_siren`) live here together; medcomp.models.compression.per_block_siren fits the networks."""

from __future__ import annotations

import numpy as np
import torch

from medcomp.codecs.base import image_header
from medcomp.codecs.container import Container
from medcomp.codecs.deblock import check_strength, deblock, signal_best_strength
from medcomp.codecs.quantize import dequantize, pack_symbols, quantize, top_for_bits, unpack_symbols
from medcomp.data.block_datamodules import denormalise
from medcomp.data.blocks import BlockLayout, assemble_blocks
from medcomp.data.image import Image
from medcomp.errors import MedcompError
from medcomp.nn.siren import (
    BatchedSiren,
    evaluate_in_pieces,
    grid_coordinates,
    siren_param_count,
    siren_shapes,
)
from medcomp.target import Target, fill_budget, widest_fitting
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
    width = widest_fitting(lambda w: len(siren_container(image, layout, ranges, w, depth, w0, weight_dtype).to_bytes()),
                           target.target_bytes(image))
    if width < 2:
        raise MedcompError(
            f"{image.name}: target {target.describe()} leaves no room for a SIREN on {layout.n_blocks} blocks of "
            f"{layout.block}; lower the ratio or enlarge data.block_size"
        )
    return width


def siren_file(image: Image, layout: BlockLayout, ranges: np.ndarray, net: BatchedSiren, width: int, depth: int,
               w0: float, weight_dtype: str, target_bytes: float) -> Container:
    """The file of a fitted per-block SIREN: weights rounded to ``weight_dtype``, or quantised with the most levels
    that fit ``target_bytes``; the header's deblocking strength is the one that suits the decoded file best."""
    if weight_dtype != "quantized":
        flat = net.flat_parameters().detach().cpu().numpy().astype(WEIGHT_DTYPES[weight_dtype])
        container = siren_container(image, layout, ranges, width, depth, w0, weight_dtype,
                                    flat.astype(flat.dtype.newbyteorder("<")).tobytes())
    else:
        params = [t.detach().cpu().numpy() for pair in zip(net.weights, net.biases) for t in pair]

        def build(top):
            ints, scales = quantize(params, top)
            return siren_container(image, layout, ranges, width, depth, w0, weight_dtype, pack_symbols(ints),
                                   scales.astype("<f4").tobytes())

        container = fill_budget(build, target_bytes, *map(top_for_bits, QUANTIZED_BITS))
    return signal_best_strength(container, image.array, layout, decode_siren)


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

