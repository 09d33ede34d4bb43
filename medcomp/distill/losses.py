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
