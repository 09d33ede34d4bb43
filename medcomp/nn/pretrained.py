"""Loading the shipped (or user-supplied) pretrained block extractor."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from medcomp.errors import MedcompError
from medcomp.nn.extractor import BlockEncoder

log = logging.getLogger("medcomp")
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def default_extractor_path(dims: int) -> Path:
    return ASSETS / f"extractor_{dims}d.pt"


def save_extractor(encoder: BlockEncoder, path: Path, provenance: dict) -> None:
    cfg = {"dims": encoder.dims, "in_size": encoder.in_size, "width": encoder.net[0].out_channels,
           "out_dim": encoder.out_dim, "grid": encoder.grid}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg, "state_dict": encoder.state_dict(), "provenance": provenance}, path)


def load_extractor(dims: int, path: str | None = "auto", fallback: dict | None = None) -> tuple[BlockEncoder, str]:
    """The pretrained extractor for ``dims``-D blocks, or — when none can be loaded — a randomly initialised one
    (said in the log; the documented fallback). Returns the encoder and where it came from."""
    if path is None or str(path).lower() == "none":  # asked for: the random-extractor ablation
        torch.manual_seed(0)
        return BlockEncoder(dims=dims, **(fallback or {})), "random-init"
    p = default_extractor_path(dims) if path == "auto" else Path(path).expanduser()
    if p.is_file():
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
            enc = BlockEncoder(**ckpt["config"])
            if enc.dims != dims:
                raise MedcompError(f"{p}: extractor is for {enc.dims}-D blocks, the data is {dims}-D")
            enc.load_state_dict(ckpt["state_dict"])
            return enc, str(p)
        except MedcompError:
            raise
        except Exception as exc:  # noqa: BLE001
            if path != "auto":
                raise MedcompError(f"{p}: cannot load extractor checkpoint ({exc})") from exc
            log.warning("pretrained extractor %s could not be loaded (%s); using a random frozen extractor", p, exc)
    elif path != "auto":
        raise MedcompError(f"{p}: extractor checkpoint not found")
    else:
        log.warning("no pretrained %d-D extractor at %s; using a randomly initialised frozen extractor "
                    "(train one with model=feature_pretrain)", dims, p)
    torch.manual_seed(0)
    return BlockEncoder(dims=dims, **(fallback or {})), "random-init"
