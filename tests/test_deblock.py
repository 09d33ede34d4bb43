"""The block-seam filter of the INR codecs: what it touches, what it leaves, and how the encoder picks it."""

import numpy as np
import pytest

from medcomp.codecs.deblock import STRENGTHS, best_strength, check_strength, deblock, signal_best_strength
from medcomp.data.blocks import plan_blocks
from medcomp.errors import CorruptFileError


def _blocky(shape=(40, 48), block=(16, 16), seed=0):
    """A smooth ramp (the original) and the ramp with a different constant offset in every block (the decoded)."""
    ramp = np.add.outer(np.linspace(-300, 300, shape[0]), np.linspace(0, 400, shape[1])).astype(np.int16)
    layout = plan_blocks(shape, block)
    offsets = np.random.default_rng(seed).integers(-40, 40, layout.grid)
    per_voxel = np.kron(offsets, np.ones(block, dtype=int))[: shape[0], : shape[1]]
    return ramp, (ramp + per_voxel).astype(np.int16), layout


def test_deblock_smooths_only_a_band_around_each_seam_in_place():
    _, decoded, layout = _blocky()
    before = decoded.copy()
    out = deblock(decoded, layout, 3)
    assert out is decoded and out.dtype == np.int16
    changed = np.argwhere(out != before)
    # seams at 16 and 32 on both axes: only voxels within 3 of a seam (rows/cols 13..18, 29..34) may change
    near = lambda i: any(s - 3 <= i < s + 3 for s in (16, 32))  # noqa: E731
    assert changed.size and all(near(r) or near(c) for r, c in changed)
    step = lambda a: np.abs(np.diff(a[:, 10].astype(int)))[15]  # the jump across the row-16 seam, column 10  # noqa: E731
    assert step(out) < step(before)


def test_strength_zero_is_the_identity():
    _, decoded, layout = _blocky()
    np.testing.assert_array_equal(deblock(decoded.copy(), layout, 0), decoded)


def test_encoder_picks_a_strength_that_helps_and_none_when_nothing_can():
    ramp, decoded, layout = _blocky()
    best, scores = best_strength(ramp, decoded, layout)
    assert best > 0 and scores[best] > scores[0] + 0.2 and set(scores) == set(STRENGTHS)
    assert best_strength(ramp, ramp.copy(), layout)[0] == 0  # exact decode: any smoothing only hurts


def test_signalled_strength_is_what_the_decoder_applies():
    from medcomp.codecs.container import Container

    ramp, decoded, layout = _blocky(seed=3)

    def decode(container):  # a codec's decoder: its raw blocks, then the header's strength
        return deblock(decoded.copy(), layout, check_strength(container.header["deblock"]))

    container = signal_best_strength(Container("siren", {"deblock": 0}, {}), ramp, layout, decode)
    assert container.header["deblock"] == best_strength(ramp, decoded, layout)[0] > 0
    size_before = len(Container("siren", {"deblock": 0}, {}).to_bytes())
    assert len(container.to_bytes()) == size_before  # one digit: rate control's size holds


@pytest.mark.parametrize("bad", [-1, 99, 2.5, "3", True, None])
def test_bad_strength_in_a_header_is_a_corrupt_file(bad):
    with pytest.raises(CorruptFileError, match="deblocking strength"):
        check_strength(bad)
