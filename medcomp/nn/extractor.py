"""Small 2-D/3-D CNN that turns an image block into a few feature tokens.

UniCompress uses a frozen pretrained extractor (the paper: ResNet-50, 512-d, self-supervised). A CPU-sized version
is shipped (see ``model=feature_pretrain``); any block is resized to ``in_size`` first, so one extractor serves every
block size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BlockEncoder(nn.Module):
    def __init__(self, dims: int = 2, in_size: int = 32, width: int = 32, out_dim: int = 128, grid: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dims, self.in_size, self.grid, self.out_dim = dims, in_size, grid, out_dim
        chans = [1, width, width * 2, width * 4]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            # No per-sample normalisation: it would erase the intensity level that tells blocks apart.
            layers += [conv(cin, cout, 3, stride=2, padding=1), nn.GELU()]
        layers += [conv(chans[-1], out_dim, 1)]
        self.net = nn.Sequential(*layers)
        self.pool = (nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool3d)(grid)

    @property
    def n_tokens(self) -> int:
        return self.grid**self.dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, *block) → tokens (B, grid^dims, out_dim)."""
        mode = "bilinear" if self.dims == 2 else "trilinear"
        x = F.interpolate(x, size=(self.in_size,) * self.dims, mode=mode, align_corners=False)
        return self.pool(self.net(x)).flatten(2).transpose(1, 2)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, off_diagonal_weight: float = 5e-3) -> torch.Tensor:
    """Negative-free objective (seed 001, Appendix E): cross-correlation of two views' embeddings → identity."""
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / (z1.std(0) + 1e-5)
    z2 = (z2 - z2.mean(0)) / (z2.std(0) + 1e-5)
    c = z1.T @ z2 / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    return on + off_diagonal_weight * off
