"""SIREN (Sitzmann et al. 2020), batched so that many independent networks train in one matmul.

Each of ``n_nets`` networks has its own weights; ``forward`` takes coordinates (n_nets, points, in_dim).
Written by hand because no maintained library ships a *batched* SIREN (one bmm per layer for all blocks),
which is what makes per-block fitting affordable on a CPU.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medcomp.target import widest_fitting


def siren_param_count(width: int, depth: int, in_dim: int, out_dim: int = 1) -> int:
    """Parameters of one SIREN with ``depth`` linear layers: (L−2)h² + (in+L−1+out)h + out."""
    return (depth - 2) * width * width + (in_dim + depth - 1 + out_dim) * width + out_dim


def widest_siren(params: float, depth: int, in_dim: int, out_dim: int = 1) -> int:
    """Largest width whose parameter count fits ``params`` (medcomp.target.widest_fitting, the one width solve)."""
    return widest_fitting(lambda width: siren_param_count(width, depth, in_dim, out_dim), params)


def width_scaled_lr(lr: float, reference_width: int, width: int) -> float:
    """``lr`` × min(1, √(reference width / width)): a wider SIREN takes smaller steps (UniCompress's fit and the
    inner fit of its prior's meta-learning use the same rule)."""
    return lr * min(1.0, math.sqrt(reference_width / width))


class BatchedSiren(nn.Module):
    def __init__(self, n_nets: int, in_dim: int, width: int, depth: int, out_dim: int = 1, w0: float = 30.0,
                 w0_hidden: float | None = None):
        """``w0`` scales the first layer's sine (the input frequencies), ``w0_hidden`` the later ones (default: the
        same, as in the paper). Kept apart because a frame that spans a whole image needs higher input frequencies,
        while a higher hidden w0 acts as a larger step size and can make the fit diverge."""
        super().__init__()
        if depth < 2:
            raise ValueError("a SIREN needs at least 2 layers")
        self.w0 = w0
        self.w0_hidden = w0 if w0_hidden is None else w0_hidden  # read every step: a float, not a device tensor
        # ... mirrored in a buffer, so that a restart's new w0 travels with the weights (checkpoints, ddp_spawn)
        self.register_buffer("w0_hidden_value", torch.tensor(float(self.w0_hidden), dtype=torch.float64))
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(n_nets, a, b)) for a, b in zip(dims[:-1], dims[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(n_nets, 1, b)) for b in dims[1:])
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, w0_hidden: float | None = None) -> None:
        """SIREN init, in place (an optimizer holding these parameters keeps them): first layer U(−1/n, 1/n), later
        ones U(±√(6/n)/w0_hidden). ``w0_hidden`` changes the later layers' w0 first (a restart after a collapse)."""
        if w0_hidden is not None:
            self.w0_hidden = w0_hidden
            self.w0_hidden_value.fill_(float(w0_hidden))
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            fan_in = w.shape[1]
            bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / self.w0_hidden
            w.uniform_(-bound, bound)
            b.uniform_(-bound, bound)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "w0_hidden_value"
        if key in state_dict:  # read once here, never in a step (no host sync)
            self.w0_hidden = float(state_dict[key])
        else:  # weights saved before the buffer existed: keep the constructor's
            state_dict[key] = self.w0_hidden_value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, coords: torch.Tensor, nets: slice | None = None) -> torch.Tensor:
        """``nets``: evaluate only those networks (coords then has their count as first dim), e.g. to decode a
        large image a group of blocks at a time."""
        x = coords
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if nets is not None:
                w, b = w[nets], b[nets]
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.sin((self.w0 if i == 0 else self.w0_hidden) * x)
        return x

    def flat_parameters(self) -> torch.Tensor:
        """All parameters, per network, in a fixed order: (n_nets, params_per_net)."""
        parts = []
        for w, b in zip(self.weights, self.biases):
            parts += [w.reshape(w.shape[0], -1), b.reshape(b.shape[0], -1)]
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def load_flat_parameters(self, flat: torch.Tensor) -> None:
        pos = 0
        for w, b in zip(self.weights, self.biases):
            for p in (w, b):
                n = p[0].numel()
                p.copy_(flat[:, pos : pos + n].reshape(p.shape))
                pos += n
        if pos != flat.shape[1]:
            raise ValueError(f"expected {pos} parameters per network, got {flat.shape[1]}")


DECODE_PIECE_POINTS = 8192  # points a decode step takes: its 64-wide activations (2 MB) stay in the CPU's cache


@torch.no_grad()
def evaluate_in_pieces(net: BatchedSiren, x: torch.Tensor, nets: slice | None = None,
                       piece_points: int = DECODE_PIECE_POINTS) -> torch.Tensor:
    """``net(x, nets)`` for decoding, (k, points, in_dim) → (k, points, out): the w0 factors folded into the weights
    and biases once (sin(w0·(xW + b)) = sin(x·w0W + w0b): one pass over the activations less a layer), the sines
    taken in place, and the points in pieces of ``piece_points`` (over all k networks) so that every activation stays
    in cache. On one core of this machine, a width-64 depth-4 UniCompress network over 2 M points: 3.2 s in chunks
    of 2^18 points, 0.93 s so (40 GFLOP/s of matmul work; sin and matmul are then about half each)."""
    layers = len(net.weights)
    ws = [w[nets] if nets is not None else w for w in net.weights]
    bs = [b[nets] if nets is not None else b for b in net.biases]
    scales = [net.w0] + [net.w0_hidden] * (layers - 2) + [1.0]
    ws = [w * s if s != 1.0 else w for w, s in zip(ws, scales)]
    bs = [b * s if s != 1.0 else b for b, s in zip(bs, scales)]
    k, points = x.shape[:2]
    out = torch.empty(k, points, ws[-1].shape[-1], dtype=x.dtype, device=x.device)
    # a GPU wants large launches: the caller's chunk in one piece there
    step = max(1, piece_points // max(k, 1)) if x.device.type == "cpu" else points
    for start in range(0, points, step):
        h = x[:, start : start + step]
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = torch.baddbmm(b, h, w)
            if i < layers - 1:
                h.sin_()
        out[:, start : start + step] = h
    return out


def siren_shapes(width: int, depth: int, in_dim: int, n_nets: int = 1, out_dim: int = 1) -> list[tuple[int, ...]]:
    """Shapes of a BatchedSiren's tensors in file order: (weight (n, in, out), bias (n, 1, out)) per layer."""
    dims = [in_dim] + [width] * (depth - 1) + [out_dim]
    return [s for a, b in zip(dims[:-1], dims[1:]) for s in ((n_nets, a, b), (n_nets, 1, b))]


def _index_grid(shape: tuple[int, ...]) -> torch.Tensor:
    """Integer positions of every cell of ``shape``, row-major, as float: (prod(shape), len(shape))."""
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def grid_coordinates(block: tuple[int, ...]) -> torch.Tensor:
    """Coordinates of every voxel of a block in [−1, 1]^d, row-major: (prod(block), d)."""
    axes = [torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1) for n in block]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(block))


COORDINATE_FRAMES = ("block", "image")


def block_coordinates(layout, frame: str = "block") -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates of a block layout's voxels as ``corners[n] + local[v]``: (local (V, d), corners (N, d)).

    ``frame="block"``: every block spans [−1, 1]^d (corners are zero) — the per-block INR convention.
    ``frame="image"``: one frame for the whole (padded) image, so a network shared by all blocks sees where a block
    lies and is continuous across block borders (no seams from the coordinates; only the block's code changes).
    """
    if frame == "block":
        return grid_coordinates(layout.block), torch.zeros(layout.n_blocks, len(layout.block))
    if frame not in COORDINATE_FRAMES:
        raise ValueError(f"unknown coordinate frame {frame!r} (known: {', '.join(COORDINATE_FRAMES)})")
    step = torch.tensor([2.0 / (p - 1) if p > 1 else 0.0 for p in layout.padded])
    local = _index_grid(layout.block) * step
    corners = _index_grid(layout.grid) * torch.tensor(layout.block, dtype=torch.float32) * step - (step > 0).float()
    return local, corners
