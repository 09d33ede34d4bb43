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


def _auroc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Binary AUROC of each row of ``scores`` (R, N) against the matching row of ``labels`` (R, N), from the
    Mann-Whitney rank sum (ties share their mean rank): vectorised over thousands of bootstrap resamples, which a
    per-resample torchmetrics call would take minutes for. NaN where a row has one class only."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    pos = labels.sum(1)
    neg = labels.shape[1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * labels).sum(1) - pos * (pos + 1) / 2) / (pos * neg)


def paired_bootstrap_auroc(scores_a: list[np.ndarray], scores_b: list[np.ndarray], labels: np.ndarray,
                           n: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap test of the AUROC difference between two configurations scored on the same images.

    ``scores_a`` / ``scores_b``: one (N,) score array per trained model (seed) of each configuration, all on the same
    N images in the same order. The statistic is mean-over-seeds AUROC of A minus that of B; each resample draws the
    images once and scores every model on them, so image-level pairing is kept. Returns the observed difference, its
    percentile interval and a two-sided p-value (twice the share of resamples on the far side of zero, with the
    usual +1 correction). It measures test-set sampling noise only; the spread over seeds is reported beside it."""
    labels = np.asarray(labels).astype(np.int64)
    a, b = np.stack(scores_a), np.stack(scores_b)
    if a.shape[1] != len(labels) or b.shape[1] != len(labels):
        raise ValueError(f"scores cover {a.shape[1]} / {b.shape[1]} images, labels {len(labels)}")
    observed = float(_auroc_rows(a, labels[None].repeat(len(a), 0)).mean()
                     - _auroc_rows(b, labels[None].repeat(len(b), 0)).mean())
    rng, parts, chunk = np.random.default_rng(seed), [], 200  # resamples at a time: memory ~chunk × images, any n
    for start in range(0, n, chunk):
        idx = rng.integers(0, len(labels), (min(chunk, n - start), len(labels)))
        y = labels[idx]
        parts.append(np.mean([_auroc_rows(s[idx], y) for s in a], 0) - np.mean([_auroc_rows(s[idx], y) for s in b], 0))
    diff = np.concatenate(parts)
    diff = diff[np.isfinite(diff)]
    lo, hi = np.percentile(diff, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    tail = min((diff <= 0).sum(), (diff >= 0).sum())
    return {"diff": observed, "ci_low": float(lo), "ci_high": float(hi),
            "p_value": float(min(1.0, 2 * (tail + 1) / (len(diff) + 1))), "bootstrap": int(len(diff)),
            "models": [len(a), len(b)]}
