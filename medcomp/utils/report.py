"""What a person reads at the end of a run: the summary table and reconstruction figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def summary_table(rows: list[dict], title: str = "medcomp summary") -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cols = [("codec", "codec", "{}"), ("CR target", "ratio_target", "{:.1f}"), ("CR actual", "ratio_actual", "{:.1f}"),
            ("bpp", "bpp", "{:.3f}"), ("PSNR dB", "psnr", "{:.2f}"), ("SSIM", "ssim", "{:.4f}"),
            ("encode s", "encode_s", "{:.2f}"), ("decode s", "decode_s", "{:.3f}")]
    for head, _, _ in cols:
        table.add_column(head, justify="left" if head == "codec" else "right")
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
