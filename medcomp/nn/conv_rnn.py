"""Convolutional-recurrent building blocks of RNN-Conv (seed 004; Toderici et al. 2017).

Hand-written: torch has no ConvLSTM, and the few packaged ones neither take a stride nor a hidden-kernel size
separate from the input kernel, which the Toderici encoder needs (strided input convolution, 1×1 or 3×3 hidden).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvLSTMCell(nn.Module):
    """LSTM whose gates are convolutions: gates = conv_x(x) + conv_h(h). ``stride`` applies to the input side,
    so the hidden state lives at the input resolution divided by ``stride``."""

    def __init__(self, in_ch: int, hidden: int, kernel: int = 3, stride: int = 1, hidden_kernel: int = 1):
        super().__init__()
        self.conv_x = nn.Conv2d(in_ch, 4 * hidden, kernel, stride, kernel // 2)
        self.conv_h = nn.Conv2d(hidden, 4 * hidden, hidden_kernel, 1, hidden_kernel // 2, bias=False)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        if state is None:  # zero state: conv_h(0) = 0 (no bias) and f·c = 0, so both are skipped (same values)
            i, f, g, o = self.conv_x(x).chunk(4, dim=1)
            c = torch.sigmoid(i) * torch.tanh(g)
        else:
            h, c = state
            i, f, g, o = (self.conv_x(x) + self.conv_h(h)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class PyramidPooling(nn.Module):
    """The seed's multi-level pooling: the feature map average-pooled to 1×1, 2×2 and 4×4 cells, each projected and
    upsampled back, concatenated with the input and fused by a 1×1 convolution — context from the whole image
    for every code position (encoder side only; the decoder never needs it)."""

    def __init__(self, channels: int, levels=(1, 2, 4)):
        super().__init__()
        self.levels = tuple(levels)
        branch = max(channels // len(self.levels), 8)
        self.branches = nn.ModuleList(nn.Conv2d(channels, branch, 1) for _ in self.levels)
        self.fuse = nn.Conv2d(channels + branch * len(self.levels), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(conv(F.adaptive_avg_pool2d(x, level)), size=size, mode="nearest")
                  for level, conv in zip(self.levels, self.branches)]
        return self.fuse(torch.cat([x, *pooled], dim=1))


class Binarizer(nn.Module):
    """1×1 conv → tanh → sign. Training: stochastic rounding to ±1 with P(+1) = (1 + t)/2, gradient passed straight
    through (Toderici et al. 2016); evaluation: sign, with 0 mapped to +1 so every code is a bit."""

    def __init__(self, in_ch: int, bits: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, bits, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(self.conv(x))
        if not self.training:  # exactly ±1, the values the decoder will read back from the file
            return torch.where(t >= 0, 1.0, -1.0)
        b = torch.where(torch.rand_like(t) < (1 + t) / 2, 1.0, -1.0)
        return t + (b - t).detach()
