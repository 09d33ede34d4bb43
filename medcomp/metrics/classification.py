"""AUROC with a bootstrap confidence interval (torchmetrics computes each AUROC)."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, multilabel_auroc


def auroc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Binary AUROC for (N,) scores; macro multi-label AUROC for (N, K), over the labels that have both classes."""
    if scores.dim() == 1:
        if targets.min() == targets.max():
            return float("nan")  # one class only: AUROC is undefined
        return float(binary_auroc(scores, targets.long()))
    has_both = (targets.min(0).values == 0) & (targets.max(0).values == 1)
    if not has_both.any():
        return float("nan")
    if has_both.sum() == 1:  # torchmetrics' multi-label path needs two labels or more
        return float(binary_auroc(scores[:, has_both][:, 0], targets[:, has_both][:, 0].long()))
    return float(multilabel_auroc(scores[:, has_both], targets[:, has_both].long(), num_labels=int(has_both.sum()),
                                  average="macro"))


def bootstrap_auroc(scores: torch.Tensor, targets: torch.Tensor, n: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict:
    """AUROC and its percentile bootstrap interval (resampling images with replacement, ``n`` times)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = torch.from_numpy(rng.integers(0, len(targets), len(targets)))
        t = targets[idx]
        if t.dim() == 1 and (t.min() == t.max()):
            continue  # a resample with one class has no AUROC
        values.append(auroc(scores[idx], t))
    if not values:
        return {"auroc": auroc(scores, targets), "ci_low": float("nan"), "ci_high": float("nan"), "bootstrap": 0}
    lo, hi = np.nanpercentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return {"auroc": auroc(scores, targets), "ci_low": float(lo), "ci_high": float(hi), "bootstrap": len(values)}
