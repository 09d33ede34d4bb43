"""Block-Tensor-Train linear layer (CT-Lite's SFP head).

Written here because no maintained library ships it: the BTT structure of Qiu et al. 2024 ("Compute Better Spent")
as two batched matmuls. With d_in = m0·m1 and d_out = n0·n1:

    x (B, m1, m0) ─ W1 (m1, m0, n0·r) ─▶ (B, m1, n0, r) ─ transpose ─▶ (B, n0, m1·r) ─ W2 (n0, m1·r, n1) ─▶ (B, n0·n1)

Parameters r·n0·m1·(m0 + n1) instead of d_in·d_out: 512 → 512 with m = (16, 32), n = (32, 16), r = 4 is half a
dense layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _split(dim: int) -> tuple[int, int]:
    """dim = a · b with a ≤ b and a as large as possible (the most balanced two factors)."""
    a = int(math.isqrt(dim))
    while dim % a:
        a -= 1
    return a, dim // a


class BTTLinear(nn.Module):
    """Drop-in for ``nn.Linear(in_features, out_features)`` with block-tensor-train weights.

    ``in_shape=(m0, m1)`` and ``out_shape=(n0, n1)`` factor the two dimensions (default: the most balanced factors);
    ``rank`` is the tensor-train rank r."""

    def __init__(self, in_features: int, out_features: int, rank: int = 4, in_shape: tuple[int, int] | None = None,
                 out_shape: tuple[int, int] | None = None, bias: bool = True):
        super().__init__()
        m0, m1 = in_shape or _split(in_features)
        n0, n1 = out_shape or _split(out_features)[::-1]
        if m0 * m1 != in_features or n0 * n1 != out_features:
            raise ValueError(f"BTTLinear: {m0}×{m1} must be {in_features} and {n0}×{n1} must be {out_features}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.m, self.n = (m0, m1), (n0, n1)
        self.w1 = nn.Parameter(torch.empty(m1, m0, n0 * rank))
        self.w2 = nn.Parameter(torch.empty(n0, m1 * rank, n1))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # The output variance nn.Linear's default init gives (Var(x)/3): Var(w1) = 1/m0 keeps the input's variance in
        # the middle, Var(w2) = 1/(3·m1·r) then divides it by 3.
        nn.init.uniform_(self.w1, -math.sqrt(3 / m0), math.sqrt(3 / m0))
        nn.init.uniform_(self.w2, -1 / math.sqrt(m1 * rank), 1 / math.sqrt(m1 * rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        (m0, m1), (n0, n1), r = self.m, self.n, self.rank
        x = x.reshape(-1, m1, m0).transpose(0, 1)                         # (m1, B, m0)
        y = torch.bmm(x, self.w1)                                         # (m1, B, n0·r)
        y = y.reshape(m1, -1, n0, r).permute(2, 1, 0, 3).reshape(n0, -1, m1 * r)  # (n0, B, m1·r)
        z = torch.bmm(y, self.w2)                                         # (n0, B, n1)
        z = z.transpose(0, 1).reshape(*lead, n0 * n1)
        return z + self.bias if self.bias is not None else z

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) matrix this layer applies (for tests and inspection)."""
        eye = torch.eye(self.in_features, dtype=self.w1.dtype, device=self.w1.device)
        w = self.forward(eye)
        return (w - self.bias if self.bias is not None else w).T

    def extra_repr(self) -> str:
        return f"{self.in_features} → {self.out_features}, m={self.m}, n={self.n}, rank={self.rank}"
