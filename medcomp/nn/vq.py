"""Vector quantiser with a learnable codebook (VQ-VAE / VQ-GAN family)."""

from __future__ import annotations

import torch
from torch import nn

from medcomp.utils.distributed import same_on_every_rank


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
        # The frozen assignment (empty until ``freeze``): a buffer, so that ``.to()`` moves it with the codebook and
        # checkpoints (resume, ddp_spawn's hand-back to the main process) keep it.
        self.register_buffer("frozen_idx", torch.zeros(0, dtype=torch.long))
        # What a step branches on, mirrored in Python so that no step waits for the device (``bool``/``int`` of a
        # CUDA tensor is a host sync); read back from the buffers when a checkpoint is loaded.
        self._initialised, self._calls = False, 0

    @property
    def frozen(self) -> bool:
        return self.frozen_idx.numel() > 0

    @torch.no_grad()
    def freeze(self, z: torch.Tensor) -> None:
        self.frozen_idx = self.nearest(z.detach())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "frozen_idx"
        # sized by the checkpoint's assignment; checkpoints written before the buffer existed hold no freeze
        self.frozen_idx = torch.zeros(state_dict[key].shape if key in state_dict else 0, dtype=torch.long,
                                      device=self.codebook.device)
        state_dict.setdefault(key, self.frozen_idx)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialised, self._calls = bool(self.initialised), int(self.calls)  # once, at load

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cdist(z, self.codebook).argmin(dim=-1)

    @torch.no_grad()
    def _reseed(self, z: torch.Tensor, which: torch.Tensor | None = None) -> None:
        """Codewords ``which`` (all when None) moved onto encoder outputs, with a little noise."""
        count = self.codebook.shape[0] if which is None else int(which.sum())  # a sync only at a restart
        pick = torch.randint(0, z.shape[0], (count,), device=z.device)
        noise = 0.01 * z.std() * torch.randn(pick.numel(), z.shape[1], device=z.device)
        if which is None:
            self.codebook.data.copy_(z[pick] + noise)
        else:
            self.codebook.data[which] = z[pick] + noise
        same_on_every_rank([self.codebook])  # z is the same on every rank; the random picks need not be

    def forward(self, z: torch.Tensor):
        if self.training:
            with torch.no_grad():
                if not self._initialised:
                    self._reseed(z.detach())
                    self.initialised.fill_(True)
                    self._initialised = True
        if self.frozen and self.frozen_idx.shape[0] == z.shape[0]:
            idx = self.frozen_idx
        else:
            idx = self.nearest(z.detach())
        if self.training and not self.frozen:
            with torch.no_grad():
                self.usage.index_add_(0, idx, torch.ones_like(idx, dtype=self.usage.dtype))  # bincount's size is data
                self._calls += 1
                self.calls.fill_(self._calls)
                if self._calls % self.restart_every == 0:
                    dead = self.usage == 0
                    if dead.any():
                        self._reseed(z.detach(), dead)
                    self.usage.zero_()
        q = self.codebook[idx]
        commit = self.beta * torch.mean((q.detach() - z) ** 2)
        return q + z - z.detach(), idx, commit
