"""The trained 2-D codecs' files (CAL-VAE, RNN-Conv): the weights file a trained network is saved in, and the codec
that turns a trained network into real ``.mcz`` files.

A trained codec is trained once on a corpus (``run.py model=cal_vae data=...``) and then encodes any image:
``medcomp compress IN OUT.mcz --codec cal_vae --ckpt W.pt --bpp 0.5``. Each image is normalised by its own range
(stored in the header, so 8- to 16-bit and HU data keep their units); volumes are coded slice by slice along axis 0,
and each slice as independent tiles of at most 512² (``TILE``), each padded to the network's stride and cropped
back. The rate knob (CAL-VAE: gain level; RNN-Conv: iterations) is one for the whole file, searched until the file
meets the target. The header carries the sha256 of the weights file, and decoding refuses any other weights. The
networks and their training are medcomp.models (trained_image.TrainedImageModel, cal_vae, rnn_conv).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from medcomp.codecs.base import Accepts, Codec, image_header, join_planes, split_planes
from medcomp.codecs.container import Container
from medcomp.data.image import Image, from_unit, restore_dtype, to_unit
from medcomp.errors import CorruptFileError, MedcompError
from medcomp.target import Target, fit_to_budget
from medcomp.utils.devices import compute_device

WEIGHTS_FORMAT = "medcomp-codec-weights/1"
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def load_weights(path: str | Path, expect: str | None = None,
                 module_class: type[L.LightningModule] | None = None) -> tuple[L.LightningModule, str, dict]:
    """(module in eval mode ready to code, sha256 of the file, payload metadata). Loaded with weights_only=True.
    ``expect``: the codec the weights must be for; ``module_class``: its LightningModule (default: the one
    ``conf/model/<codec>.yaml`` trains — a weights file only ever names a registered trained codec, never code to
    import)."""
    path = Path(path)
    if not path.is_file():
        raise MedcompError(f"{path}: weights file not found")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise MedcompError(f"{path}: not a loadable weights file ({str(exc).splitlines()[0]})") from exc
    from medcomp.codecs.registry import trained_codecs

    if (not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT
            or payload.get("model") not in trained_codecs()):
        raise MedcompError(f"{path}: not a medcomp codec weights file (format {WEIGHTS_FORMAT})")
    if expect and payload["model"] != expect:
        raise MedcompError(f"{path}: weights are for codec '{payload['model']}', not '{expect}'")
    module_class = module_class or trained_module_class(payload["model"])
    module = module_class(**payload["hparams"])
    try:
        module.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:  # e.g. saved before its entropy tables were stored with the weights
        raise MedcompError(f"{path}: these '{payload['model']}' weights do not fit this version of the codec "
                           f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})") from exc
    module.eval()
    module.prepare_coding()
    return module, sha, {"made_by": payload.get("made_by", ""), "hparams": payload["hparams"]}


def trained_module_class(name: str) -> type[L.LightningModule]:
    """The LightningModule that trains codec ``name``'s weights: ``conf/model/<name>.yaml``'s ``_target_``. Read from
    the model's config, not a dotted path in conf/codec, so a codec's config never points into medcomp.models."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from medcomp.config import CONF_DIR

    path = CONF_DIR / "model" / f"{name}.yaml"
    target = OmegaConf.select(OmegaConf.load(path), "model._target_") if path.is_file() else None
    if not target:
        raise MedcompError(f"codec '{name}' is trained, but conf/model/{name}.yaml does not name its LightningModule")
    return get_class(target)


def default_weights(name: str) -> Path | None:
    p = ASSETS / f"{name}.pt"
    return p if p.is_file() else None


def normalise(array: np.ndarray) -> tuple[np.ndarray, dict]:
    lo, hi = float(array.min()), float(array.max())
    return to_unit(array.astype(np.float64), lo, hi).astype(np.float32), {"lo": lo, "hi": hi}


class TrainedCodec(Codec):
    """A trained network as a codec. ``name``: the codec (its LightningModule is the one ``model=<name>`` trains);
    ``ckpt``: its weights file (default: the one shipped in medcomp/assets)."""

    trained = True
    accepts = Accepts(min_side=8, float32_values=True)  # 2×2–6×6 slices: 8–25 dB at the best quality

    def __init__(self, name: str, ckpt: str | Path | None = None):
        self.name = name
        self.ckpt = Path(ckpt) if ckpt else default_weights(name)
        self._loaded = None

    @classmethod
    def holding(cls, module: L.LightningModule, ckpt: Path) -> TrainedCodec:
        """The codec of a module just trained in this process (its weights saved to ``ckpt``), kept in memory."""
        codec = cls(module.codec_name, ckpt)
        codec._loaded = (module, hashlib.sha256(Path(ckpt).read_bytes()).hexdigest())
        return codec

    def module(self) -> tuple[L.LightningModule, str]:
        if self._loaded is None:
            if self.ckpt is None:
                raise MedcompError(f"codec '{self.name}' needs trained weights: pass --ckpt WEIGHTS.pt "
                                   f"(run.py model={self.name} writes checkpoints/{self.name}.pt)")
            module, sha, _ = load_weights(self.ckpt, self.name)
            self._loaded = (module, sha)
        return self._loaded

    def encode(self, image: Image, target: Target) -> Container:
        self.check_input(image)
        module, sha = self.module()
        device = compute_device()  # the network runs there; the streams are coded on the host
        module.to(device)
        x, mapping = normalise(image.array)
        planes = x if x.ndim == 3 else x[None]
        with torch.no_grad():  # one tile at a time: the network's activations never span the whole image
            states = [module.analyse(pad_plane(torch.from_numpy(np.ascontiguousarray(planes[p, rows, cols])).to(device),
                                               module.stride))
                      for p, rows, cols in tiles(planes.shape, TILE)]

        def container(knob, streams=None):
            header = {**image_header(image), "mapping": mapping, "tile": TILE, module.knob_name: knob,
                      "weights_sha256": sha, "weights_file": self.ckpt.name}
            if streams is None:
                streams = [module.stream(s, knob) for s in states]
            return Container(self.name, header, join_planes(streams))

        def size_of(knob):
            lengths = [module.stream_length(s, knob) for s in states]
            return len(container(knob, None if None in lengths else [bytes(n) for n in lengths]).to_bytes())

        # CAL-VAE: the gain level; RNN-Conv: the iterations (at least one)
        knob = fit_to_budget(size_of, target.target_bytes(image), module.knob_lo, module.knob_hi,
                             increasing=module.knob_increasing, integer=module.knob_integer)
        streams = []
        for i in range(len(states)):  # each tile's encoder state is let go once its stream is written
            streams.append(module.stream(states[i], knob))
            states[i] = None
        return container(knob, streams)

    def decode(self, container: Container) -> np.ndarray:
        module, sha = self.module()
        module.to(compute_device())
        want = container.header.get("weights_sha256")
        if want != sha:
            raise MedcompError(f"{self.ckpt}: these weights (sha256 {sha[:12]}…) are not the ones this file was encoded "
                               f"with (sha256 {str(want)[:12]}…, file '{container.header.get('weights_file')}'); "
                               f"pass the same weights with --ckpt")
        header = container.header
        knob = header.get(module.knob_name)
        if (not isinstance(knob, (int, float)) or isinstance(knob, bool) or not module.knob_lo <= knob <= module.knob_hi
                or (module.knob_integer and knob != int(knob))):
            raise CorruptFileError(f"corrupt .mcz: {self.name} '{module.knob_name}' {knob!r} is outside "
                                   f"[{module.knob_lo}, {module.knob_hi}] (or the file predates it)")
        tile = header.get("tile")
        if not isinstance(tile, int) or isinstance(tile, bool) or tile <= 0 or tile % module.stride:
            raise CorruptFileError(f"corrupt .mcz: {self.name} tile {tile!r} is not a positive multiple of "
                                   f"{module.stride} (or the file predates tiles)")
        shape = tuple(header["shape"])
        planes_shape = (1, *shape) if len(shape) == 2 else shape
        placed = tiles(planes_shape, tile)
        streams = split_planes(container)
        if len(streams) != len(placed):
            raise CorruptFileError(f"corrupt .mcz: {len(streams)} tile streams for {len(placed)} tiles")
        x = np.empty(planes_shape, dtype=np.float64)
        with torch.no_grad():
            for (p, rows, cols), data in zip(placed, streams):
                h, w = rows.stop - rows.start, cols.stop - cols.start
                x[p, rows, cols] = (module.synthesise(data, knob, padded_size((h, w), module.stride))[:h, :w]
                                    .double().cpu().numpy())
        np.clip(x, 0.0, 1.0, out=x)  # the original lies in [lo, hi]
        lo, hi = header["mapping"]["lo"], header["mapping"]["hi"]
        return restore_dtype(from_unit(x.reshape(shape), lo, hi), header["dtype"])


# Tiles a side, in pixels: planes are coded as independent tiles so that encoding and decoding memory stays bounded
# by one tile's activations whatever the image (a 3000² radiograph coded whole took 6 GB with RNN-Conv). A multiple of
# every trained codec's stride; images up to this size are one tile.
TILE = 512


def tiles(planes_shape: tuple[int, ...], tile: int) -> list[tuple[int, slice, slice]]:
    """(plane, rows, columns) of every tile, plane by plane, in raster order; edge tiles are smaller."""
    n, h, w = planes_shape
    return [(p, slice(r, min(r + tile, h)), slice(c, min(c + tile, w)))
            for p in range(n) for r in range(0, h, tile) for c in range(0, w, tile)]


def padded_size(hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """(H', W'): each side rounded up to a multiple of ``stride``, as the networks take them."""
    return -(-hw[0] // stride) * stride, -(-hw[1] // stride) * stride


def pad_plane(plane: torch.Tensor, stride: int) -> torch.Tensor:
    """(H, W) → (1, 1, H', W') of :func:`padded_size` (edge replication)."""
    (h, w), (ph, pw) = plane.shape, padded_size(plane.shape, stride)
    x = plane[None, None]
    return F.pad(x, (0, pw - w, 0, ph - h), mode="replicate") if (ph, pw) != (h, w) else x

