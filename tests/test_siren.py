import numpy as np
import pytest
import torch

from medcomp.data.block_datamodules import denormalise, normalise_blocks
from medcomp.data.blocks import assemble_blocks, plan_blocks, split_blocks
from medcomp.nn.siren import BatchedSiren, grid_coordinates, siren_param_count, widest_siren


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
def test_widest_siren_is_the_largest_that_fits(depth, in_dim):
    for budget in (50, 300, 1000, 12345):
        w = widest_siren(budget, depth, in_dim)
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


def test_image_frame_coordinates_are_one_grid_over_the_padded_image():
    from medcomp.nn.siren import block_coordinates

    layout = plan_blocks((5, 7), (3, 4))  # padded to 6 × 8: edge blocks are padded
    local, corners = block_coordinates(layout, "image")
    whole = grid_coordinates(layout.padded).reshape(layout.padded + (2,))
    per_block = (corners[:, None, :] + local[None]).reshape((layout.n_blocks,) + layout.block + (2,))
    np.testing.assert_allclose(per_block.numpy(), split_blocks(whole.numpy(), plan_blocks(whole.shape, layout.block + (2,))
                                                               ).reshape(per_block.shape), atol=1e-6)
    local, corners = block_coordinates(layout, "block")
    assert torch.equal(local, grid_coordinates(layout.block)) and not corners.any()


def test_fill_budget_takes_the_most_levels_that_fit():
    from medcomp.codecs.container import Container
    from medcomp.codecs.quantize import pack_symbols, quantize, top_for_bits
    from medcomp.target import fill_budget

    weights = [np.random.default_rng(0).normal(0, 0.1, (40, 30)).astype(np.float32)]

    def build(top):
        return Container("siren", {}, {"w": pack_symbols(quantize(weights, top)[0])})

    sizes = {b: len(build(top_for_bits(b)).to_bytes()) for b in (8, 16)}
    budget = (sizes[8] + sizes[16]) / 2
    best = fill_budget(build, budget, top_for_bits(8), top_for_bits(16))
    assert 0.97 * budget <= len(best.to_bytes()) <= budget
    assert len(fill_budget(build, sizes[8] - 1, top_for_bits(8), top_for_bits(16)).to_bytes()) == sizes[8]  # floor


def test_fill_budget_meets_a_small_target_within_one_percent():
    """A small network (3328 weights, as per-block SIREN at CR 1024 on the abdomen CT): a frequency table costs more
    than it saves, and whole-bit packing jumped 416 bytes a bit (that file was 4 % small); flat rANS fills it."""
    from medcomp.codecs.container import Container
    from medcomp.codecs.quantize import pack_symbols, quantize, top_for_bits
    from medcomp.target import fill_budget

    weights = [np.random.default_rng(0).uniform(-1, 1, 3328).astype(np.float32)]

    def build(top):
        return Container("siren", {}, {"w": pack_symbols(quantize(weights, top)[0])})

    for budget in np.linspace(len(build(top_for_bits(10)).to_bytes()), len(build(top_for_bits(11)).to_bytes()), 5):
        assert 0.99 * budget <= len(fill_budget(build, budget, top_for_bits(8), top_for_bits(16)).to_bytes()) <= budget


def test_quantized_siren_file_round_trips_its_weights():
    from medcomp.codecs.quantize import pack_symbols, quantize
    from medcomp.codecs.siren import decode_siren, siren_container
    from medcomp.data.image import Image
    from medcomp.nn.siren import siren_shapes

    image = Image(np.linspace(-500, 900, 12 * 10, dtype=np.float32).astype(np.int16).reshape(12, 10), None, name="t")
    layout = plan_blocks(image.array.shape, (6, 5))
    net = BatchedSiren(layout.n_blocks, 2, 7, 3)
    params = [t.detach().numpy() for pair in zip(net.weights, net.biases) for t in pair]
    assert [p.shape for p in params] == siren_shapes(7, 3, 2, n_nets=layout.n_blocks)
    ints, scales = quantize(params, 2047)
    ranges = np.tile(np.array([[-500.0, 900.0]], np.float32), (layout.n_blocks, 1))
    c = siren_container(image, layout, ranges, 7, 3, 30.0, "quantized", pack_symbols(ints), scales.astype("<f4").tobytes())
    coords = grid_coordinates(layout.block).expand(layout.n_blocks, -1, -1)
    expected = denormalise(net(coords).squeeze(-1).detach().numpy(), ranges)
    decoded = split_blocks(decode_siren(c).astype(np.float32), layout).reshape(layout.n_blocks, -1)
    assert np.abs(decoded - expected).max() <= 0.5 + 1400 * 2e-3  # rounding to int16 + 11-bit weights
