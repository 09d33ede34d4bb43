"""Codecs whose encoder is a fit: an implicit neural representation (SIREN, UniCompress) is trained on the image
itself, in this process, and its weights are the file. Decoding runs the network the file holds."""

from __future__ import annotations

import logging
import tempfile

import numpy as np
from omegaconf import DictConfig, OmegaConf

from medcomp.codecs.base import Codec
from medcomp.codecs.container import Container
from medcomp.data.image import Image
from medcomp.errors import MedcompError
from medcomp.target import Target


class FittedCodec(Codec):
    """``name``: the model (``conf/model/<name>.yaml``) fitted on each image, with ``data=volume`` handing it the
    image; ``overrides``: Hydra overrides for that fit, as on run.py's command line; ``decoder``: the function
    (dotted path) that decodes its files."""

    fitted = True

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
        """Composed once per codec, like ``python run.py model=<name> data=volume OVERRIDES``."""
        if self._config is None:
            from medcomp.config import compose

            self._config = compose([f"model={self.name}", "data=volume", "logger=none", "callbacks=none",
                                    "baselines=[]", "+save_final_checkpoint=false", *self.overrides])
        return self._config

    def encode(self, image: Image, target: Target) -> Container:
        from medcomp.fitting import fit

        if self._held is not None:
            return self._held_file(image, target)
        cfg = self.fit_config().copy()
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
