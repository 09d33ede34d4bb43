"""What a person reads at the end of a run: the summary table and reconstruction figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def summary_table(rows: list[dict], title: str = "medcomp summary") -> str:
    cols = [("codec", "codec", "{}"), ("CR target", "ratio_target", "{:.1f}"), ("CR actual", "ratio_actual", "{:.1f}"),
            ("bpp", "bpp", "{:.3f}"), ("PSNR dB", "psnr", "{:.2f}"), ("SSIM", "ssim", "{:.4f}"),
            ("encode s", "encode_s", "{:.2f}"), ("decode s", "decode_s", "{:.3f}")]
    return rich_table(rows, cols, title)


def classification_table(rows: list[dict], title: str) -> str:
    cols = [("split", "split", "{}"), ("AUROC", "auroc", "{:.4f}"), ("95% CI low", "ci_low", "{:.4f}"),
            ("95% CI high", "ci_high", "{:.4f}"), ("findings AUROC", "auroc_findings", "{:.4f}"),
            ("images", "images", "{}")]
    return rich_table(rows, cols, title)


def rich_table(rows: list[dict], cols: list[tuple[str, str, str]], title: str) -> str:
    """``cols`` = (heading, key, format); a missing value prints as '-'."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, (head, _, _) in enumerate(cols):
        table.add_column(head, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*[fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in cols])
    console = Console(width=120, force_terminal=False)
    with console.capture() as cap:
        console.print(table)
    return cap.get()


def middle_slice(a: np.ndarray) -> np.ndarray:
    return a[a.shape[0] // 2] if a.ndim == 3 else a


def reconstruction_figure(original: np.ndarray, decoded: np.ndarray, title: str, path: Path) -> Path:
    """Original | decoded | |error| of the middle axial slice, on one grey scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    o, d = middle_slice(original).astype(np.float64), middle_slice(decoded).astype(np.float64)
    lo, hi = np.percentile(o, [0.5, 99.5])
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, img, name in zip(axes[:2], (o, d), ("original", "decoded")):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(name)
    err = axes[2].imshow(np.abs(o - d), cmap="magma")
    axes[2].set_title("|error|")
    fig.colorbar(err, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from medcomp.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def attention_figure(images: np.ndarray, maps: dict[str, np.ndarray], path: Path, title: str = "") -> Path:
    """One row per image: the image, then each model's attention map (last level) laid over it.
    ``images`` (N, H, W); ``maps`` name → (N, h, w)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols, 2.6 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i], cmap="gray")
        axes[i, 0].set_title("input" if i == 0 else "")
        for j, (name, m) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(images[i], cmap="gray")
            axes[i, j].imshow(m[i], cmap="jet", alpha=0.45, extent=(0, images.shape[2], images.shape[1], 0),
                              interpolation="bilinear")
            axes[i, j].set_title(name if i == 0 else "")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from medcomp.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
