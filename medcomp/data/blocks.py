"""Cut an N-D array into equal blocks (edge-padded) and put them back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medcomp.data.image import restore_dtype

DEFAULT_BLOCK = {2: (256, 256), 3: (32, 32, 32)}


@dataclass(frozen=True)
class BlockLayout:
    shape: tuple[int, ...]  # original array shape
    block: tuple[int, ...]
    grid: tuple[int, ...]  # blocks per axis

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.grid))

    @property
    def padded(self) -> tuple[int, ...]:
        return tuple(g * b for g, b in zip(self.grid, self.block))

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "block": list(self.block), "grid": list(self.grid)}

    @classmethod
    def from_dict(cls, d: dict) -> BlockLayout:
        return cls(tuple(d["shape"]), tuple(d["block"]), tuple(d["grid"]))


def plan_blocks(shape: tuple[int, ...], block: tuple[int, ...] | None) -> BlockLayout:
    block = tuple(DEFAULT_BLOCK[len(shape)] if block is None else block)
    if len(block) != len(shape):
        raise ValueError(f"block size {block} has {len(block)} axes but the image has {len(shape)}")
    block = tuple(min(int(b), s) for b, s in zip(block, shape))  # never pad a small image up to a big block
    grid = tuple(-(-s // b) for s, b in zip(shape, block))
    return BlockLayout(tuple(shape), block, grid)


def split_blocks(array: np.ndarray, layout: BlockLayout) -> np.ndarray:
    """(*shape) -> (n_blocks, *block), row-major over the block grid."""
    pad = [(0, p - s) for p, s in zip(layout.padded, layout.shape)]
    a = np.pad(array, pad, mode="edge")
    d = array.ndim
    split = [x for g, b in zip(layout.grid, layout.block) for x in (g, b)]
    a = a.reshape(split).transpose(list(range(0, 2 * d, 2)) + list(range(1, 2 * d, 2)))
    return a.reshape((layout.n_blocks,) + layout.block)


def assemble_blocks(layout: BlockLayout, dtype, chunks) -> np.ndarray:
    """The image in ``dtype`` from ``chunks`` of decoded blocks, ``(first_block_index, values (k, *block))`` in
    row-major grid order, each chunk rounded into ``dtype`` as it comes: the only full-size array is the output
    (plus its edge padding), whatever the number of blocks."""
    out = np.empty(layout.padded, dtype=np.dtype(dtype))
    for start, values in chunks:
        values = restore_dtype(np.asarray(values).reshape((-1,) + layout.block), np.dtype(dtype).str)
        for k, block in enumerate(values):
            corner = np.unravel_index(start + k, layout.grid)
            out[tuple(slice(c * b, (c + 1) * b) for c, b in zip(corner, layout.block))] = block
    return np.ascontiguousarray(out[tuple(slice(0, s) for s in layout.shape)])
