import numpy as np
import pytest
import torch

from medcomp.data.blocks import assemble_blocks, plan_blocks, split_blocks
from medcomp.data.datamodule import denormalise, normalise_blocks
from medcomp.nn.siren import BatchedSiren, grid_coordinates, siren_param_count, width_for_budget


@pytest.mark.parametrize("shape,block", [((10, 13), (4, 5)), ((7, 9, 11), (4, 4, 4)), ((8, 8), (16, 16))])
def test_blocks_round_trip(shape, block):
    a = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    layout = plan_blocks(shape, block)
    blocks = split_blocks(a, layout)
    assert blocks.shape == (layout.n_blocks,) + layout.block
    half = layout.n_blocks // 2  # decoders hand blocks over in groups
    np.testing.assert_array_equal(assemble_blocks(layout, a.dtype, [(0, blocks[:half]), (half, blocks[half:])]), a)


def test_first_block_is_top_left_corner():
    a = np.arange(36).reshape(6, 6)
    blocks = split_blocks(a, plan_blocks(a.shape, (3, 3)))
    np.testing.assert_array_equal(blocks[0], a[:3, :3])
    np.testing.assert_array_equal(blocks[1], a[:3, 3:])


@pytest.mark.parametrize("depth,in_dim", [(3, 2), (5, 2), (5, 3), (2, 3)])
def test_width_for_budget_is_the_largest_that_fits(depth, in_dim):
    for budget in (50, 300, 1000, 12345):
        w = width_for_budget(budget, depth, in_dim)
        assert siren_param_count(w, depth, in_dim) <= budget < siren_param_count(w + 1, depth, in_dim)


def test_param_count_matches_module():
    net = BatchedSiren(3, 3, 17, 5)
    assert sum(p.numel() for p in net.parameters()) == 3 * siren_param_count(17, 5, 3)
    flat = net.flat_parameters()
    other = BatchedSiren(3, 3, 17, 5)
    other.load_flat_parameters(flat)
    x = torch.rand(3, 10, 3) * 2 - 1
    torch.testing.assert_close(other(x), net(x))


def test_grid_coordinates_span_unit_cube():
    c = grid_coordinates((3, 4))
    assert c.shape == (12, 2)
    assert c.min() == -1 and c.max() == 1
    torch.testing.assert_close(c[1], torch.tensor([-1.0, -1.0 / 3]))


def test_normalisation_round_trip():
    blocks = np.stack([np.linspace(-1000, 3000, 16), np.full(16, 5.0)]).reshape(2, 4, 4)
    norm, ranges = normalise_blocks(blocks)
    assert norm.min() >= -1 and norm.max() <= 1
    np.testing.assert_allclose(denormalise(norm.reshape(2, -1), ranges).reshape(blocks.shape), blocks, atol=1e-3)
