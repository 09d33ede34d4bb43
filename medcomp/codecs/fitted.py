"""Codecs whose encoder is a fit: an implicit neural representation (SIREN, UniCompress) is trained on the image
itself, in this process, and its weights are the file. Decoding runs the network the file holds."""

from __future__ import annotations

import logging
import tempfile

import numpy as np
from omegaconf import DictConfig, OmegaConf

from medcomp.codecs.base import Accepts, Codec
from medcomp.codecs.container import Container
from medcomp.data.image import Image
from medcomp.errors import MedcompError
from medcomp.target import Target


class FittedCodec(Codec):
    """``name``: the model (``conf/model/<name>.yaml``) fitted on each image, with ``data=volume`` handing it the
    image; ``overrides``: Hydra overrides for that fit, as on run.py's command line; ``decoder``: the function
    (dotted path) that decodes its files."""

    fitted = True
    accepts = Accepts(float32_values=True)

    def __init__(self, name: str, decoder: str, overrides: list[str] | tuple = ()):
        self.name, self.decoder, self.overrides = name, decoder, list(overrides)
        self._config: DictConfig | None = None
        self._held, self._held_files = None, None

    def holding(self, model) -> FittedCodec:
        """This codec as a run's own fitted model: ``encode`` gives the files of the images ``model`` was fitted on
        (run.py fits all of them at once, and exports them once), and refuses any other image or target."""
        self._held, self._held_files = model, None
        return self

    def fit_config(self) -> DictConfig:
        """Composed once per codec, like ``python run.py model=<name> data=volume OVERRIDES``; a bad override is one
        line naming it (see :func:`check_overrides`)."""
        if self._config is None:
            from medcomp.config import compose

            check_override_syntax(self.name, self.overrides)
            try:
                cfg = compose([f"model={self.name}", "data=volume", "logger=none", "callbacks=none",
                               "baselines=[]", "save_final_checkpoint=false", *self.overrides])
            except Exception as exc:  # noqa: BLE001 - Hydra's composition errors: unknown keys, groups, values
                raise MedcompError(f"--override: {_hydra_reason(exc)}") from exc
            check_fit_values(cfg)
            self._config = cfg
        return self._config

    def encode(self, image: Image, target: Target) -> Container:
        from medcomp.fitting import fit

        self.check_input(image)
        if self._held is not None:
            return self._held_file(image, target)
        cfg = self.fit_config().copy()
        block = cfg.data.get("block_size")
        if block is not None and len(block) != image.ndim:
            raise MedcompError(f"--override data.block_size={list(block)}: {len(block)} axes, the image is "
                               f"{image.ndim}-D {image.array.shape}")
        quiet = logging.getLogger("lightning.pytorch")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # one image of a larger run: no repeated "GPU available" banners
        try:
            with tempfile.TemporaryDirectory(prefix="medcomp-") as tmp:
                OmegaConf.update(cfg, "paths.output_dir", tmp)
                return fit(cfg, images=[image], target=target, top_level=False).model.export()[0]
        finally:
            quiet.setLevel(level)

    def _held_file(self, image: Image, target: Target) -> Container:
        model = self._held
        if target != model.target:
            raise MedcompError(f"{self.name}: this fit is for {model.target.describe()}, not {target.describe()}")
        if self._held_files is None:
            self._held_files = model.export()
        for fitted_image, container in zip(model.data.images, self._held_files):
            if fitted_image is image:
                return container
        raise MedcompError(f"{image.name}: not one of the images this {self.name} fit was trained on")

    def decode(self, container: Container) -> np.ndarray:
        from hydra.utils import get_method

        return get_method(self.decoder)(container)


# The groups a codec's fit is made of: the model is the codec and the data is the image, so neither may be switched.
FIXED_GROUPS = ("model", "data")
# Values a fit needs to be positive integers; a wrong one would otherwise surface as a traceback deep in a fit.
POSITIVE_INTS = ("model.fit_steps", "model.depth", "model.max_width", "model.code_dim", "model.codebook_bits",
                 "model.weight_bits_min", "model.weight_bits_max")


def check_override_syntax(codec: str, overrides: list[str]) -> None:
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if "=" not in ov or not key:
            raise MedcompError(f"--override {ov!r}: expected KEY=VALUE (e.g. model.fit_steps=3000)")
        if key in FIXED_GROUPS:
            raise MedcompError(f"--override {ov!r}: the {key} of codec '{codec}' cannot be switched "
                               f"(choose another --codec)")


def _hydra_reason(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def check_fit_values(cfg: DictConfig) -> None:
    for key in POSITIVE_INTS:
        value = OmegaConf.select(cfg, key, throw_on_missing=False, default=None)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise MedcompError(f"--override {key}={value}: must be a positive integer")
    block = OmegaConf.select(cfg, "data.block_size", default=None)
    if block is not None and (not OmegaConf.is_list(block) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in block) or len(block) not in (2, 3)):
        raise MedcompError(f"--override data.block_size={block}: must be 2 or 3 positive integers, e.g. [32,32,32]")
