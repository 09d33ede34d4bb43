"""Rate control in a few whole encodes (target.fit_by_sample), slices coded on several threads, --threads."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medcomp.codecs.registry import get_codec
from medcomp.data.readers import read_image
from medcomp.target import RATE_TOLERANCE, WholeEncodes, fit_by_sample, fit_to_budget, spread


class Sizes:
    """A codec's sizes in a knob: the whole file ~ 1e6·2^(−knob/6) (CRF-like), the sample a share of it that
    drifts with the knob (a sample is never an exact scale model), each call counted."""

    def __init__(self, share=0.1, drift=0.2, step=None):
        self.share, self.drift, self.step = share, drift, step
        self.whole_calls = self.sample_calls = 0

    def whole(self, k):
        self.whole_calls += 1
        return int(1e6 * 2 ** (-k / 6)) + 500  # + a header that does not scale

    def sample(self, k):
        self.sample_calls += 1
        return int(self.share * (1 + self.drift * k / 51) * 1e6 * 2 ** (-k / 6))


@pytest.mark.parametrize("drift", [0.0, 0.2, -0.5, 1.5])
def test_fit_by_sample_meets_the_ceiling_within_tolerance_in_a_few_whole_encodes(drift):
    sizes = Sizes(drift=drift)
    budget = 123_456
    knob = fit_by_sample(sizes.whole, sizes.sample, budget, 0.0, 51.0, share=0.05, increasing=False)
    got = sizes.whole(knob)
    assert (1 - RATE_TOLERANCE) * budget <= got <= budget
    assert sizes.whole_calls - 1 <= 4  # a full bisection takes ~18
    # the whole-volume bisection needs many more whole encodes for the same file
    bisect = Sizes()
    fit_to_budget(bisect.whole, budget, 0.0, 51.0, increasing=False)
    assert bisect.whole_calls >= 10


def test_fit_by_sample_keeps_the_ceiling_when_the_sample_misleads():
    """A sample that says nothing about the whole (sizes unrelated to the knob) still ends in a file that fits:
    the whole-volume bisection between the knobs measured finishes the search."""
    sizes = Sizes()
    budget = 77_777
    knob = fit_by_sample(sizes.whole, lambda k: 1000, budget, 0.0, 51.0, share=0.05, increasing=False)
    assert (1 - RATE_TOLERANCE) * budget <= sizes.whole(knob) <= budget


def test_fit_by_sample_integer_knob_stops_one_step_short():
    """An integer knob whose neighbour overshoots is the answer even when it is more than 3 % under."""
    whole = {k: 1000 * (10 - k) for k in range(10)}  # 10 % steps
    calls = []

    def whole_size(k):
        calls.append(k)
        return whole[k]

    knob = fit_by_sample(whole_size, lambda k: whole[k] // 10, 4500, 0, 9, share=0.1, increasing=False, integer=True)
    assert knob == 6 and whole[knob] <= 4500 < whole[5]
    assert len(calls) <= 2


def test_fit_by_sample_ends_of_the_range():
    sizes = Sizes()
    # nothing fits: the smallest output (the largest knob); everything fits: the largest output (knob 0)
    assert fit_by_sample(sizes.whole, sizes.sample, 10, 0.0, 51.0, share=0.1, increasing=False) == 51.0
    assert fit_by_sample(sizes.whole, sizes.sample, 1e9, 0.0, 51.0, share=0.1, increasing=False) == 0.0


def test_whole_encodes_keeps_the_largest_fitting_file_and_counts():
    class File:
        def __init__(self, n):
            self.n = n

        def to_bytes(self):
            return b"x" * self.n

    built = []
    encodes = WholeEncodes(lambda k: built.append(k) or File(int(k)), budget=100)
    for k in (50, 120, 90, 60, 130):
        encodes.size(k)
    assert encodes.count == 5
    assert set(encodes.kept) == {90, 120}  # the largest that fits, the smallest that does not
    assert encodes.chosen(90).n == 90 and len(built) == 5  # not coded again
    assert encodes.chosen(60).n == 60 and len(built) == 6  # one not kept is coded anew
    assert encodes.counted(lambda k: 7)(3) == 7 and encodes.report() == {"whole_encodes": 5, "sample_encodes": 1}


def test_spread_takes_evenly_spaced_runs_inside_the_volume():
    assert spread(300, 4, 8)[:8] == list(range(8)) and spread(300, 4, 8)[-8:] == list(range(292, 300))
    assert len(spread(300, 4, 8)) == 32
    assert spread(10, 3) == [0, 4, 9]
    assert spread(5, 9) == [0, 1, 2, 3, 4]  # never an index twice, never outside


@pytest.fixture
def ct_volume(shared):
    """The benchmarks' abdomen CT, 112 real slices of 101×122: enough slices for the sampled search."""
    return read_image(shared / "ct" / "abdomen_ct_122x101x112.nii.gz")


@pytest.mark.parametrize("name", ["jpeg2000", "jpegls", "jpegxl", "jpeg"])
def test_slice_codecs_meet_the_ratio_in_few_whole_encodes(name, ct_volume):
    from medcomp.target import Target

    codec = get_codec(name)
    target = Target(ratio=12.0)
    container = codec.encode(ct_volume, target)
    size = len(container.to_bytes())
    budget = target.target_bytes(ct_volume)
    assert size <= budget
    assert codec.rate_search["whole_encodes"] <= 4
    if not codec.integer:  # a real knob is fine enough to land within the tolerance
        assert size >= (1 - RATE_TOLERANCE) * budget
    decoded = codec.decode(container)
    assert decoded.shape == ct_volume.array.shape and decoded.dtype == ct_volume.array.dtype


def test_threads_do_not_change_the_bytes(ct_volume):
    from medcomp.target import Target

    one, two = get_codec("jpeg2000"), get_codec("jpeg2000")
    one.threads, two.threads = 1, 2
    assert one.encode(ct_volume, Target(ratio=20)).to_bytes() == two.encode(ct_volume, Target(ratio=20)).to_bytes()


def test_video_rate_search_on_runs_of_frames(ct_volume):
    from medcomp.target import Target

    frames = ct_volume
    codec = get_codec("h264")
    target = Target(ratio=30.0)
    size = len(codec.encode(frames, target).to_bytes())
    assert (1 - RATE_TOLERANCE) * target.target_bytes(frames) <= size <= target.target_bytes(frames)
    assert codec.rate_search["whole_encodes"] <= 4 and codec.rate_search["sample_encodes"] >= 1


def test_cli_threads_option(cli, refused, tmp_path, ct_volume):
    src = tmp_path / "ct.npy"
    np.save(src, ct_volume.array[:4])
    refused("compress", src, tmp_path / "a.mcz", "--codec", "jpeg2000", "--ratio", "8", "--threads", "0",
            match="--threads must be at least 1")
    code, out, err = cli("compress", src, tmp_path / "a.mcz", "--codec", "jpeg2000", "--ratio", "8", "--threads", "1")
    row = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and row["whole_encodes"] >= 1 and math.isfinite(row["psnr"]), err


def test_one_target_object_reaches_every_fit_of_a_run(tmp_path, monkeypatch):
    """tasks.compress builds the run's target once; the model's fit and a fitted baseline's fit get that object."""
    from medcomp import fitting
    from medcomp.config import compose
    from medcomp.tasks import compress
    from tests.conftest import smooth_volume

    made, seen, real_fit, real_target = [], [], fitting.fit, compress.target_from_cfg

    def spy_fit(cfg, *args, **kwargs):
        fitted = real_fit(cfg, *args, **kwargs)
        seen.append(fitted.model.target)
        return fitted

    monkeypatch.setattr(fitting, "fit", spy_fit)  # FittedCodec.encode imports it from here
    monkeypatch.setattr(compress, "fit", spy_fit)
    monkeypatch.setattr(compress, "target_from_cfg", lambda c: made.append(real_target(c)) or made[-1])
    np.save(tmp_path / "ct.npy", smooth_volume((8, 32, 32)))
    cfg = compose(["model=siren", "data=volume", f"data.path={tmp_path / 'ct.npy'}", "data.block_size_3d=[8,16,16]",
                   "model.fit_steps=2", "baselines=[siren]", "compression=cr10", "logger=none", "callbacks=none",
                   "save_final_checkpoint=false", f"paths.output_dir={tmp_path / 'run'}"])
    compress.run(cfg)
    assert len(made) == 1 and len(seen) == 2 and all(t is made[0] for t in seen)
