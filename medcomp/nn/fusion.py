"""UniCompress's attention fusion of the raw / low-frequency / high-frequency feature tokens."""

from __future__ import annotations

import torch
from torch import nn


class AttentionFusion(nn.Module):
    """MLP to ``d_model`` → self-attention within each part → concatenation with learnable position embeddings and
    a bottleneck token between parts → cross-attention from a learned query + LayerNorm → ``out_dim``."""

    def __init__(self, parts: int, tokens: int, in_dim: int, d_model: int = 64, heads: int = 4, out_dim: int = 8):
        super().__init__()
        self.parts = parts
        self.embed = nn.ModuleList([nn.Sequential(nn.Linear(in_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model))
                                    for _ in range(parts)])
        self.self_attn = nn.ModuleList([nn.MultiheadAttention(d_model, heads, batch_first=True) for _ in range(parts)])
        self.bottleneck = nn.Parameter(torch.zeros(max(parts - 1, 0), 1, d_model))
        self.pos = nn.Parameter(torch.randn(1, parts * tokens + max(parts - 1, 0), d_model) * 0.02)
        self.query = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.cross = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, out_dim)

    def forward(self, part_tokens: list[torch.Tensor]) -> torch.Tensor:
        """part_tokens: ``parts`` tensors (B, tokens, in_dim) → (B, out_dim)."""
        b = part_tokens[0].shape[0]
        seq = []
        for i, (tok, emb, attn) in enumerate(zip(part_tokens, self.embed, self.self_attn)):
            h = emb(tok)
            h = h + attn(h, h, h, need_weights=False)[0]
            seq.append(h)
            if i < self.parts - 1:
                seq.append(self.bottleneck[i].expand(b, 1, -1))
        seq = torch.cat(seq, dim=1) + self.pos
        fused = self.cross(self.query.expand(b, -1, -1), seq, seq, need_weights=False)[0]
        return self.out(self.norm(fused.squeeze(1)))
