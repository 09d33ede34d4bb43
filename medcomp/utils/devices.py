"""Which device the learned codecs compute on outside a fit (``medcomp compress/decompress --device``).

The networks run there; entropy coding and everything written to a file stay on the host, so a file encoded on one
device decodes on any other (the decode may differ by float rounding: measured in experiments/gpu_check.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from medcomp.errors import MedcompError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
_current = "cpu"  # a name, so that a classical codec's process never imports torch (≈ 1.3 s and 0.5 GB resident)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; ``cuda`` without CUDA is a one-line error."""
    import torch

    if name not in DEVICES:
        raise MedcompError(f"--device {name}: expected one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MedcompError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False); "
                           "use --device cpu or auto")
    return torch.device(name)


def compute_device() -> torch.device:
    import torch

    return torch.device(_current)


@contextlib.contextmanager
def computing_on(device: torch.device | str) -> Iterator[str]:
    """Learned encoders and decoders called inside run their networks on ``device``."""
    global _current
    previous, _current = _current, str(device)
    try:
        yield _current
    finally:
        _current = previous


def trainer_overrides_for(device: torch.device) -> list[str]:
    """Hydra overrides that make a fitted codec's fit (SIREN, UniCompress) run on ``device``, one process."""
    return [f"++trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}", "++trainer.devices=1",
            "++trainer.strategy=auto"]


def chunk_points(default: int) -> int:
    """Points decoded at once: ``default`` on the CPU (its caches), 8× on a GPU (bounded memory all the same)."""
    return default * 8 if compute_device().type == "cuda" else default
