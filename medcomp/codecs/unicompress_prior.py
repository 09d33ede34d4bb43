"""The UniCompress prior file (issue 37): a shipped starting network for one kind of image, and how a file names it.

A prior file (.npz) holds one SIREN's tensors and a JSON record: architecture, normalisation, and provenance
(training files with their sha256 and licence, the command, CPU minutes, steps). A UniCompress ``.mcz`` written from a
prior stores Δ = weights − prior and names the prior by id and sha256; its decoder (medcomp.codecs.unicompress) finds
it here. Meta-learning one is medcomp.models.compression.unicompress_prior."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from medcomp.data.kinds import KINDS, image_kind
from medcomp.errors import CorruptFileError, MedcompError
from medcomp.nn.siren import BatchedSiren, siren_shapes

log = logging.getLogger("medcomp")

ASSETS = Path(__file__).resolve().parent.parent / "assets"
@dataclass
class Prior:
    """A shipped starting network: one SIREN's tensors (file order of siren_shapes, first dim 1) and its record."""

    record: dict
    params: list[np.ndarray]
    sha256: str = ""
    path: str = ""

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def fixed_range(self):
        r = self.record.get("fixed_range")
        return None if r is None else (float(r[0]), float(r[1]))

    def matches(self, width: int, depth: int, in_dim: int) -> bool:
        r = self.record
        return (r["width"], r["depth"], r["in_dim"]) == (width, depth, in_dim)

    def network(self, n_nets: int) -> BatchedSiren:
        """A BatchedSiren of ``n_nets`` networks, each starting at the prior."""
        r = self.record
        net = BatchedSiren(n_nets, r["in_dim"], r["width"], r["depth"], 1, r["w0"], r["w0_hidden"])
        with torch.no_grad():
            for p, v in zip([q for pair in zip(net.weights, net.biases) for q in pair], self.params):
                p.copy_(torch.from_numpy(v).expand_as(p))
        return net


def save_prior(path: Path, record: dict, net: BatchedSiren) -> str:
    """Write the prior file (atomic); returns its sha256 (the id files name it by)."""
    from medcomp.utils.atomic import atomic_write_bytes

    arrays = {f"t{i}": t.detach().cpu().numpy()[:1].astype(np.float32)
              for i, t in enumerate(q for pair in zip(net.weights, net.biases) for q in pair)}
    buf = io.BytesIO()
    np.savez(buf, record=np.frombuffer(json.dumps(record, sort_keys=True).encode(), dtype=np.uint8), **arrays)
    data = buf.getvalue()
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def default_prior_path(prior_id: str) -> Path:
    """Where the prior ``prior_id`` is installed: the package's assets, or $MEDCOMP_PRIOR_DIR (a prior you trained)."""
    return Path(os.environ.get("MEDCOMP_PRIOR_DIR") or ASSETS) / f"unicompress_prior_{prior_id}.npz"


@lru_cache(maxsize=8)
def _read_prior(path: str, mtime: float) -> Prior:
    data = Path(path).read_bytes()
    try:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        record = json.loads(bytes(z["record"]).decode())
        params = [z[f"t{i}"] for i in range(2 * record["depth"])]
        shapes = siren_shapes(record["width"], record["depth"], record["in_dim"])
    except Exception as exc:  # noqa: BLE001 — any unreadable file is one message
        raise MedcompError(f"{path}: not a UniCompress prior file ({exc})") from None
    if [p.shape for p in params] != [tuple(s) for s in shapes]:
        raise MedcompError(f"{path}: prior tensors do not match the network its record describes")
    return Prior(record, params, hashlib.sha256(data).hexdigest(), path)


def load_prior(path) -> Prior:
    p = Path(path).expanduser()
    if not p.is_file():
        raise MedcompError(f"{p}: UniCompress prior not found")
    return _read_prior(str(p), p.stat().st_mtime)


def prior_for(image, setting: str | None) -> Prior | None:
    """The prior a fit of ``image`` starts from. ``setting``: "none" (the paper's random start), "auto" (the shipped
    prior of the image's kind; a missing one is a logged fallback to the random start), or a path to a prior file."""
    if setting is None or str(setting).lower() == "none":
        return None
    if str(setting) != "auto":
        return load_prior(setting)
    kind = image_kind(image)
    if kind is None:
        log.info("unicompress: no prior for %s (%d-D %s): random start", image.name, image.ndim, image.array.dtype)
        return None
    path = default_prior_path(kind)
    if not path.is_file():
        log.warning("unicompress: no %s prior shipped at %s; random start (train one with model=unicompress_prior)",
                    kind, path)
        return None
    return load_prior(path)


def prior_named(header_prior: dict) -> Prior:
    """The prior a file's header names (id and sha256), from the package: a missing or different one is an error."""
    try:
        prior_id, sha = str(header_prior["id"]), str(header_prior["sha256"])
    except (TypeError, KeyError):
        raise CorruptFileError(f"corrupt .mcz: prior entry {header_prior!r} lacks an id and sha256") from None
    if prior_id not in KINDS:
        raise CorruptFileError(f"corrupt .mcz: unknown prior id {prior_id!r}")
    path = default_prior_path(prior_id)
    if not path.is_file():
        raise MedcompError(f".mcz needs the UniCompress prior '{prior_id}' (sha256 {sha[:12]}…), which is not at {path} "
                           "(set MEDCOMP_PRIOR_DIR to the folder that holds it)")
    prior = load_prior(path)
    if prior.sha256 != sha:
        raise MedcompError(f".mcz was written with another UniCompress prior '{prior_id}' (sha256 {sha[:12]}…) than "
                           f"the installed one ({prior.sha256[:12]}…): decode it with the medcomp version that wrote it")
    return prior
