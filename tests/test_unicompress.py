"""UniCompress: budget solver, bit-exact bitstream, VQ gradients, entropy coding, and a fast_dev_run of each model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from medcomp.codecs.container import Container
from medcomp.codecs.entropy import MAX_ALPHABET, decode_symbols, decode_uniform, encode_symbols, encode_uniform
from medcomp.codecs.quantize import _bitpack, pack_symbols, unpack_symbols
from medcomp.codecs.unicompress import decode_unicompress, unicompress_container
from medcomp.data.blocks import plan_blocks
from medcomp.data.image import Image
from medcomp.errors import CorruptFileError
from medcomp.nn.siren import siren_shapes
from medcomp.nn.vq import VectorQuantizer
from medcomp.nn.wavelet import haar_dwt, haar_idwt
from medcomp.target import Target
from tests.conftest import ROOT, smooth_volume


def test_vq_straight_through_gradient_reaches_encoder_and_codebook():
    vq = VectorQuantizer(8, 4)
    vq.train()
    z = torch.randn(16, 4, requires_grad=True)
    q, idx, commit = vq(z)
    torch.testing.assert_close(q, vq.codebook[idx])  # forward value is the codeword
    (q.sum() + commit).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


def test_vq_freeze_keeps_assignment():
    vq = VectorQuantizer(4, 2)
    vq.train()
    z = torch.randn(6, 2)
    vq(z)
    vq.freeze(z)
    _, idx, _ = vq(z + 10 * torch.randn(6, 2))
    assert torch.equal(idx, vq.frozen_idx)


@pytest.mark.parametrize("shape", [(2, 1, 8, 6), (1, 1, 4, 6, 8)])
def test_haar_round_trip(shape):
    x = torch.randn(shape, dtype=torch.float64)
    low, highs = haar_dwt(x)
    assert highs.shape[1] == 2 ** (len(shape) - 2) - 1
    torch.testing.assert_close(haar_idwt(low, highs), x)
    assert torch.allclose(low.pow(2).sum() + highs.pow(2).sum(), x.pow(2).sum())  # orthonormal


@pytest.mark.parametrize("symbols", [np.round(np.random.default_rng(0).laplace(0, 6, 3000)).astype(int),
                                     np.arange(5), np.full(7, -4), np.array([], dtype=int)])
def test_entropy_and_packing_round_trip(symbols):
    np.testing.assert_array_equal(decode_symbols(encode_symbols(symbols)), symbols)
    if symbols.size:
        np.testing.assert_array_equal(unpack_symbols(pack_symbols(symbols)), symbols)


def test_quantized_cdf_equals_compressai():
    """The heap version of CompressAI's pmf_to_quantized_cdf gives its exact table (files stay byte-identical)."""
    from compressai._CXX import pmf_to_quantized_cdf

    from medcomp.codecs.entropy import PRECISION, _quantized_cdf

    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(2, 2000))
        counts = np.zeros(k)
        used = rng.choice(k, int(rng.integers(1, k + 1)), replace=False)
        counts[used] = rng.integers(1, int(rng.choice([3, 50, 10**4, 10**6])), used.size)
        expected = pmf_to_quantized_cdf((counts / counts.sum()).tolist() + [1.0 / (1 << PRECISION)], PRECISION)
        assert _quantized_cdf(counts) == expected


def test_sparse_wide_alphabet_round_trips():
    """16-bit weights using few values: CompressAI's CDF builder took 10 s here; the choice of packing is unchanged."""
    s = np.random.default_rng(2).choice(np.arange(-32767, 32768, 97), 200_000)
    packed = pack_symbols(s)
    np.testing.assert_array_equal(unpack_symbols(packed), s)
    for widest in (np.array([-32767, 32767] * 40_000), np.array([-32768, 32767] * 40_000)):  # MAX_ALPHABET, one over
        np.testing.assert_array_equal(unpack_symbols(pack_symbols(widest)), widest)


def test_bit_packing_in_runs_is_the_whole_array_packing():
    """_bitpack codes BIT_RUN symbols at a time (its whole-array form took 64 bytes a bit: 2 GB on a 300-slice CT's
    SIREN weights): the bytes are the whole-array packing's, and they unpack, across run boundaries and bit widths."""
    from medcomp.codecs.quantize import BIT_RUN, _bitunpack

    rng = np.random.default_rng(5)
    for n in (1, 9, BIT_RUN - 1, BIT_RUN, BIT_RUN + 3, 2 * BIT_RUN + 11):
        for hi in (1, 6, 300, 70_000):
            s = rng.integers(-2, hi, n)
            bits = max(1, int(s.max() - s.min()).bit_length())
            whole = np.packbits((((s - s.min()).astype(np.uint64)[:, None] >> np.arange(bits, dtype=np.uint64)) & 1)
                                .astype(np.uint8).ravel()).tobytes()
            packed = _bitpack(s)
            assert packed[9:] == whole, (n, hi)
            np.testing.assert_array_equal(_bitunpack(packed), s)


@pytest.mark.parametrize("n", [0, 1, 24, 25, 40, 41, 1000])
def test_packing_keeps_the_smallest_encoding(n):
    """Skipping an encoder early must not change the choice: the packed section is the smallest of the full
    encodings that can code the symbols (fixed width always; the table and flat rANS for ≥ 2 symbols)."""
    for symbols in (np.full(n, -4), np.arange(n) % 7, np.random.default_rng(n).integers(-300, 300, n)):
        packed = pack_symbols(symbols)
        sizes = [len(_bitpack(symbols)), len(encode_symbols(symbols))]
        if symbols.size and np.ptp(symbols) > 0:
            sizes.append(len(encode_uniform(symbols)))
        assert len(packed) == min(sizes) + 1
        np.testing.assert_array_equal(unpack_symbols(packed), symbols)


@pytest.mark.parametrize("levels", [3, 100, 1023, 1500, 5000, 40001, MAX_ALPHABET])
def test_flat_rans_spends_log2_levels_bits(levels):
    """A small section of near-uniform symbols (no table pays for itself) costs log2(levels) bits a symbol, not the
    whole bits of fixed-width packing, and round-trips; 1023 levels is 10 whole bits, where packing is kept."""
    s = np.random.default_rng(levels).integers(0, levels, 3000) - levels // 2
    s[:2] = -(levels // 2), levels - 1 - levels // 2  # the full alphabet
    packed = pack_symbols(s)
    np.testing.assert_array_equal(unpack_symbols(packed), s)
    ideal = s.size * np.log2(levels) / 8
    assert len(packed) <= max(1.01 * ideal, ideal + 30)
    assert packed[0] == (0 if levels in (1023, MAX_ALPHABET) else 2)
    np.testing.assert_array_equal(decode_uniform(encode_uniform(s)), s)


def test_flat_rans_decodes_bad_streams_the_same_every_time():
    """A short cut is an error; a longer cut or an overwritten section decodes to the same (wrong) weights on every
    call: the decoder reads zeros past the end rather than stray memory, and never enters CompressAI's bypass path
    (undefined shifts). The container's CRC is what rejects such a file; this keeps the decoder to memory it owns."""
    stream = encode_uniform(np.random.default_rng(0).integers(0, 1500, 3000))
    with pytest.raises(CorruptFileError, match="implausible"):
        decode_uniform(stream[:99])  # 3000 symbols of ≥ 1 bit can't fit in 87 bytes
    for bad in (stream[:-40], stream[:12] + b"\xff" * (len(stream) - 12)):
        first = decode_uniform(bad)
        assert first.size == 3000 and 0 <= first.min() and first.max() < 1500
        for _ in range(10):
            np.testing.assert_array_equal(decode_uniform(bad), first)


def test_rans_beats_fixed_width_on_peaked_data():
    s = np.round(np.random.default_rng(1).laplace(0, 3, 5000)).astype(int)
    packed = pack_symbols(s)
    assert packed[0] == 1 and len(packed) < 0.8 * (s.size * int(s.max() - s.min()).bit_length() / 8)


def _container(top=511, width=6, depth=3, code_dim=3, coordinates="image", params=None, groups=1):
    rng = np.random.default_rng(0)
    image = Image(smooth_volume((20, 24)), None, name="t")
    layout = plan_blocks(image.array.shape, (10, 12))
    drawn = [rng.normal(0, 0.3, s).astype(np.float32) for s in siren_shapes(width, depth, 2 + code_dim)]
    params = drawn if params is None else params
    codebook = rng.normal(0, 1, (8, code_dim)).astype(np.float32)
    idx = np.array([3, 3, 5, 1])
    return image, unicompress_container(image, layout, (-1000.0, 1500.0), width, depth, 30.0, code_dim, top, 8,
                                        params, codebook, idx, coordinates=coordinates, groups=groups)


def test_bitstream_round_trip_is_bit_exact_in_another_process(tmp_path):
    image, c = _container()
    data = c.to_bytes()
    here = decode_unicompress(Container.from_bytes(data))
    assert here.dtype == image.array.dtype and here.shape == image.array.shape
    (tmp_path / "u.mcz").write_bytes(data)
    code = ("import numpy as np, sys; from medcomp.codecs.container import read_container;"
            "from medcomp.codecs.unicompress import decode_unicompress;"
            f"np.save(sys.argv[1], decode_unicompress(read_container('{tmp_path / 'u.mcz'}')))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "o.npy")], check=True, cwd=ROOT)
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), here)


def test_unknown_coordinate_frame_is_a_corrupt_file():
    from medcomp.errors import CorruptFileError

    _, c = _container()
    c.header["coordinates"] = "polar"
    with pytest.raises(CorruptFileError, match="coordinate frame"):
        decode_unicompress(c)


def test_block_and_image_frames_decode_differently():
    """The header's frame is what the decoder uses: the same weights give another image in the other frame."""
    _, img_frame = _container(coordinates="image")
    _, blk_frame = _container(coordinates="block")
    assert not np.array_equal(decode_unicompress(img_frame), decode_unicompress(blk_frame))


def test_each_group_of_blocks_decodes_with_its_own_siren():
    """Two groups over a 2 × 2 block grid: group 0 is the first two blocks in raster order (the top half). With the
    one-network weights in group 0 and other weights in group 1, the top half is the one-network image, the bottom
    half is not; with the same weights in both, the whole image is."""
    _, one = _container()
    single = decode_unicompress(one)
    rng = np.random.default_rng(0)
    first = [rng.normal(0, 0.3, s).astype(np.float32) for s in siren_shapes(6, 3, 5)]  # _container's weights
    other = [a[:, ::-1, ::-1] * np.float32(0.5) for a in first]  # smaller: each tensor's quantiser step is unchanged
    _, same = _container(params=[np.concatenate([a, a]) for a in first], groups=2)
    assert same.header["groups"] == 2 and "groups" not in one.header  # one-network files keep their old header
    np.testing.assert_array_equal(decode_unicompress(same), single)
    _, mixed = _container(params=[np.concatenate([a, b]) for a, b in zip(first, other)], groups=2)
    decoded = decode_unicompress(mixed)
    np.testing.assert_array_equal(decoded[:10], single[:10])
    assert not np.array_equal(decoded[10:], single[10:])


@pytest.mark.parametrize("groups", [3, 0, "2"])
def test_groups_that_do_not_divide_the_blocks_are_a_corrupt_file(groups):
    from medcomp.errors import CorruptFileError

    _, c = _container()
    c.header["groups"] = groups
    with pytest.raises(CorruptFileError, match="SIREN groups do not divide 4 blocks"):
        decode_unicompress(c)


def test_split_width_keeps_the_parameters_in_the_fewest_groups_narrow_enough():
    from medcomp.models.compression.unicompress import split_width
    from medcomp.nn.siren import siren_param_count, widest_siren

    params = 43_000
    assert split_width(params, 4, 11, 64, None) == (widest_siren(params, 4, 11), 1)
    width, groups = split_width(params, 4, 11, 64, 64)
    assert 64 % groups == 0 and width <= 64 and groups * siren_param_count(width, 4, 11) <= params
    assert widest_siren(params / (groups // 2), 4, 11) > 64  # half as many groups would be too wide
    assert split_width(params, 4, 11, 7, 20)[1] == 7  # a prime block count: one network per block
    assert split_width(2000, 4, 11, 64, 64) == (widest_siren(2000, 4, 11), 1)  # narrow already


def test_grouped_teacher_and_student_write_files_that_decode(tmp_path):
    """model.max_width below the width the target allows: the teacher and a (no-KD) student both split their SIREN
    over the same groups of blocks, and their files decode to the image's shape."""
    from medcomp.codecs.registry import decode_container
    from medcomp.config import compose
    from medcomp.fitting import fit

    image = Image(smooth_volume((16, 48, 48)), (1.0, 1.0, 1.0), name="v")
    for model in ("model=unicompress", "experiment=unicompress_nokd"):
        cfg = compose([model, *VOLUME_ARGS, "model.fit_steps=2", "model.max_width=8", "logger=none",
                       "callbacks=none", "save_final_checkpoint=false", f"paths.output_dir={tmp_path / model[-4:]}"])
        fitted = fit(cfg, images=[image], target=Target(ratio=24))
        c = fitted.model.export()[0]
        assert fitted.model.groups[0] > 1 and c.header["groups"] == fitted.model.groups[0]
        assert c.header["width"] <= 8 and decode_container(c).array.shape == image.array.shape


def test_only_used_codewords_are_stored():
    _, c = _container()
    assert c.header["n_codes"] == 3  # indices {1, 3, 5}


def _run(tmp_path, *overrides):
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides, "baselines=[]",
                        f"paths.log_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


VOLUME_ARGS = ["data=volume", "data.block_size_3d=[8,16,16]", "compression.ratio=24"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """One 3-step teacher fit, shared by the budget test and the student tests (each run.py start costs seconds)."""
    tmp = tmp_path_factory.mktemp("teacher")
    np.save(tmp / "v.npy", smooth_volume((16, 48, 48)))
    _run(tmp / "logs", "model=unicompress", *VOLUME_ARGS, f"data.path={tmp / 'v.npy'}", "model.fit_steps=3",
         "logger=none")
    return {"volume": tmp / "v.npy", "logs": tmp / "logs", "ckpt": next((tmp / "logs").rglob("final.ckpt"))}


def test_width_solver_fills_budget_without_exceeding(teacher_run):
    """Via a real (3-step) fit: the written file never exceeds the budget and is not far under it."""
    m = json.loads(next(teacher_run["logs"].rglob("metrics.json")).read_text())["summary"]["unicompress"]
    mcz = next(teacher_run["logs"].rglob("*.unicompress.mcz"))
    # The weight levels fill what the width leaves when the weights are entropy-coded (within 3 % on every benchmark
    # input). This toy has 2.2 k weights: rANS's frequency table costs more than it saves, bit-packing goes from 8 to
    # 9 bits a weight in one step, and the solver reserves room for codewords a 3-step fit does not use.
    assert 24 <= m["ratio_actual"] <= 24 * 1.1
    assert m["ratio_actual"] == pytest.approx(np.load(teacher_run["volume"]).nbytes / mcz.stat().st_size)


def test_metrics_record_the_thread_count_the_bytes_depend_on(teacher_run):
    machine = json.loads(next(teacher_run["logs"].rglob("metrics.json")).read_text())["machine"]
    assert isinstance(machine["torch_threads"], int) and 1 <= machine["torch_threads"] <= machine["cpus"]


def test_target_too_small_is_a_clear_error():
    from medcomp.errors import MedcompError
    from medcomp.models.compression.unicompress import UniCompress

    m = UniCompress(target=Target(ratio=5000))
    image = Image(smooth_volume((20, 24)), None, name="tiny")
    with pytest.raises(MedcompError, match="leaves no room"):
        m._solve_width(image, plan_blocks(image.array.shape, (10, 12)), 4)


def test_feature_pretrain_fast_dev_run_saves_a_loadable_extractor(tmp_path):
    from medcomp.nn.pretrained import load_extractor

    _run(tmp_path, "model=feature_pretrain", "data=pretrain_blocks_2d", "data.batch_size=16", "debug=fdr",
         "logger=none", f"model.save_to={tmp_path / 'ex.pt'}")
    enc, source = load_extractor(2, str(tmp_path / "ex.pt"))
    assert source == str(tmp_path / "ex.pt") and enc(torch.zeros(2, 1, 40, 40)).shape == (2, 4, 128)


def test_student_from_teacher_checkpoint(tmp_path, teacher_run):
    _run(tmp_path / "s", "experiment=unicompress_kd", *VOLUME_ARGS, f"data.path={teacher_run['volume']}",
         f"model.teacher_ckpt={teacher_run['ckpt']}", "model.fit_steps=3", "logger=csv", "trainer.log_every_n_steps=1")
    out = next((tmp_path / "s").rglob("metrics.json")).parent
    metrics = json.loads((out / "metrics.json").read_text())
    info = metrics["model_info"]
    assert info["param_ratio"] <= 0.55 and info["inr_parameters"] <= 0.55 * info["teacher_inr_parameters"]
    logged = (next(out.rglob("metrics.csv"))).read_text().splitlines()[0].split(",")
    assert {"kd/gt", "kd/out_teacher", "kd/teacher"} <= set(logged)
    # The student's file decodes in another process to the image the run measured.
    mcz = next(out.glob("mcz/*.unicompress_student.mcz"))
    d = subprocess.run([sys.executable, "-m", "medcomp.cli", "decompress", str(mcz), str(tmp_path / "student.npy")],
                       capture_output=True, text=True, cwd=ROOT)
    assert d.returncode == 0, d.stderr[-2000:]
    original, decoded = np.load(teacher_run["volume"]), np.load(tmp_path / "student.npy")
    assert decoded.shape == original.shape and decoded.dtype == original.dtype
    from medcomp.metrics import psnr

    assert psnr(original, decoded) == pytest.approx(metrics["summary"]["unicompress_student"]["psnr"], abs=1e-6)


def test_student_with_its_own_encoder_logs_the_encoder_terms_until_the_codes_freeze(tmp_path, teacher_run):
    """block_codes=own: the student's extractor + fusion pick its blocks' codewords, aligned to the teacher's by the
    codebook and KL terms, which are logged for the steps before the assignments freeze (2 of 8)."""
    import csv

    _run(tmp_path / "s", "experiment=unicompress_kd", *VOLUME_ARGS, f"data.path={teacher_run['volume']}",
         f"model.teacher_ckpt={teacher_run['ckpt']}", "model.block_codes=own", "model.fit_steps=8", "logger=csv",
         "trainer.log_every_n_steps=1")
    rows = list(csv.DictReader(next((tmp_path / "s").rglob("metrics.csv")).open()))
    kl = [r["kd/kl"] for r in rows if r.get("kd/gt")]
    # Computed at steps 0 and 1; from step 2 it is no longer logged and the CSV repeats the last value.
    assert len(kl) == 8 and all(kl) and kl[0] != kl[1] and set(kl[2:]) == {kl[1]}


def test_unknown_block_codes_is_a_clear_error():
    from medcomp.errors import MedcompError
    from medcomp.models.compression.unicompress_student import UniCompressStudent

    with pytest.raises(MedcompError, match="model.block_codes must be 'teacher' or 'own'"):
        UniCompressStudent(block_codes="mine")


def test_student_needs_a_teacher(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "experiment=unicompress_kd", "debug=fdr",
                        "logger=none", f"paths.log_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "teacher_ckpt is required" in r.stderr


def test_cross_domain_student_loads_only_matching_teacher_parts(tmp_path, teacher_run):
    """Teacher fitted on one volume, student distilled on another of a different size (other widths, codebook)."""
    np.save(tmp_path / "b.npy", smooth_volume((8, 64, 80), seed=5))
    r = _run(tmp_path / "s", "experiment=unicompress_kd_cross", *VOLUME_ARGS, f"data.path={tmp_path / 'b.npy'}",
             f"model.teacher_ckpt={teacher_run['ckpt']}", "debug=fdr", "logger=none")
    assert "re-fitted here" in r.stdout + r.stderr
    assert next((tmp_path / "s").rglob("*.unicompress_student.mcz")).stat().st_size > 0


def test_nokd_student_runs_without_a_teacher(tmp_path):
    np.save(tmp_path / "v.npy", smooth_volume((16, 48, 48)))
    _run(tmp_path, "experiment=unicompress_nokd", *VOLUME_ARGS, f"data.path={tmp_path / 'v.npy'}", "debug=fdr",
         "logger=none")
    info = json.loads(next(tmp_path.rglob("metrics.json")).read_text())["model_info"]
    assert info["distill"] is False and info["teacher_ckpt"] is None and info["param_ratio"] <= 0.55


def test_collapsed_siren_is_restarted_with_half_the_hidden_w0(tmp_path, teacher_run):
    """A hidden w0 far too large leaves the output near-constant; the fit restarts that SIREN with half of it, and the
    file records the w0 the weights were fitted with (the decoder uses it)."""
    from medcomp.codecs.container import read_container
    from medcomp.codecs.registry import decode_container

    r = _run(tmp_path, "model=unicompress", *VOLUME_ARGS, f"data.path={teacher_run['volume']}", "model.fit_steps=12",
             "model.w0_hidden=3000", "model.collapse_check_every=2", "logger=none")
    said = r.stdout + r.stderr  # medcomp's log goes to stdout
    assert "output collapsed at step 2" in said and "restarted with hidden w0 1500" in said
    c = read_container(next(tmp_path.rglob("*.unicompress.mcz")))
    assert c.header["w0"] == 60 and c.header["w0_hidden"] == 1500
    assert decode_container(c).array.shape == np.load(teacher_run["volume"]).shape


def test_files_without_a_hidden_w0_decode_with_one_w0():
    """Files written before w0_hidden existed used w0 in every layer."""
    _, c = _container()
    one = decode_unicompress(c)
    del c.header["w0_hidden"]
    np.testing.assert_array_equal(decode_unicompress(c), one)
    c.header["w0_hidden"] = c.header["w0"] / 2
    assert not np.array_equal(decode_unicompress(c), one)


def test_a_runs_fit_as_a_codec_encodes_its_own_images_at_its_target_only(tmp_path):
    """run.py's compress task calls only Codec.encode: the fit's codec hands out the fitted images' files."""
    from medcomp.config import compose
    from medcomp.errors import MedcompError
    from medcomp.fitting import fit

    cfg = compose(["model=unicompress", *VOLUME_ARGS, "model.fit_steps=2", "logger=none", "callbacks=none",
                   "save_final_checkpoint=false", f"paths.output_dir={tmp_path}"])
    image = Image(smooth_volume((16, 48, 48)), (1.0, 1.0, 1.0), name="v")
    target = Target(ratio=24)
    fitted = fit(cfg, images=[image], target=target)
    codec = fitted.model.as_codec()
    assert codec.encode(image, target).to_bytes() == fitted.model.export()[0].to_bytes()
    with pytest.raises(MedcompError, match="this fit is for cr24, not cr48"):
        codec.encode(image, Target(ratio=48))
    with pytest.raises(MedcompError, match="^w: not one of the images this unicompress fit was trained on"):
        codec.encode(Image(image.array.copy(), image.spacing, name="w"), target)
