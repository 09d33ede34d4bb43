"""Distillation losses shared by UniCompress-KD, CT-Lite (FAST) and MLCAK."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_alignment(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE to the teacher's (detached) tensor: UniCompress's discrete codebook alignment, MLCAK's logit terms."""
    return F.mse_loss(student, teacher.detach())


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) · T² over the last axis (Hinton et al. 2015), mean over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.softmax(teacher_logits.detach() / t, dim=-1),
                    reduction="batchmean") * t * t


# ── FAST (CT-Lite): feature attention style transfer from a teacher fed uncompressed input ────────────────────────


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) → (B, C, C) channel co-activations, divided by the number of positions (Gatys et al.)."""
    f = features.flatten(2)
    return f @ f.transpose(1, 2) / f.shape[-1]


def gram_style(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FAST's attention-style term: MSE between the Gram matrices of student and teacher feature maps.
    Gram matrices are C × C, so the two maps may differ in spatial size (JPEG or low-resolution input)."""
    return F.mse_loss(gram_matrix(student), gram_matrix(teacher.detach()))


def channel_attention(features: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) → (B, C): globally pooled activation per channel, unit L2 norm."""
    return F.normalize(features.flatten(2).mean(-1), dim=1)


def spatial_attention(features: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
    """(B, C, *spatial) → (B, positions): mean squared activation over channels (Zagoruyko & Komodakis 2017),
    resampled to ``size`` when given, unit L2 norm."""
    a = features.pow(2).mean(1, keepdim=True)
    if size is not None and tuple(a.shape[2:]) != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear" if a.dim() == 4 else "trilinear", align_corners=False)
    return F.normalize(a.flatten(1), dim=1)


def dual_attention(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FAST's dual (channel + spatial) attention alignment; the teacher's map is resampled to the student's grid."""
    teacher = teacher.detach()
    return (F.mse_loss(channel_attention(student), channel_attention(teacher))
            + F.mse_loss(spatial_attention(student), spatial_attention(teacher, student.shape[2:])))


# ── MLCAK: multi-level attention knowledge from a high-resolution ViT teacher ────────────────────────────────────


def resample_attention(attn: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) attention over patches → (B, *grid), area-resampled and renormalised to mean 1 per image (so that
    the MSE neither shrinks with the number of patches nor depends on the grid)."""
    if tuple(attn.shape[-2:]) != tuple(grid):
        attn = F.interpolate(attn.unsqueeze(1), size=grid, mode="area" if attn.shape[-1] >= grid[-1] else "bilinear")
        attn = attn.squeeze(1)
    return attn / attn.flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1)


def attention_maps_mse(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """MLCAK term: MSE between head-averaged attention maps, level by level; the teacher's maps (its token grid)
    are resampled to the student's. Both lists hold (B, h, w) maps, matched by position (same number of levels)."""
    if len(student) != len(teacher):
        raise ValueError(f"attention_maps_mse: {len(student)} student levels vs {len(teacher)} teacher levels")
    terms = [F.mse_loss(resample_attention(s, s.shape[-2:]), resample_attention(t.detach(), s.shape[-2:]))
             for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()
