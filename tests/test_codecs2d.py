"""The trained 2-D codecs (CAL-VAE, RNN-Conv): real files, separate-process decoding, the weights check, rates."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcomp.codecs.base import split_planes
from medcomp.codecs.container import read_container
from medcomp.codecs.registry import decode_container, get_codec, trained_codecs
from medcomp.codecs.trained2d import default_weights, load_weights
from medcomp.data.image import Image
from medcomp.data.image_corpus import ImagesDataModule
from medcomp.data.readers import read_image
from medcomp.errors import MedcompError
from medcomp.models.compression.cal_vae import CalVAE
from medcomp.models.compression.rnn_conv import RNNConv
from medcomp.nn.conv_rnn import Binarizer, ConvLSTMCell, PyramidPooling
from medcomp.target import Target
from tests.conftest import run_cli

SMALL = {"cal_vae": lambda: CalVAE(channels=8, latent=8, heads=2), "rnn_conv": lambda: RNNConv(channels=8, max_iterations=6)}


def small_weights(name: str, path, seed: int = 0):
    torch.manual_seed(seed)
    return SMALL[name]().save_weights(path, made_by="tests")


def xray_like(shape=(100, 90), bits=12, seed=0) -> np.ndarray:
    """A smooth 12-bit image whose sides are not multiples of 16 (padding and cropping back are exercised)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]] / 40.0
    a = 0.5 + 0.3 * np.sin(2 * y + 1) * np.cos(3 * x) + 0.02 * rng.standard_normal(shape)
    return np.clip(a * (2**bits - 1), 0, 2**bits - 1).astype(np.uint16)


def test_both_codecs_are_registered_as_trained():
    assert {"cal_vae", "rnn_conv"} <= trained_codecs()


def test_a_trained_codecs_network_is_the_one_its_model_config_trains(monkeypatch, tmp_path):
    from medcomp.codecs import trained2d
    from medcomp.models.compression.cal_vae import CalVAE
    from medcomp.models.compression.rnn_conv import RNNConv

    assert trained2d.trained_module_class("cal_vae") is CalVAE
    assert trained2d.trained_module_class("rnn_conv") is RNNConv
    monkeypatch.setattr("medcomp.config.CONF_DIR", tmp_path)  # no conf/model/cal_vae.yaml there
    with pytest.raises(MedcompError, match=r"codec 'cal_vae' is trained, but conf/model/cal_vae.yaml does not name"):
        trained2d.trained_module_class("cal_vae")


@pytest.mark.parametrize("name", ["cal_vae", "rnn_conv"])
def test_round_trip_in_separate_processes_is_bit_exact(tmp_path, name):
    weights = small_weights(name, tmp_path / "w.pt")
    src = tmp_path / "img.npy"
    np.save(src, xray_like())
    r = run_cli("compress", src, tmp_path / "a.mcz", "--codec", name, "--ckpt", weights, "--bpp", 1)
    assert r.returncode == 0, r.stderr
    reported = json.loads(r.stdout)
    size = (tmp_path / "a.mcz").stat().st_size
    assert reported["bpp"] == pytest.approx(8 * size / (100 * 90))  # bpp from the file's bytes
    assert 0.3 < reported["bpp"] <= 1  # a ceiling (how closely each codec meets a target: the rate tests below)
    r = run_cli("decompress", tmp_path / "a.mcz", tmp_path / "b.npy", "--ckpt", weights)
    assert r.returncode == 0, r.stderr
    other_process = np.load(tmp_path / "b.npy")
    # the encoder-side reconstruction, in this process
    here = decode_container(read_container(tmp_path / "a.mcz"), ckpt=weights).array
    assert other_process.dtype == np.uint16 and other_process.shape == (100, 90)
    np.testing.assert_array_equal(other_process, here)


@pytest.mark.parametrize("name", ["cal_vae", "rnn_conv"])
def test_other_weights_are_refused_clearly(tmp_path, name):
    right = small_weights(name, tmp_path / "right.pt", seed=0)
    wrong = small_weights(name, tmp_path / "wrong.pt", seed=1)
    image = Image(xray_like(), name="x")
    c = get_codec(name, ckpt=right).encode(image, Target(bpp=0.5))
    (tmp_path / "a.mcz").write_bytes(c.to_bytes())
    r = run_cli("decompress", tmp_path / "a.mcz", tmp_path / "out.npy", "--ckpt", wrong)
    assert r.returncode == 2
    assert "not the ones this file was encoded with" in r.stderr and "wrong.pt" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.npy").exists()


def test_weights_of_the_other_codec_and_missing_weights_are_refused(tmp_path):
    cal = small_weights("cal_vae", tmp_path / "cal.pt")
    with pytest.raises(MedcompError, match="weights are for codec 'cal_vae', not 'rnn_conv'"):
        load_weights(cal, expect="rnn_conv")
    with pytest.raises(MedcompError, match="not found"):
        load_weights(tmp_path / "nope.pt")
    r = run_cli("compress", tmp_path / "cal.pt", tmp_path / "a.mcz", "--codec", "jpeg2000", "--ckpt", cal, "--bpp", 1)
    assert r.returncode == 2


def test_sixteen_bit_range_survives(tmp_path):
    """A signed 16-bit image keeps its units: the header maps [0, 1] back to the original's own range, and decoded
    values stay inside it, in the original dtype (untrained weights: only the mapping is checked, not quality)."""
    weights = small_weights("rnn_conv", tmp_path / "w.pt")
    a = (xray_like(bits=16).astype(np.int32) - 30000).astype(np.int16)  # signed, HU-like
    image = Image(a, name="ct")
    c = get_codec("rnn_conv", ckpt=weights).encode(image, Target(bpp=2))
    d = decode_container(c, ckpt=weights).array
    assert d.dtype == np.int16 and d.shape == a.shape
    assert c.header["mapping"] == {"lo": float(a.min()), "hi": float(a.max())}
    assert d.min() >= a.min() and d.max() <= a.max()


def test_volume_is_coded_slice_by_slice(tmp_path):
    weights = small_weights("cal_vae", tmp_path / "w.pt")
    vol = np.stack([xray_like(seed=s) for s in range(3)])
    c = get_codec("cal_vae", ckpt=weights).encode(Image(vol, name="v"), Target(bpp=1))
    assert len(np.frombuffer(c.sections["index"], dtype="<u4")) == 3
    assert decode_container(c, ckpt=weights).array.shape == vol.shape


def test_cal_vae_gain_level_follows_the_target():
    """One weights file, every rate: the ladder level (its gains interpolated between trained levels) is searched
    until the file fits, and the file grows with the level. An untrained tiny network has latents near zero, so its
    gains are spread wide here to give it a range of rates; each target is met from below."""
    torch.manual_seed(0)
    module = CalVAE(channels=8, latent=8, heads=2, lmbdas=[0.001, 0.01, 0.1]).eval()
    with torch.no_grad():
        module.log_gain.copy_(torch.tensor([2.0, 4.0, 6.0])[:, None].expand(3, 8))
    module.prepare_coding()
    codec = get_codec("cal_vae")
    codec._loaded = (module, "sha")
    image = Image(xray_like(shape=(128, 128)), name="x")
    x = torch.from_numpy(xray_like(shape=(128, 128)).astype(np.float32) / 4095)[None, None]
    rates = [len(module.stream(module.analyse(x), k)) * 8 / 128**2 for k in (0, 16, 32, 48, 64)]
    assert all(b > a for a, b in zip(rates, rates[1:])), rates  # interpolated levels lie between trained ones
    def file_bpp(target_bpp):
        return len(codec.encode(image, Target(bpp=target_bpp)).to_bytes()) * 8 / 128**2

    smallest, largest = file_bpp(1e-3), file_bpp(100)  # the lowest and the highest level's files
    for want in np.linspace(smallest, largest, 6)[1:-1]:
        c = codec.encode(image, Target(bpp=want))
        got = len(c.to_bytes()) * 8 / 128**2
        assert 0.9 * want <= got <= want, (want, got, c.header["gain_level_32nds"])


DECODE_ELSEWHERE = """
import sys, numpy as np, torch
from compressai.entropy_models import EntropyBottleneck
from medcomp.codecs.base import split_planes
from medcomp.codecs.container import read_container
from medcomp.codecs.registry import decode_container
torch.set_num_threads(2)
def poisoned(*a, **k):
    raise AssertionError("the decoder evaluated the density network")
EntropyBottleneck._logits_cumulative = poisoned
np.save(sys.argv[3], decode_container(read_container(sys.argv[1]), ckpt=sys.argv[2]).array)
"""


@pytest.mark.parametrize("name", ["cal_vae", "rnn_conv"])
def test_trained_codecs_decode_to_the_same_pixels_anywhere(tmp_path, name):
    """Encoded with 1 thread here, decoded with 2 in another process whose float density network is unusable: the
    entropy tables come only from integers and float64 samples stored in the weights file (CAL-VAE; RNN-Conv's
    stream is plain bits), so the pixels agree with a decode here, at 1 thread."""
    import subprocess
    import sys

    weights = small_weights(name, tmp_path / "w.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c = get_codec(name, ckpt=weights).encode(Image(xray_like(shape=(128, 112)), name="x"), Target(bpp=1))
        here = decode_container(c, ckpt=weights).array
    finally:
        torch.set_num_threads(threads)
    (tmp_path / "a.mcz").write_bytes(c.to_bytes())
    r = subprocess.run([sys.executable, "-c", DECODE_ELSEWHERE, tmp_path / "a.mcz", weights, tmp_path / "b.npy"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), here)


@pytest.mark.parametrize("knob", [-1, 353, 40000, 32.5, "32", None])
def test_a_rate_knob_outside_the_codecs_range_is_a_corrupt_file(tmp_path, knob):
    from medcomp.errors import CorruptFileError

    weights = small_weights("cal_vae", tmp_path / "w.pt")
    c = get_codec("cal_vae", ckpt=weights).encode(Image(xray_like(), name="x"), Target(bpp=1))
    c.header["gain_level_32nds"] = knob  # the default ladder: 10 levels and 2 extrapolated, 0 … 352
    with pytest.raises(CorruptFileError, match=r"corrupt .mcz: cal_vae 'gain_level_32nds' .* is outside \[0, 352\]"):
        decode_container(c, ckpt=weights)


def test_cal_vae_weights_without_stored_tables_are_refused(tmp_path):
    path = small_weights("cal_vae", tmp_path / "w.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items() if not k.startswith("cdf_")}
    torch.save(payload, path)
    with pytest.raises(MedcompError, match=r"w.pt: these 'cal_vae' weights do not fit this version of the codec "
                                           r"\(Missing key\(s\) in state_dict: \"cdf_edges\""):
        load_weights(path)


@pytest.mark.skipif(default_weights("rnn_conv") is None, reason="no shipped RNN-Conv weights")
def test_one_rnn_conv_checkpoint_serves_four_rates():
    from medcomp.data.block_datamodules import center_crop, sample_files
    from medcomp.metrics import psnr

    image = center_crop(read_image(sample_files(["693_UNCR.dcm"])[0]), 256)
    codec = get_codec("rnn_conv")
    points = []
    for bpp in (0.25, 0.5, 0.75, 1.0):
        c = codec.encode(image, Target(bpp=bpp))
        size = len(c.to_bytes())
        points.append((8 * size / image.array.size, psnr(image.array, decode_container(c).array),
                       c.header["iterations"]))
    bpps, psnrs, iterations = zip(*points)
    assert list(iterations) == sorted(set(iterations)), points  # four different iteration counts
    assert all(b2 > b1 for b1, b2 in zip(bpps, bpps[1:])), points
    assert all(p2 > p1 for p1, p2 in zip(psnrs, psnrs[1:])), points
    # a partial last iteration meets each target from below to within one block's bits (+ the header's rounding)
    assert all(0.97 * t <= b <= t for b, t in zip(bpps, (0.25, 0.5, 0.75, 1.0))), points


def test_rnn_conv_partial_iteration_codes_the_first_blocks_only(tmp_path):
    """knob 1.5 on a 64×64 image (16 blocks of 16×16): the first 8 blocks in raster order (the top two block rows)
    get the second iteration, the rest keep the first iteration's pixels; the stream holds 16 + 8 block codes."""
    weights = small_weights("rnn_conv", tmp_path / "w.pt")
    module, _, _ = load_weights(weights)
    x = torch.from_numpy(xray_like(shape=(64, 64)).astype(np.float32) / 4095)[None, None]
    state = module.analyse(x)
    assert module.stream_length(state, 1.5) == len(module.stream(state, 1.5)) == 24 * 32 // 8
    assert len(state.codes) == 2 and len(module.analyse(x).upto(1)) == 1  # only the iterations the file holds
    with torch.no_grad():
        one, one_and_half, two = (module.synthesise(module.stream(state, k), k, (64, 64)) for k in (1.0, 1.5, 2.0))
    assert torch.equal(one_and_half[32:], one[32:])  # blocks left out keep the first iteration's pixels
    # the sent blocks take the second iteration (the decoder sees zeros for the unsent codes around them)
    assert (one_and_half[:32] - two[:32]).abs().mean() < 0.1 * (one[:32] - two[:32]).abs().mean()


def test_conv_rnn_blocks_shapes_and_exact_bits():
    cell = ConvLSTMCell(4, 6, 3, stride=2)
    h, state = cell(torch.randn(2, 4, 16, 12))
    assert h.shape == (2, 6, 8, 6) and state[1].shape == (2, 6, 8, 6)
    h2, _ = cell(torch.randn(2, 4, 16, 12), state)
    assert h2.shape == h.shape
    assert PyramidPooling(16)(torch.randn(1, 16, 5, 7)).shape == (1, 16, 5, 7)
    b = Binarizer(6, 4).eval()
    codes = b(torch.randn(1, 6, 3, 3))
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    b.train()
    x = torch.randn(1, 6, 3, 3, requires_grad=True)
    b(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # straight-through gradient


def test_images_datamodule_crops_and_refuses_train_eval_overlap(tmp_path):
    np.save(tmp_path / "a.npy", xray_like(bits=12))
    np.save(tmp_path / "b.npy", xray_like(shape=(40, 50), bits=8).astype(np.uint8))
    dm = ImagesDataModule(train=[str(tmp_path / "*.npy")], eval=[], crop=64, batch_size=4, steps_per_epoch=2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 1, 64, 64) and batch.min() >= 0 and batch.max() <= 1
    bad = ImagesDataModule(train=[str(tmp_path / "a.npy")], eval=[str(tmp_path / "a.npy")])
    with pytest.raises(MedcompError, match="both for training and for evaluation"):
        bad.setup()
    with pytest.raises(MedcompError, match="matches no file"):
        ImagesDataModule(train=[str(tmp_path / "*.png")], eval=[]).setup()


def test_rnn_conv_iteration_losses():
    """l1 is the mean of the iterations' L1s, log_l1 the mean of their logs (same network, same batch)."""
    x = torch.rand(2, 1, 32, 32)
    torch.manual_seed(1)
    m = RNNConv(channels=8, train_iterations=3)
    with torch.no_grad():
        l1s = torch.stack([F.l1_loss(r, x) for _, r in m.progressive(x, 3)])
        assert torch.isclose(m.training_loss(x)[0], l1s.mean())
        m.hparams.iteration_loss = "log_l1"
        assert torch.isclose(m.training_loss(x)[0], l1s.log().mean())
        m.hparams.iteration_loss = "l2"
        with pytest.raises(ValueError, match="model.iteration_loss=l2: l1 or log_l1"):
            m.training_loss(x)


@pytest.mark.parametrize("name", ["cal_vae", "rnn_conv"])
def test_large_planes_are_coded_as_independent_tiles(tmp_path, monkeypatch, name):
    """A plane larger than a tile is coded tile by tile (here 64-px tiles: a 100×90 image has 2×2 tiles, the edge
    ones smaller): one stream per tile in raster order, each the stream of that region coded on its own (tiles share
    nothing), and the decoded image has the plane's shape and dtype. A tile size off the stride is a corrupt file."""
    from medcomp.codecs import trained2d
    from medcomp.codecs.trained2d import normalise
    from medcomp.errors import CorruptFileError

    monkeypatch.setattr(trained2d, "TILE", 64)
    weights = small_weights(name, tmp_path / "w.pt")
    a = xray_like()
    c = get_codec(name, ckpt=weights).encode(Image(a, name="x"), Target(bpp=1))
    streams = split_planes(c)
    assert c.header["tile"] == 64 and len(streams) == 4
    module, _, _ = load_weights(weights)
    knob = c.header[module.knob_name]
    corner = torch.from_numpy(np.ascontiguousarray(normalise(a)[0][64:, 64:]))  # rows 64…99, columns 64…89
    padded = F.pad(corner[None, None], (0, 6, 0, 12), mode="replicate")  # to 48×32
    with torch.no_grad():
        assert streams[3] == module.stream(module.analyse(padded), knob)
    decoded = decode_container(c, ckpt=weights).array
    assert decoded.shape == a.shape and decoded.dtype == a.dtype
    c.header["tile"] = 40  # not a multiple of the stride (16)
    with pytest.raises(CorruptFileError, match=r"corrupt .mcz: .* tile 40 is not a positive multiple of 16"):
        decode_container(c, ckpt=weights)
