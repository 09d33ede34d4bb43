"""A fixed set of encodes whose `.mcz` bytes must not change when the code around the codecs is reorganised
(issue 18): every classical codec on a shared CT and a shared radiograph, a seeded SIREN and UniCompress fit at
``debug=limit`` scale, and both shipped 2-D codecs.

    python -m tests.regression_set --record     # after a change that is *meant* to change the bytes

The learned fits are bit-reproducible on one machine at one thread count (torch is pinned to 1 thread here), not
across CPUs with other instruction sets: re-record on the machine CI runs on, and say why in the commit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

HASHES = Path(__file__).parent / "data" / "mcz_sha256.json"
CLASSICAL = ("jpeg", "jpeg2000", "jpegxl", "jpegls", "h264", "hevc")
LEARNED_LIMIT = ["model.fit_steps=50", "data.points_per_block=1024"]  # conf/debug/limit.yaml's fit


def inputs(shared: Path) -> dict:
    from medcomp.data.image import Image
    from medcomp.data.readers import read_image

    ct = read_image(shared / "ct" / "abdomen_ct_122x101x112.nii.gz")
    cxr = read_image(shared / "cxr" / "samples" / "00000001_000.png")
    crop = Image(np.ascontiguousarray(ct.array[40:72, 20:84, 20:84]), ct.spacing, dict(ct.meta), origin=ct.origin,
                 direction=ct.direction, rescale=ct.rescale, modality=ct.modality, name="abdomen_crop")
    return {"abdomen_ct": ct, "cxr": cxr, "abdomen_crop": crop}


def cases() -> list[tuple[str, str, str, dict]]:
    """(case name, codec, input, target) — targets as Target(**kwargs)."""
    out = [(f"{codec}/{name}", codec, name, {"ratio": 16}) for codec in CLASSICAL for name in ("abdomen_ct", "cxr")]
    out += [("siren/abdomen_crop", "siren", "abdomen_crop", {"ratio": 32}),
            ("unicompress/abdomen_crop", "unicompress", "abdomen_crop", {"ratio": 32}),
            ("cal_vae/cxr", "cal_vae", "cxr", {"bpp": 0.5}),
            ("rnn_conv/cxr", "rnn_conv", "cxr", {"bpp": 0.5})]
    return out


def encode_all(shared: Path) -> dict[str, str]:
    import torch

    from medcomp.codecs.registry import get_codec, is_fitted
    from medcomp.target import Target

    images = inputs(shared)
    digests = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the rest of a pytest session keeps its thread count
        for case, codec, name, target in cases():
            kwargs = {"overrides": LEARNED_LIMIT} if is_fitted(codec) else {}  # fits at debug=limit scale
            container = get_codec(codec, **kwargs).encode(images[name], Target(**target))
            digests[case] = hashlib.sha256(container.to_bytes()).hexdigest()
    finally:
        torch.set_num_threads(threads)
    return digests


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help=f"write the digests to {HASHES}")
    args = ap.parse_args()
    from tests.conftest import shared_data

    digests = encode_all(shared_data())
    print(json.dumps(digests, indent=1))
    if args.record:
        HASHES.write_text(json.dumps(digests, indent=1) + "\n")
