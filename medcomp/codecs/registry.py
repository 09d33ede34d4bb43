"""The one codec registry: ``conf/codec/<name>.yaml``, each naming its class with ``_target_``.

Adding a codec is a class implementing :class:`~medcomp.codecs.base.Codec` and a YAML file; nothing else names
it. Building a codec imports only its own module, so a JPEG 2000 compress or ``medcomp info`` never imports
CompressAI, Lightning or the models (seconds per CLI call).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from omegaconf import DictConfig, OmegaConf

from medcomp.codecs.base import Codec, check_header, image_from_header
from medcomp.codecs.container import Container
from medcomp.config import CONF_DIR
from medcomp.data.image import Image
from medcomp.errors import CorruptFileError, MedcompError
from medcomp.utils.memory import check_fits

CODEC_DIR = CONF_DIR / "codec"


def available_codecs() -> list[str]:
    return sorted(p.stem for p in CODEC_DIR.glob("*.yaml"))


@cache
def codec_config(name: str) -> DictConfig:
    path = CODEC_DIR / f"{name}.yaml"
    if not name or not name.replace("_", "").isalnum() or not path.is_file():
        raise MedcompError(f"unknown codec {name!r} (available: {', '.join(available_codecs())})")
    return OmegaConf.load(path)


def codec_class(name: str) -> type[Codec]:
    from hydra.utils import get_class

    return get_class(codec_config(name)._target_)


def get_codec(name: str, **kwargs) -> Codec:
    """The codec ``name`` with its YAML's settings; ``kwargs`` add to or replace them (e.g. ``ckpt=``, ``preset=``).

    A codec's id is its YAML file's name: a class that serves several codecs (FittedCodec, TrainedCodec) is given it
    as ``name``; a class with its own ``name`` must agree, and every file it writes carries that id."""
    import inspect

    from hydra.utils import instantiate

    cfg = codec_config(name)
    if "name" in cfg:
        raise MedcompError(f"conf/codec/{name}.yaml sets 'name': a codec's id is its file name, remove the key")
    given = {"name": name} if "name" in inspect.signature(codec_class(name)).parameters else {}
    # _partial_, then call: kwargs may be objects (paths, modules) that a config node cannot hold
    codec = instantiate(cfg, _partial_=True)(**given, **kwargs)
    if codec.name != name:
        raise MedcompError(f"conf/codec/{name}.yaml builds a codec named {codec.name!r}: a codec's id is its file name")
    return codec


def is_fitted(name: str) -> bool:
    """Whether encoding with ``name`` fits a network to the image (SIREN, UniCompress)."""
    return codec_class(name).fitted


def is_trained(name: str) -> bool:
    """Whether ``name`` codes with a trained network's weights file (``--ckpt``)."""
    return codec_class(name).trained


def fitted_codecs() -> set[str]:
    return {n for n in available_codecs() if is_fitted(n)}


def trained_codecs() -> set[str]:
    return {n for n in available_codecs() if is_trained(n)}


def decode_container(container: Container, codec: Codec | None = None, **kwargs) -> Image:
    """Decode with ``codec``, or with the one the file names (built with ``kwargs``, e.g. ``ckpt=``). A file whose
    CRC is right but whose header or payload does not fit its codec (hand-edited, or written by a buggy encoder)
    gives a CorruptFileError, never another exception."""
    header = check_header(container.header)
    shape = header["shape"]
    # the decoded array, its float working slab and the writer's copy
    check_fits(math.prod(shape) * np.dtype(header["dtype"]).itemsize * 3, ".mcz header",
               f"decoding a {shape} {np.dtype(header['dtype']).name} image")
    if codec is None:
        codec = get_codec(container.codec, **kwargs)
    elif codec.name != container.codec:
        raise MedcompError(f"a {container.codec} file cannot be decoded by codec '{codec.name}'")
    try:
        array = codec.decode(container)
    except MedcompError:
        raise
    except MemoryError as exc:
        raise CorruptFileError(f".mcz payload of codec {container.codec!r} asks for more memory than there is") from exc
    except Exception as exc:  # noqa: BLE001 — any other failure means the header and payload do not agree
        raise CorruptFileError(f".mcz payload does not decode as {container.codec!r} "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    expected = tuple(shape)
    if array.shape != expected:
        raise MedcompError(f"decoded shape {array.shape} differs from the header's {expected}: corrupt .mcz")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):  # no image medcomp codes holds NaN or inf
        raise CorruptFileError(f"corrupt .mcz: the {container.codec} payload decodes to NaN or infinite values")
    return image_from_header(header, array, container.codec)




def accepts_table() -> str:
    """The table of what each codec accepts (docs/command-line.md), made from the codecs' own declarations (``Codec.accepts``)."""
    rows = ["| codec | accepts |", "|---|---|"]
    rows += [f"| `{name}` | {codec_class(name).accepts.describe()} |" for name in available_codecs()]
    return "\n".join(rows)


if __name__ == "__main__":  # python -m medcomp.codecs.registry: the table, to paste between the markers in docs/command-line.md
    print(accepts_table())
