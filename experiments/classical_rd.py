"""Rate-distortion of the classical codecs on real data, every codec at the same targets on the same images.

    python experiments/classical_rd.py            # (make bench) writes experiments/results/classical_rd_*.json/png

CT: the abdomen CT volume of ../shared/data (int32 HU, 122x101x112) when present, else pydicom-data's CT slice.
X-ray: pydicom-data's 15-bit chest CR (RG1) and 10-bit extremity CR (RG3), centre-cropped to 1024 px.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from medcomp.bench import rd_benchmark, shared_data
from medcomp.data.block_datamodules import center_crop, sample_files
from medcomp.data.readers import read_image

ROOT = Path(__file__).resolve().parent.parent

# the 2-D codecs slice by slice, the video codecs, and the 3-D error-bounded codecs the INR literature compares with
# (ZFP is 3-D only; its fixed-rate mode is in scale.py)
CODECS = ["jpeg", "jpeg2000", "htj2k", "jpegxl", "jpegls", "h264", "hevc", "sperr", "sz3"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", nargs="+", type=float, default=[16, 32, 64, 128, 256])
    ap.add_argument("--codecs", nargs="+", default=CODECS)
    ap.add_argument("--out-dir", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args(argv)
    command = "python experiments/classical_rd.py " + " ".join(argv if argv is not None else sys.argv[1:])

    shared = shared_data()
    ct = [shared / "ct" / "abdomen_ct_122x101x112.nii.gz"] if shared else sample_files(["693_UNCR.dcm"])
    with tempfile.TemporaryDirectory() as tmp:
        xray = []
        for p in sample_files(["RG1_UNCR.dcm", "RG3_UNCR.dcm"]):
            im = center_crop(read_image(p), 1024)
            xray.append(Path(tmp) / f"{p.stem}_crop1024.npy")
            np.save(xray[-1], im.array)
        for name, inputs in (("classical_rd_ct", ct), ("classical_rd_xray", xray)):
            res = rd_benchmark(inputs, args.codecs, ratios=args.ratios, reference="jpeg2000", name=name,
                               out_dir=Path(args.out_dir), command=command)
            print(f"\n{name}: BD vs {res['reference']}")
            for codec, bd in res["bd_vs_reference"].items():
                print(f"  {codec:9s} BD-rate {bd['bd_rate']}  BD-PSNR {bd['bd_psnr']}")


if __name__ == "__main__":
    main()
