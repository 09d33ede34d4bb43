"""RNN-Conv (seed 004): the convolutional-recurrent progressive codec, variable rate from one model.

Each iteration encodes the residual of the previous ones: conv (stride 2) → three ConvLSTMs (stride 2 each) →
the seed's multi-level pooling (context from the whole image) → binariser (``bits`` ±1 codes per 16×16 block)
→ decoder: 1×1 conv → four ConvLSTMs each followed by pixel shuffle ×2 → conv to the image. Additive
reconstruction: x̂_k = x̂_{k−1} + D(b_k); the L1 residual of every iteration is the loss (Toderici et al. 2017).
Rate: ``bits``/256 bpp per iteration (32 bits → 0.125 bpp), packed 8 per byte; ``compress`` takes as many
iterations as the target allows, the last one for part of the blocks. Channel widths are below Toderici's (512)
so that it trains on a CPU; they are settings.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcomp.errors import CorruptFileError
from medcomp.models.compression.trained_image import TrainedImageModel
from medcomp.nn.conv_rnn import Binarizer, ConvLSTMCell, PyramidPooling


class RNNConv(TrainedImageModel):
    codec_name = "rnn_conv"
    stride = 16

    def __init__(self, channels: int = 64, bits: int = 32, train_iterations: int = 8, max_iterations: int = 8,
                 lr: float = 5e-4, fit_steps: int = 2000, iteration_loss: str = "l1", target=None):
        super().__init__()
        self.save_hyperparameters(ignore=["target"])
        self.target = target
        self.knob_lo, self.knob_hi, self.knob_integer = 1.0, float(max_iterations), False
        c = channels
        self.enc_conv = nn.Conv2d(1, c, 3, 2, 1)
        self.enc_rnn = nn.ModuleList([ConvLSTMCell(c, 2 * c, 3, 2), ConvLSTMCell(2 * c, 4 * c, 3, 2),
                                      ConvLSTMCell(4 * c, 4 * c, 3, 2)])
        self.context = PyramidPooling(4 * c)
        self.binarizer = Binarizer(4 * c, bits)
        self.dec_conv = nn.Conv2d(bits, 4 * c, 1)
        # each ConvLSTM's output is pixel-shuffled ×2 (channels / 4) before the next
        self.dec_rnn = nn.ModuleList([ConvLSTMCell(4 * c, 4 * c, 3, 1, 1), ConvLSTMCell(c, 4 * c, 3, 1, 1),
                                      ConvLSTMCell(c, 2 * c, 3, 1, 1), ConvLSTMCell(c // 2, c, 3, 1, 1)])
        self.dec_out = nn.Conv2d(c // 4, 1, 1)

    # --- one iteration of each half ---------------------------------------------------------------------------------
    def encode_step(self, residual, states):
        x = self.enc_conv(residual)
        new = []
        for cell, state in zip(self.enc_rnn, states):
            x, s = cell(x, state)
            new.append(s)
        return self.binarizer(self.context(x)), new

    def decode_step(self, codes, states):
        x = self.dec_conv(codes)
        new = []
        for cell, state in zip(self.dec_rnn, states):
            x, s = cell(x, state)
            new.append(s)
            x = F.pixel_shuffle(x, 2)
        return torch.tanh(self.dec_out(x)), new  # residuals live in [−1, 1]

    def progressive(self, x01: torch.Tensor, iterations: int):
        """Yields (codes, reconstruction in [0, 1]) after each iteration."""
        x = x01 * 2 - 1
        enc_states, dec_states = [None] * 3, [None] * 4
        recon = torch.zeros_like(x)
        for _ in range(iterations):
            codes, enc_states = self.encode_step(x - recon, enc_states)
            delta, dec_states = self.decode_step(codes, dec_states)
            recon = recon + delta
            yield codes, (recon + 1) / 2

    def training_loss(self, x):
        recons = [r for _, r in self.progressive(x, self.hparams.train_iterations)]
        losses = [F.l1_loss(r, x) for r in recons]
        if self.hparams.iteration_loss == "log_l1":
            # mean log L1: each iteration's *relative* gain counts alike, so the late ones, whose L1 is small, are
            # not drowned out by the first (Toderici et al.'s plain sum lets them stop adding quality)
            loss = torch.stack(losses).clamp_min(1e-6).log().mean()
        elif self.hparams.iteration_loss == "l1":
            loss = torch.stack(losses).mean()
        else:
            raise ValueError(f"model.iteration_loss={self.hparams.iteration_loss}: l1 or log_l1")
        psnr_last = 10 * torch.log10(1 / F.mse_loss(recons[-1].detach(), x))
        return loss, {"loss": loss, "l1_first": losses[0], "l1_last": losses[-1], "psnr_norm_last": psnr_last}

    # --- coding -----------------------------------------------------------------------------------------------------
    # The knob is a real number of iterations: ⌊knob⌋ whole iterations, then the next one for the first blocks in
    # raster order (round(knob × blocks) 16×16 block codes in all), so a target is met to one block's 32 bits
    # rather than to a whole iteration (0.125 bpp). Blocks a partial iteration leaves out keep the previous
    # reconstruction. The encoder runs only the iterations the file holds.
    knob_name = "iterations"

    def analyse(self, x):
        return _Progressive(self, x)

    def stream_length(self, state: _Progressive, knob) -> int:
        return -(-_blocks_sent(knob, state.blocks) * self.hparams.bits // 8)

    def stream(self, state: _Progressive, knob):
        full, part = divmod(_blocks_sent(knob, state.blocks), state.blocks)
        codes = state.upto(full + (part > 0))
        bits = [(c > 0).cpu().numpy().ravel() for c in codes[:full]]
        if part:
            bits.append((codes[full][0] > 0).cpu().numpy().reshape(self.hparams.bits, state.blocks)[:, :part].ravel())
        return np.packbits(np.concatenate(bits).astype(np.uint8)).tobytes()

    def synthesise(self, data, knob, padded_hw):
        grid = (padded_hw[0] // self.stride, padded_hw[1] // self.stride)
        blocks = grid[0] * grid[1]
        sent = _blocks_sent(knob, blocks)
        full, part = divmod(sent, blocks)
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        if bits.size < sent * self.hparams.bits:
            raise CorruptFileError("corrupt .mcz: fewer code bits than the header's iterations need")
        device = self.dec_out.weight.device
        signs = torch.from_numpy(bits[: sent * self.hparams.bits].astype(np.float32) * 2 - 1).to(device)
        codes = [signs[i * blocks * self.hparams.bits : (i + 1) * blocks * self.hparams.bits]
                 .reshape(1, self.hparams.bits, *grid) for i in range(full)]
        mask = None
        if part:
            last = torch.zeros(self.hparams.bits, blocks, device=device)
            last[:, :part] = signs[full * blocks * self.hparams.bits :].reshape(self.hparams.bits, part)
            codes.append(last.reshape(1, self.hparams.bits, *grid))
            mask = (torch.arange(blocks, device=device) < part).float().reshape(grid)
            mask = mask.repeat_interleave(self.stride, 0).repeat_interleave(self.stride, 1)
        dec_states = [None] * 4
        recon = torch.zeros((1, 1, *padded_hw), device=device)
        for i, c in enumerate(codes):
            delta, dec_states = self.decode_step(c, dec_states)
            recon = recon + (delta * mask if mask is not None and i == full else delta)
        return ((recon + 1) / 2)[0, 0]


def _blocks_sent(knob: float, blocks: int) -> int:
    return int(round(float(knob) * blocks))


class _Progressive:
    """One plane's encoder iterations, run only as far as a stream asks (a 0.25-bpp file needs two of eight)."""

    def __init__(self, module: RNNConv, x01: torch.Tensor):
        self.module, self.x = module, x01 * 2 - 1
        self.blocks = (x01.shape[-2] // module.stride) * (x01.shape[-1] // module.stride)
        self.codes: list[torch.Tensor] = []
        self.enc_states, self.dec_states = [None] * 3, [None] * 4
        self.recon = torch.zeros_like(self.x)

    @torch.no_grad()
    def upto(self, k: int) -> list[torch.Tensor]:
        while len(self.codes) < k:  # as progressive(): the residual of what the decoder has so far
            if self.codes:
                delta, self.dec_states = self.module.decode_step(self.codes[-1], self.dec_states)
                self.recon = self.recon + delta
            codes, self.enc_states = self.module.encode_step(self.x - self.recon, self.enc_states)
            self.codes.append(codes)
        return self.codes[:k]
