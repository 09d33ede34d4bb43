"""CT-Lite (seed 000): diagnosis from JPEG-compressed slices.

- A spatiotemporal encoder: a 2-D CNN on every slice, then a temporal convolution across slices and pooling over
  them (a 2-D image is a one-slice volume).
- FAST: a teacher (the same encoder, trained on uncompressed input, frozen) guides the student that sees JPEG input,
  through a Gram-matrix attention-style loss and dual (channel + spatial) attention alignment of feature maps.
- SFP: the projection head is a Block-Tensor-Train layer (medcomp.nn.btt) with about half a dense layer's
  parameters (``head=btt``) or dense (``head=dense``).
- SigLIP: sigmoid contrastive loss between the image embedding and text embeddings. Datasets without reports use
  one prompt per MCCT class and MLCT finding ("a chest x-ray showing viral pneumonia"); an image is a positive for every
  prompt that describes it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medcomp.distill.losses import dual_attention, gram_style
from medcomp.errors import MedcompError
from medcomp.models.diagnosis.classifier import ClassifierModule, load_teacher
from medcomp.nn.btt import BTTLinear


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SpatioTemporalEncoder(nn.Module):
    """(B, S, 1, H, W) slices (or (B, 1, H, W), one slice) → pooled features (B, C) and the per-slice feature maps
    of the last two stages (B·S, C_i, h_i, w_i), which FAST aligns."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        # A 4 × 4 patchifying stem: the CPU budget buys depth rather than full-resolution early layers.
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 4, 4), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(_conv_block(a, b, 1 if i == 0 else 2)
                                    for i, (a, b) in enumerate(zip((widths[0], *widths), widths)))
        self.temporal = nn.Conv1d(widths[-1], widths[-1], 3, padding=1)
        nn.init.zeros_(self.temporal.weight)  # starts as identity (residual): one-slice inputs are unaffected
        nn.init.zeros_(self.temporal.bias)
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.dim() == 4:
            x = x.unsqueeze(1)
        b, s = x.shape[:2]
        h = self.stem(x.flatten(0, 1))
        maps = []
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        per_slice = h.mean((2, 3)).view(b, s, -1).transpose(1, 2)      # (B, C, S)
        pooled = (per_slice + self.temporal(per_slice)).mean(2)          # across slices
        return pooled, maps[-2:]


class PromptTextTower(nn.Module):
    """Text embeddings for a fixed set of texts: open_clip's BPE tokenizer, then a mean of learned token
    embeddings over the tokens these texts use (a small vocabulary, not CLIP's 49k), then a linear map."""

    def __init__(self, texts: list[str], dim: int):
        super().__init__()
        import open_clip

        tokens = open_clip.tokenize(texts)                              # (T, 77), 0 = padding
        vocab = torch.unique(tokens[tokens > 0])
        local = torch.searchsorted(vocab, tokens.clamp_min(1))
        self.register_buffer("ids", local, persistent=False)
        self.register_buffer("mask", (tokens > 0).float(), persistent=False)
        self.embed = nn.Embedding(len(vocab), dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self) -> torch.Tensor:
        e = self.embed(self.ids) * self.mask.unsqueeze(-1)
        return self.proj(e.sum(1) / self.mask.sum(1, keepdim=True))


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                positives: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP's sigmoid loss (open_clip). With paired texts (reports) the positives are the diagonal, open_clip's
    own case; with class prompts an image is positive for each prompt that describes it — open_clip's diagonal
    would call same-class pairs negatives, so the labels are given here and the same formula applied."""
    from open_clip.loss import SigLipLoss

    loss = SigLipLoss()
    image_emb, text_emb = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    if positives is None:
        return loss(image_emb, text_emb, logit_scale, logit_bias)
    logits = loss.get_logits(image_emb, text_emb, logit_scale, logit_bias)
    return -F.logsigmoid((2 * positives - 1) * logits).sum() / image_emb.shape[0]


class CTLite(ClassifierModule):
    def __init__(self, input: str = "jpeg", widths: list[int] | None = None, embed_dim: int = 256, head: str = "btt",
                 btt_rank: int = 4, finding_names: list[str] | None = None,
                 siglip_weight: float = 0.1, fast: bool = False, gram_weight: float = 1.0,
                 attention_weight: float = 10.0, teacher_ckpt: str | None = None,
                 lr: float = 1e-3, weight_decay: float = 1e-4, epochs: int = 10, target=None):
        super().__init__()
        self.save_hyperparameters(ignore=["target"])
        self.encoder = SpatioTemporalEncoder(tuple(widths or (32, 64, 128, 256)))
        c = self.encoder.out_dim
        if head == "dense":
            self.projection = nn.Linear(c, embed_dim)
        elif head == "btt":
            self.projection = BTTLinear(c, embed_dim, rank=btt_rank)
        else:
            raise MedcompError(f"model.head={head!r}: expected dense or btt")
        classes = ["normal", "abnormal"]  # the MCCT classes
        findings = finding_names or ["pneumonia"]
        self.mcct = nn.Linear(embed_dim, 1)
        self.mlct = nn.Linear(embed_dim, len(findings))
        self.text = PromptTextTower([f"a chest x-ray showing {n}" for n in (*classes, *findings)], embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))   # SigLIP's initialisation
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self.teacher = load_teacher(CTLite, teacher_ckpt, "FAST distillation", "fast") if fast else None

    def embed(self, x: torch.Tensor):
        pooled, maps = self.encoder(x)
        return F.gelu(self.projection(pooled)), maps

    def heads(self, batch):
        emb, maps = self.embed(batch[self.hparams.input])
        return self.mcct(emb).squeeze(1), self.mlct(emb), {"embedding": emb, "maps": maps}

    def training_step(self, batch, batch_idx):
        mcct, mlct, extra = self.heads(batch)
        cls_loss = self.classification_loss(mcct, mlct, batch)
        positives = torch.cat([F.one_hot(batch["label"], 2).float(), batch["findings"]], 1)
        sig = siglip_loss(extra["embedding"], self.text(), self.logit_scale.exp(), self.logit_bias, positives)
        loss = cls_loss + self.hparams.siglip_weight * sig
        logs = {"train/cls": cls_loss, "train/siglip": sig}
        if self.teacher is not None:
            with torch.no_grad():
                _, teacher_maps = self.teacher.embed(batch[self.teacher.hparams.input])
            fast = {"fast_gram": gram_style(extra["maps"][-1], teacher_maps[-1]),
                    "fast_attention": sum(dual_attention(s, t) for s, t in zip(extra["maps"], teacher_maps))}
            loss = loss + self.hparams.gram_weight * fast["fast_gram"] \
                + self.hparams.attention_weight * fast["fast_attention"]
            logs.update({f"train/{k}": v for k, v in fast.items()})
        logs["train/loss"] = loss
        self.log_dict(logs)
        return loss

    def head_parameters(self) -> dict:
        proj = sum(p.numel() for p in self.projection.parameters())
        c, d = self.encoder.out_dim, self.hparams.embed_dim
        return {"projection": proj, "dense_equivalent": c * d + d, "ratio": proj / (c * d + d)}

    def describe(self) -> dict:
        return {"parameters": self.trainable_parameters(), "head": self.hparams.head, **self.head_parameters(),
                "input": self.hparams.input, "fast": self.teacher is not None}
