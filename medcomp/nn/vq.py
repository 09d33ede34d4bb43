"""Vector quantiser with a learnable codebook (VQ-VAE / VQ-GAN family)."""

from __future__ import annotations

import torch
from torch import nn


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantisation.

    The loss is the commitment term β‖sg[q] − z‖² only (UniCompress: the extractor is frozen). The codebook is
    still learned: the straight-through output ``q + z − sg[z]`` passes the decoder's gradient both to the
    codeword (forward value q) and to the encoder output z.

    Against codebook collapse (every block on one codeword, which makes a shared INR reproduce one mean block),
    the codebook starts from encoder outputs and codewords unused for ``restart_every`` training calls are moved
    onto encoder outputs, the usual remedy (Dhariwal et al. 2020, Zeghidour et al. 2021).

    ``freeze()`` fixes the current assignment: late in a fit a block hopping to another codeword undoes what the
    shared decoder learned for it, so the last part of training refines codewords and decoder only.
    """

    def __init__(self, size: int, dim: int, beta: float = 0.25, restart_every: int = 50):
        super().__init__()
        self.beta, self.restart_every = beta, restart_every
        self.codebook = nn.Parameter(torch.randn(size, dim) * 0.5)
        self.register_buffer("initialised", torch.tensor(False))
        self.register_buffer("usage", torch.zeros(size))
        self.register_buffer("calls", torch.tensor(0))
        self.frozen_idx: torch.Tensor | None = None

    @torch.no_grad()
    def freeze(self, z: torch.Tensor) -> None:
        self.frozen_idx = self.nearest(z.detach())

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cdist(z, self.codebook).argmin(dim=-1)

    @torch.no_grad()
    def _reseed(self, z: torch.Tensor, which: torch.Tensor) -> None:
        pick = torch.randint(0, z.shape[0], (int(which.sum()),), device=z.device)
        noise = 0.01 * z.std() * torch.randn(pick.numel(), z.shape[1], device=z.device)
        self.codebook.data[which] = z[pick] + noise

    def forward(self, z: torch.Tensor):
        if self.training:
            with torch.no_grad():
                if not bool(self.initialised):
                    self._reseed(z.detach(), torch.ones(self.codebook.shape[0], dtype=torch.bool, device=z.device))
                    self.initialised.fill_(True)
        if self.frozen_idx is not None and self.frozen_idx.shape[0] == z.shape[0]:
            idx = self.frozen_idx
        else:
            idx = self.nearest(z.detach())
        if self.training and self.frozen_idx is None:
            with torch.no_grad():
                self.usage += torch.bincount(idx, minlength=self.codebook.shape[0]).float()
                self.calls += 1
                if int(self.calls) % self.restart_every == 0:
                    dead = self.usage == 0
                    if dead.any():
                        self._reseed(z.detach(), dead)
                    self.usage.zero_()
        q = self.codebook[idx]
        commit = self.beta * torch.mean((q.detach() - z) ** 2)
        return q + z - z.detach(), idx, commit
