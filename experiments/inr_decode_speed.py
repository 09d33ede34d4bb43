"""How fast the INR files decode on a clinical-size CT, against the machine's matmul speed (issue 37, build 5).

Decoding a per-block SIREN or UniCompress file is one network evaluation per voxel: matmuls and sines. The file
of each codec is written for the 300×512×512 CT of experiments/scale.py (the shared abdomen series tiled along z)
with a short fit (--fit-steps: decode cost depends on the network's shape, set by the target, not on how well it
fitted); then:
- ``medcomp decompress`` as its own process under /usr/bin/time -v: wall seconds and peak RSS;
- the same decode in this process with the network's share timed (medcomp.nn.siren.evaluate_in_pieces): its
  GFLOP/s (2 × points × Σ in·out of the linear layers), beside the same shapes' matmuls alone (torch.baddbmm on the
  same pieces, no sines) and a plain torch.mm of one piece's shape, (8192 × width) @ (width × width), repeated (the
  machine's matmul reference for these shapes).

    python experiments/inr_decode_speed.py      # → experiments/results/inr_decode_speed.json/png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import SERIES, make_volume, timed  # noqa: E402  (the same volume and process timing as scale.py)

from medcomp.bench import machine, save_figure  # noqa: E402
from medcomp.utils.atomic import atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = {"unicompress": 256.0, "siren": 10.0}  # the ratios scale.py measures them at


class NetworkClock:
    """Wraps evaluate_in_pieces where a decoder calls it: seconds, multiply-accumulate FLOPs and the shapes seen."""

    def __init__(self, inner):
        self.inner, self.seconds, self.flops, self.calls = inner, 0.0, 0, []

    def __call__(self, net, x, nets=None, **kw):
        t0 = time.perf_counter()
        out = self.inner(net, x, nets=nets, **kw)
        self.seconds += time.perf_counter() - t0
        k, points = x.shape[:2]
        self.flops += 2 * k * points * sum(w.shape[1] * w.shape[2] for w in net.weights)
        self.calls.append((net, x, nets))
        return out


def matmul_only(calls, piece_points: int) -> float:
    """Seconds for the same decode's linear layers alone (baddbmm on the same pieces, no sines): the speed the
    network could reach if sines were free."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for net, x, nets in calls:
            ws = [w[nets] if nets is not None else w for w in net.weights]
            bs = [b[nets] if nets is not None else b for b in net.biases]
            k, points = x.shape[:2]
            step = max(1, piece_points // k)
            for s in range(0, points, step):
                h = x[:, s : s + step]
                for w, b in zip(ws, bs):
                    h = torch.baddbmm(b, h, w)
    return time.perf_counter() - t0


def mm_reference(width: int, rows: int, seconds: float = 3.0) -> float:
    """GFLOP/s of a float32 torch.mm, (rows × width) @ (width × width), repeated, on this machine's threads."""
    a, b = torch.rand(rows, width), torch.rand(width, width)
    torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * n * a.shape[0] * width * width / (time.perf_counter() - t0) / 1e9


def in_process(codec: str, mcz: Path) -> dict:
    import medcomp.models.compression.per_block_siren as per_block_siren
    import medcomp.models.compression.unicompress as unicompress
    from medcomp.codecs.container import read_container
    from medcomp.codecs.registry import decode_container
    from medcomp.nn.siren import DECODE_PIECE_POINTS, evaluate_in_pieces

    module = unicompress if codec == "unicompress" else per_block_siren
    clock = NetworkClock(evaluate_in_pieces)
    module.evaluate_in_pieces = clock
    try:
        container = read_container(mcz)
        t0 = time.perf_counter()
        decode_container(container)
        total = time.perf_counter() - t0
    finally:
        module.evaluate_in_pieces = evaluate_in_pieces
    h = container.header
    mm_s = matmul_only(clock.calls, DECODE_PIECE_POINTS)
    return {"width": h["width"], "depth": h["depth"], "groups": h.get("groups", 1), "layout": h["layout"],
            "decode_s": total, "network_s": clock.seconds, "network_gflops": clock.flops / 1e9,
            "network_gflop_per_s": clock.flops / clock.seconds / 1e9,
            "same_matmuls_alone_s": mm_s, "same_matmuls_gflop_per_s": clock.flops / mm_s / 1e9,
            "mm_reference_gflop_per_s": mm_reference(h["width"], DECODE_PIECE_POINTS), "torch_threads": torch.get_num_threads()}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["cases"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [f"{r['codec']} CR {r['ratio']:g}" for r in rows]
    net = [r["in_process"]["network_s"] for r in rows]
    rest = [r["decompress"]["wall_s"] - n for r, n in zip(rows, net)]
    ax1.barh(names, net, label="network (matmuls + sines)")
    ax1.barh(names, rest, left=net, label="the rest of the process")
    ax1.axvline(60, color="k", ls="--", lw=1, label="target 60 s")
    ax1.set_xlabel(f"medcomp decompress, {rows[0]['slices']}×512×512 CT (s)")
    ax1.legend(fontsize=8)
    width = 0.25
    for k, (key, label) in enumerate((("network_gflop_per_s", "decode network"),
                                      ("same_matmuls_gflop_per_s", "its matmuls alone"),
                                      ("mm_reference_gflop_per_s", "torch.mm, one piece's shape"))):
        ax2.bar([i + k * width for i in range(len(rows))], [r["in_process"][key] for r in rows], width, label=label)
    ax2.set_xticks([i + width for i in range(len(rows))], names)
    ax2.set_ylabel("GFLOP/s (float32)")
    ax2.legend(fontsize=8)
    fig.suptitle(f"INR decode speed ({result['machine']['cpus']} CPU cores, {result['date'][:10]})")
    save_figure(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--codecs", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--fit-steps", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "inr_decode_speed.json"))
    args = p.parse_args()
    if not SERIES.is_dir():
        print(f"inr_decode_speed.py: {SERIES} not found (the shared abdomen CT series)", file=sys.stderr)
        return 2
    result = {"name": "inr_decode_speed", "command": "python " + " ".join(sys.argv), "machine": machine(),
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "cases": []}
    with tempfile.TemporaryDirectory(prefix="medcomp-inr-decode-") as tmp:
        tmp = Path(tmp)
        src, nbytes = make_volume(args.slices, tmp)
        for codec in args.codecs:
            mcz = tmp / f"{codec}.mcz"
            compress = timed(["compress", str(src), str(mcz), "--codec", codec, "--ratio", str(CASES[codec]),
                              "-o", f"model.fit_steps={args.fit_steps}", "--device", "cpu"])
            if compress["exit"] != 0:
                print(f"{codec}: compress failed: {compress.get('error')}", file=sys.stderr)
                return 1
            case = {"codec": codec, "slices": args.slices, "ratio": CASES[codec], "fit_steps": args.fit_steps,
                    "volume_bytes": nbytes, "compress": compress,
                    "decompress": timed(["decompress", str(mcz), str(tmp / f"{codec}.nii.gz"), "--device", "cpu"]),
                    "in_process": in_process(codec, mcz)}
            ip = case["in_process"]
            print(f"{codec}: decompress {case['decompress']['wall_s']:.1f} s "
                  f"({case['decompress']['peak_rss_bytes'] / 2**30:.2f} GiB); network {ip['network_s']:.1f} s of "
                  f"{ip['decode_s']:.1f} s in process, {ip['network_gflop_per_s']:.1f} GFLOP/s (its matmuls alone "
                  f"{ip['same_matmuls_gflop_per_s']:.1f}, torch.mm reference {ip['mm_reference_gflop_per_s']:.1f})", flush=True)
            result["cases"].append(case)
            atomic_write_text(Path(args.out), json.dumps(result, indent=2))
    plot(result, Path(args.out).with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
