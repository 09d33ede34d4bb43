"""The UniCompress ``.mcz`` format (seed 001): the SIREN weights (one network, or one per group of blocks; Δ from a
shipped prior when the header names one), the codewords that blocks use and one index per block, quantised and
entropy-coded, plus the value range and a deblocking strength. The container writer and the decoder live here
together; medcomp.models.compression.unicompress fits the networks and chooses the levels that fill the target."""

from __future__ import annotations

import numpy as np
import torch

from medcomp.codecs.base import FLOAT32_MAX, image_header
from medcomp.codecs.container import Container
from medcomp.codecs.deblock import check_strength, deblock
from medcomp.codecs.quantize import dequantize, pack_symbols, quantize, top_for_bits, unpack_symbols
from medcomp.codecs.unicompress_prior import Prior, prior_named
from medcomp.data.block_datamodules import denormalise
from medcomp.data.blocks import BlockLayout, assemble_blocks
from medcomp.data.image import Image
from medcomp.errors import CorruptFileError
from medcomp.nn.siren import BatchedSiren, block_coordinates, evaluate_in_pieces, siren_shapes
from medcomp.utils import devices
from medcomp.utils.devices import compute_device


def unicompress_container(image: Image, layout: BlockLayout, value_range, width: int, depth: int, w0: float,
                          code_dim: int, weight_top: int, codebook_bits: int, siren_params: list[np.ndarray],
                          codebook: np.ndarray, indices: np.ndarray, codec: str = "unicompress",
                          coordinates: str = "block", w0_hidden: float | None = None, groups: int = 1,
                          deblock: int = 0, prior: Prior | None = None) -> Container:
    """Quantise and pack everything the decoder needs. Only the codewords some block uses are stored.

    ``groups``: SIRENs in the file, each for an equal run of consecutive blocks (raster order). Written to the header
    only when > 1, so one-network files keep the bytes they had before the option existed.
    ``prior``: the file stores Δ = weights − prior (every group's network from the same prior) and names the prior by
    id and sha256; the decoder adds the installed prior back (medcomp.models.compression.unicompress_prior.prior_named)."""
    used, remapped = np.unique(indices, return_inverse=True)
    if prior is not None:
        siren_params = [w - p for w, p in zip(siren_params, prior.params)]
    w_ints, w_scales = quantize(siren_params, weight_top)
    c_ints, c_scales = quantize([codebook[used]], top_for_bits(codebook_bits))
    header = {**image_header(image), "layout": layout.to_dict(), "range": [float(v) for v in value_range],
              "width": width, "depth": depth, "w0": w0,
              "w0_hidden": w0 if w0_hidden is None else w0_hidden, "code_dim": code_dim, "n_codes": int(used.size),
              "weight_levels": 2 * weight_top + 1, "codebook_bits": codebook_bits, "coordinates": coordinates,
              "deblock": deblock}
    if groups > 1:
        header["groups"] = groups
    if prior is not None:
        header["prior"] = {"id": prior.id, "sha256": prior.sha256}
    sections = {"w": pack_symbols(w_ints), "ws": w_scales.astype("<f4").tobytes(), "cb": pack_symbols(c_ints),
                "cs": c_scales.astype("<f4").tobytes(), "idx": pack_symbols(remapped)}
    return Container(codec, header, sections)


@torch.no_grad()
def decode_unicompress(container: Container, chunk_points: int | None = None) -> np.ndarray:
    """The network runs on medcomp.utils.devices.compute_device() (``--device``), a run of blocks at a time."""
    h = container.header
    device = compute_device()
    chunk_points = chunk_points or devices.chunk_points(1 << 18)
    layout = BlockLayout.from_dict(h["layout"])
    d, n = len(layout.block), layout.n_blocks
    in_dim = d + h["code_dim"]
    groups = h.get("groups", 1)
    if not isinstance(groups, int) or groups < 1 or n % groups:
        raise CorruptFileError(f"corrupt .mcz: {groups!r} SIREN groups do not divide {n} blocks")
    shapes = siren_shapes(h["width"], h["depth"], in_dim, n_nets=groups)
    params = dequantize(unpack_symbols(container.sections["w"]), np.frombuffer(container.sections["ws"], "<f4"), shapes)
    if "prior" in h:  # the file holds Δ from a shipped prior
        prior = prior_named(h["prior"])
        if not prior.matches(h["width"], h["depth"], in_dim):
            raise CorruptFileError(f"corrupt .mcz: its network ({h['width']} wide, {h['depth']} deep, {in_dim} inputs) "
                                   f"is not the shape of prior {prior.id!r}")
        params = [d + p for d, p in zip(params, prior.params)]
    codebook = dequantize(unpack_symbols(container.sections["cb"]), np.frombuffer(container.sections["cs"], "<f4"),
                          [(h["n_codes"], h["code_dim"])])[0]
    idx = unpack_symbols(container.sections["idx"])
    if idx.size != n or (idx.size and (idx.min() < 0 or idx.max() >= h["n_codes"])):
        raise CorruptFileError("corrupt .mcz: block indices do not match the header")
    net = BatchedSiren(groups, in_dim, h["width"], h["depth"], 1, h["w0"], h.get("w0_hidden"))  # older: one w0
    try:  # files written before the option used the block frame
        coords, corners = block_coordinates(layout, h.get("coordinates", "block"))
    except ValueError as exc:
        raise CorruptFileError(f"corrupt .mcz: {exc}") from None
    with torch.no_grad():
        for p, v in zip([q for pair in zip(net.weights, net.biases) for q in pair], params):
            p.copy_(torch.from_numpy(v))
    net.to(device)
    coords, corners = coords.to(device), corners.to(device)
    codes = torch.from_numpy(codebook)[torch.from_numpy(idx)].to(device)
    v = coords.shape[0]
    per_group = n // groups
    per = min(per_group, max(1, chunk_points // v))
    value_range = np.asarray(h["range"], dtype=np.float64)
    if value_range.shape != (2,) or not np.all(np.abs(value_range) <= FLOAT32_MAX) or value_range[0] > value_range[1]:
        raise CorruptFileError(f"corrupt .mcz: value range {h['range']!r} is not (low, high) within float32")
    value_range = value_range.astype(np.float32)[None]

    def chunks():  # a run of blocks at a time (within one group): memory is the output plus one run's activations
        for g in range(groups):
            for i in range(g * per_group, (g + 1) * per_group, per):
                j = min(i + per, (g + 1) * per_group)
                c = codes[i:j]
                inp = torch.cat([corners[i:j, None, :] + coords, c[:, None, :].expand(-1, v, -1)], dim=-1)
                values = evaluate_in_pieces(net, inp.reshape(1, -1, in_dim), nets=slice(g, g + 1))
                values = values.reshape(j - i, v).cpu().numpy()
                yield i, denormalise(values, np.repeat(value_range, j - i, axis=0))

    return deblock(assemble_blocks(layout, h["dtype"], chunks()), layout, check_strength(h.get("deblock", 0)))
