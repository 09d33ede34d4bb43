"""``medcomp compress | decompress | info | bench``.

Every user error is one line on stderr and exit code 2; outputs are written atomically, so a failure leaves
nothing behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from medcomp.errors import MedcompError


def _target(args):
    """The rate ceiling, or None when --lossless / --max-error asks for an error bound instead."""
    from medcomp.target import Target

    if args.lossless or args.max_error is not None:
        return None
    return Target(ratio=args.ratio, bpp=args.bpp)


def _error_bound(args, codec) -> float | None:
    """--lossless (0) or --max-error E, refused in one line by a codec that cannot guarantee it."""
    import math

    from medcomp.codecs.registry import available_codecs, codec_class

    if not args.lossless and args.max_error is None:
        return None
    bound = 0.0 if args.lossless else args.max_error
    if not (isinstance(bound, float) and math.isfinite(bound) and bound >= 0):
        raise MedcompError(f"--max-error must be a finite number ≥ 0, got {bound}")
    able = [n for n in available_codecs() if (codec_class(n).lossless if bound == 0 else codec_class(n).bounds_error)]
    if not (codec.lossless if bound == 0 else codec.bounds_error):
        raise MedcompError(f"codec '{codec.name}' cannot guarantee {'a lossless file' if bound == 0 else 'an error bound'}"
                           f" (codecs that can: {', '.join(able)})")
    return bound


def cmd_compress(args) -> int:
    from medcomp.codecs.registry import fitted_codecs, get_codec, is_fitted
    from medcomp.data.readers import read_image
    from medcomp.evaluation import encode_and_measure
    from medcomp.utils.atomic import atomic_write_bytes
    from medcomp.utils.devices import computing_on, trainer_overrides_for
    from medcomp.utils.outputs import check_free_space, check_output_path

    device = _device_for(args.codec, args.device)  # before anything is read: --device cuda without CUDA is one line
    target = _target(args)
    source = args.input if Path(args.input).exists() or ":" not in args.input else args.input.rsplit(":", 1)[0]
    check_output_path(args.output, [source], force=args.force)
    if not str(args.output).lower().endswith(".mcz"):
        raise MedcompError(f"{args.output}: the compressed file must end in .mcz")
    kwargs = _ckpt_kwargs(args.codec, args.ckpt)  # imports the codec's module here, so encode_s does not count it
    if args.override and not is_fitted(args.codec):
        raise MedcompError(f"--override applies to learned codecs ({', '.join(sorted(fitted_codecs()))}), "
                           f"not '{args.codec}'")
    if is_fitted(args.codec):  # a fitted codec fits on the device (one process); the user's overrides come last
        kwargs["overrides"] = [*trainer_overrides_for(device), *args.override]
    codec = get_codec(args.codec, **kwargs)
    if args.threads is not None:
        if args.threads < 1:
            raise MedcompError(f"--threads must be at least 1, got {args.threads}")
        codec.threads = args.threads
    if is_fitted(args.codec):
        codec.fit_config()  # a bad override is one line now, before the image is read
    image = read_image(args.input, key=args.key)
    _print_notes(image.meta.get("notes", []))
    codec.check_input(image, args.input)
    bound = _error_bound(args, codec)
    check_free_space(args.output, compressed_bound(image, target))
    with computing_on(device), killable():
        container, row, decoded = encode_and_measure(codec, image, target, bound=bound)
    row.update(codec.rate_search or {})  # what the rate search cost, where the codec counts it
    if bound is not None:  # the guarantee is checked on the decode, never assumed
        from medcomp.metrics import max_abs_error

        worst = max_abs_error(image.array, decoded.array)
        if worst > bound:
            raise MedcompError(f"{args.input}: codec '{args.codec}' decodes with an error of {worst:g} > {bound:g}; "
                               "nothing was written")
        row["max_error"] = worst
    atomic_write_bytes(args.output, container.to_bytes())
    if target is not None and row["ratio_actual"] < 0.99 * row["ratio_target"]:  # a ceiling: say when it was missed
        _print_notes([f"{args.output}: target CR {row['ratio_target']:.4g} not reached: {args.codec} wrote its "
                      f"smallest file, CR {row['ratio_actual']:.4g} ({row['file_bytes']} bytes)"])
    keys = ("codec", "ratio_target", "ratio_actual", "bpp", "psnr", "ssim", "encode_s", "decode_s", "file_bytes",
            "max_error", "whole_encodes", "sample_encodes")
    print(json.dumps({k: row[k] for k in keys if k in row}))
    return 0


def compressed_bound(image, target) -> int:
    """The most bytes a .mcz may take, for the free-space check made before the work: twice the target (rate
    control meets it or writes its coarsest output), but never less than the original and its container (a lossless
    codec, an unreachable target on a small image), plus 1 MiB of header and file-system slack."""
    if target is None:  # lossless / error-bounded: incompressible data may grow a little
        return int(1.25 * image.nbytes) + (1 << 20)
    return int(max(2 * target.target_bytes(image), 1.01 * image.nbytes + 4096)) + (1 << 20)


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"medcomp: note: {note}", file=sys.stderr)


def _ckpt_kwargs(codec: str, ckpt: str | None) -> dict:
    """--ckpt goes to the trained codecs (cal_vae, rnn_conv) only."""
    from medcomp.codecs.registry import is_trained, trained_codecs

    if is_trained(codec):
        return {"ckpt": ckpt} if ckpt else {}
    if ckpt:
        raise MedcompError(f"--ckpt applies to trained codecs ({', '.join(sorted(trained_codecs()))}), not '{codec}'")
    return {}


def _device_for(codec: str, name: str):
    """--device for a codec that runs a network (fitted or trained); "cpu" for the others, without importing torch
    (a classical codec's process would spend 1.3 s and 0.5 GB resident on it)."""
    from medcomp.codecs.registry import available_codecs, is_fitted, is_trained
    from medcomp.utils.devices import DEVICES, resolve_device

    if codec in available_codecs() and (is_fitted(codec) or is_trained(codec)):
        return resolve_device(name)
    if name not in DEVICES:
        return resolve_device(name)  # the one-line error for a misspelt device
    return "cpu"


def cmd_decompress(args) -> int:
    import numpy as np

    from medcomp.codecs.base import check_header
    from medcomp.codecs.container import read_container
    from medcomp.codecs.registry import decode_container, get_codec
    from medcomp.data.writers import Lossy, check_output, is_dicom_series_path, write_image
    from medcomp.utils.devices import computing_on
    from medcomp.utils.outputs import check_free_space, check_output_path

    check_output_path(args.output, [args.input], force=args.force, folder_ok=is_dicom_series_path(args.output))
    container = read_container(args.input)
    device = _device_for(container.codec, args.device)
    header = check_header(container.header)
    original_bytes = int(np.prod(header["shape"])) * np.dtype(header["dtype"]).itemsize
    check_output(args.output, len(header["shape"]))
    # a bound: real values (.npy with a rescale) may be float64; a series adds a header per slice file
    n_files = header["shape"][0] + 1 if is_dicom_series_path(args.output) else 1
    value_bytes = int(np.prod(header["shape"])) * (8 if header.get("rescale") else np.dtype(header["dtype"]).itemsize)
    check_free_space(args.output, int(value_bytes * 1.02) + n_files * 8192 + (1 << 20), files=n_files + 1)
    codec = get_codec(container.codec, **_ckpt_kwargs(container.codec, args.ckpt))
    with computing_on(device), killable():
        image = decode_container(container, codec)
    file_bytes = Path(args.input).stat().st_size
    lossy = None if codec.is_lossless(container) else Lossy(original_bytes / file_bytes, codec.lossy_method())
    _print_notes(write_image(args.output, image, lossy=lossy))
    return 0


def cmd_info(args) -> int:
    import numpy as np

    from medcomp.codecs.base import check_header
    from medcomp.codecs.container import read_container
    from medcomp.metrics import bits_per_pixel, compression_ratio

    path = Path(args.input)
    c = read_container(path)
    check_header(c.header)
    size = path.stat().st_size
    shape = c.header["shape"]
    n = int(np.prod(shape))
    original = n * np.dtype(c.header["dtype"]).itemsize
    image_keys = ("shape", "dtype", "spacing", "origin", "direction", "rescale", "photometric", "modality")
    params = {k: v for k, v in c.header.items() if k not in image_keys}
    print(json.dumps({"file": str(path), "codec": c.codec, "shape": shape, "dtype": np.dtype(c.header["dtype"]).name,
                      **{k: c.header.get(k) for k in image_keys[2:]}, "bytes": size, "original_bytes": original,
                      "ratio": compression_ratio(original, size), "bpp": bits_per_pixel(size, n),
                      "sections": {k: len(v) for k, v in c.sections.items()}, "params": params}, indent=2))
    return 0


def cmd_cases(args) -> int:
    """The cases a data=<dataset> run would code: id, shape, dtype and size on disk, from headers alone."""
    from medcomp.data.readers import peek_shape

    cfg, dm = catalogue_dataset(args.overrides, "medcomp cases lists")
    chosen = dm.case_ids or dm.shard
    cases = dm.selected_cases() if chosen else dm.cases()
    rows = []
    for c in cases:
        ref = str(c["image"])
        shape, dtype = peek_shape(ref)
        on_disk = Path(ref.split(":")[0] if ":" in ref and not Path(ref).exists() else ref)
        size = sum(f.stat().st_size for f in on_disk.rglob("*") if f.is_file()) if on_disk.is_dir() else on_disk.stat().st_size
        rows.append({"id": c["id"], "shape": list(shape), "dtype": dtype, "bytes": size})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        what = "selected" if chosen else f"split {dm.split}"
        print(f"data={cfg.data_name}, {what}: {len(rows)} cases")
        for r in rows:
            print(f"{r['id']:<40} {'×'.join(map(str, r['shape'])):>16} {r['dtype']:>8} {r['bytes'] / 1e6:>10.3f} MB")
    return 0


def catalogue_dataset(overrides: list[str], what: str):
    """(config, DatasetDataModule) of ``data=<catalogue dataset> data.root=…`` overrides; ``what`` starts the error
    for any other data config."""
    from hydra.utils import instantiate

    from medcomp.config import compose

    cfg = compose(list(overrides))
    if not str(cfg.data._target_).endswith(".DatasetDataModule"):
        raise MedcompError(f"{what} a catalogue dataset (data=msd_liver, cremi, …), not data={cfg.data_name}")
    return cfg, instantiate(cfg.data)


def cmd_bench_rd(args) -> int:
    from medcomp.bench import rd_benchmark

    # `--input a.nii data=…`: argparse hands the override to --input's list; a key=value that is no file is one
    moved = [a for a in args.input or [] if "=" in a and not Path(a).exists()]
    args.input = [a for a in args.input or [] if a not in moved] or None
    args.overrides = [*moved, *args.overrides]
    if bool(args.input) == bool(args.overrides):
        raise MedcompError("medcomp bench rd: give --input FILE… or a dataset's case selection "
                           "(data=msd_liver data.root=DIR [data.split=…] [data.shard=K/N | data.cases=[…]]), not both")
    # a dataset's selection, read as a run.py compress run reads it (no blocks, no padding)
    images = catalogue_dataset(args.overrides, "a case selection needs")[1].read_selected() if args.overrides else None
    rd_benchmark(inputs=args.input or [], images=images, codecs=args.codecs, ratios=args.ratios, bpps=args.bpps,
                 reference=args.reference, name=args.name, out_dir=Path(args.out_dir), key=args.key,
                 command=" ".join(sys.argv))
    return 0


def cmd_report(args) -> int:
    from medcomp.dataset_report import make_report, print_report

    report = make_report([Path(d) for d in args.sweep_dirs], out=args.out, reference=args.reference,
                         wandb=not args.no_wandb, command=" ".join(sys.argv))
    print_report(report)
    out = Path(report["out"])
    print(f"report: {out / 'report.json'}" + (f", {out / 'report_rd.png'}" if report["rows"] else "")
          + (f"; W&B run: {report['wandb_dir']}" if report.get("wandb_dir") else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medcomp", description="Medical image compression: real files, real bytes.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress an image or volume into a .mcz file")
    c.add_argument("input", help="DICOM file or series folder, NIfTI, NRRD/MHA, HDF5 (file.h5:key), PNG/JPEG/TIFF, NPY")
    c.add_argument("output", help="the .mcz file to write")
    c.add_argument("--codec", required=True)
    rate = c.add_mutually_exclusive_group(required=True)
    rate.add_argument("--ratio", type=float, help="target compression ratio (original bytes / file bytes)")
    rate.add_argument("--bpp", type=float, help="target bits per pixel/voxel")
    rate.add_argument("--lossless", action="store_true", help="a bit-exact file (deflate, jpegls, jpeg2000, htj2k, "
                                                               "jpegxl, zfp, h264, hevc), checked on the decode")
    rate.add_argument("--max-error", type=float, metavar="E", help="at most E stored units of absolute error "
                                                                   "(jpegls, sz3, zfp, sperr, deflate), checked")
    c.add_argument("--key", help="HDF5 dataset key")
    c.add_argument("--threads", type=int, metavar="N", help="slices coded at once by the classical codecs (x264/x265: "
                                                            "their thread pool); default: one a usable core")
    c.add_argument("--force", action="store_true", help="overwrite an existing output file")
    c.add_argument("--ckpt", help="weights file of a trained codec (cal_vae, rnn_conv); default: the shipped one")
    c.add_argument("--device", default="auto", help="where learned codecs fit and run their networks: auto (CUDA when "
                                                     "present), cpu or cuda; entropy coding stays on the host")
    c.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override for learned codecs, e.g. -o model.fit_steps=3000 -o data.block_size=[64,64,64]")
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help="decode a .mcz file into .nii.gz, .nrrd, .mha, .npy, .png, .tif, .dcm "
                                          "or a folder (a DICOM series, one file per slice)")
    d.add_argument("input")
    d.add_argument("output")
    d.add_argument("--force", action="store_true", help="overwrite an existing output file")
    d.add_argument("--ckpt", help="the weights file the .mcz was encoded with (trained codecs; checked by sha256)")
    d.add_argument("--device", default="auto", help="where learned decoders run their networks: auto (CUDA when "
                                                     "present), cpu or cuda")
    d.set_defaults(func=cmd_decompress)

    i = sub.add_parser("info", help="print a .mcz file's codec, shape, dtype, bytes, CR and bpp as JSON")
    i.add_argument("input")
    i.set_defaults(func=cmd_info)

    cs = sub.add_parser("cases", help="list a dataset's cases (id, shape, dtype, size) from headers alone: "
                                      "medcomp cases data=msd_liver data.root=DIR [data.split=all] [data.shard=0/4]")
    cs.add_argument("overrides", nargs="+", help="Hydra overrides, as on run.py's command line")
    cs.add_argument("--json", action="store_true", help="print the list as JSON")
    cs.set_defaults(func=cmd_cases)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    rd = bsub.add_parser("rd", help="rate-distortion curves, BD-rate and BD-PSNR against a reference codec")
    rd.add_argument("--input", nargs="+", help="image files (or give a dataset's case selection as overrides)")
    rd.add_argument("overrides", nargs="*", help="a catalogue dataset's cases, as on run.py's command line: "
                                                 "data=msd_liver data.root=DIR [data.split=all] [data.shard=0/4]")
    rd.add_argument("--codecs", nargs="+", default=["jpeg", "jpeg2000", "jpegxl", "hevc", "sperr", "sz3"])
    grp = rd.add_mutually_exclusive_group()
    grp.add_argument("--ratios", nargs="+", type=float)
    grp.add_argument("--bpps", nargs="+", type=float)
    rd.add_argument("--reference", default="jpeg2000")
    rd.add_argument("--name", default="rd")
    rd.add_argument("--key")
    rd.add_argument("--out-dir", default="experiments/results")
    rd.set_defaults(func=cmd_bench_rd)

    r = sub.add_parser("report", help="gather a dataset sweep's cases (data.shard / data.cases runs) into "
                                      "report.json: mean ± 95 % CI per codec and target, BD vs a reference, RD plot")
    r.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR",
                   help="a sweep's multirun folder, its cases folder, or any folder above them (several: gathered)")
    r.add_argument("--reference", default="hevc", help="the codec BD-rate and BD-PSNR are measured against")
    r.add_argument("--out", help="where report.json and report_rd.png go (default: the first SWEEP_DIR)")
    r.add_argument("--no-wandb", action="store_true", help="do not log the summary run to W&B")
    r.set_defaults(func=cmd_report)
    return p


@contextlib.contextmanager
def killable():
    """SIGTERM ends the process at once while it computes: a Python handler runs only between bytecodes, so a long
    native call (an entropy coder, an encoder library) would hold it off for as long as the call lasts. Nothing is
    being written then (outputs are written after, atomically), so there is nothing to clean up."""
    import signal

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame):
    raise KeyboardInterrupt  # unwinds through atomic_path's cleanup: no temporary file is left behind


def _about(args, exc: MedcompError) -> str:
    """The error line, naming the file: an error raised about a .mcz's contents (".mcz header: …", "corrupt .mcz: …")
    does not know the file's path, the command does."""
    text = str(exc)
    paths = [str(p) for p in (getattr(args, "input", None), getattr(args, "output", None)) if isinstance(p, str)]
    if paths and not any(text.startswith(p) for p in paths) and (".mcz" in text or "decode" in text):
        return f"{paths[0]}: {text}"
    return text


def main(argv: list[str] | None = None) -> int:
    import signal
    import warnings

    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    # Library warnings (numpy overflow, Lightning hints) are held back: a failing command prints its one error line
    # and nothing else; a successful one prints each distinct warning once, after its result.
    with warnings.catch_warnings(record=True) as caught:  # the interpreter's filters: what Python would show
        try:
            code = args.func(args)
        except MedcompError as exc:
            print(f"medcomp: error: {_about(args, exc)}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("medcomp: interrupted; nothing was written", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
    for text in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
        print(f"medcomp: warning: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
