"""What a task may ask of a model, declared once (the tasks check ``isinstance``, never ``hasattr``).

- :class:`CompressionModel`: a model ``task=compress`` runs. ``as_codec()`` is the fitted or trained model as a
  Codec; ``describe()`` is what metrics.json records about it.
- :class:`ImageFit`: a CompressionModel whose fit *is* the encoding (per-block SIREN, UniCompress): it is built for
  one ``target`` and ``export()`` writes one ``.mcz`` container per image it was fitted on.
- :class:`Pretrainer`: a model ``task=pretrain`` runs; ``save_product()`` writes what it was trained for (an
  extractor checkpoint, a UniCompress prior) and returns the file's path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from medcomp.codecs.base import Codec
from medcomp.codecs.container import Container
from medcomp.target import Target


class CompressionModel(ABC):
    @abstractmethod
    def as_codec(self) -> Codec: ...

    def describe(self) -> dict:
        return {}


class ImageFit(CompressionModel):
    target: Target | None

    @abstractmethod
    def export(self) -> list[Container]: ...


class Pretrainer(ABC):
    @abstractmethod
    def save_product(self) -> Path: ...
