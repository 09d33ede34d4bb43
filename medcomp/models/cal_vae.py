"""CAL-VAE (seed 002): wavelet subbands + cross-attention + VAE latent + learned entropy coding.

image → one-level Haar DWT → LL and the three high-frequency subbands (LH, HL, HH) → subband encoders (the HF
encoder is shared by the three subbands, told apart by a learned embedding) → cross-attention at every latent
position: the LL feature is the query, the three HF features are keys and values (multi-head) → VAE head (μ, log σ²)
→ latent y, quantised and coded with CompressAI's EntropyBottleneck (factorised prior) → decoder back to the four
subbands → inverse DWT → learnable 3×3 post-filter (residual, starts as identity).

Loss: λ·255²·MSE + bpp_est + β·KL(q(y|x) ‖ N(0, I)). ``bpp_est`` is the entropy model's estimate, a training signal
only; every reported bpp comes from the file. Rate control at coding time: the latent is divided by a step q
before rounding (q = 1 is the trained operating point); the file's bytes decide q.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():  # compressai 1.2.8 scripts a helper with torch.jit, deprecated in torch 2.14
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from compressai.entropy_models import EntropyBottleneck
    from compressai.layers import GDN

from medcomp.models.codec2d import ImageCodecModule
from medcomp.nn.wavelet import haar_dwt, haar_idwt

# Rough λ for a target bpp (CompressAI's MSE ladder, q1..q6 and beyond). Only the trained operating point; the
# coding-time step q meets the exact target.
LAMBDA_FOR_BPP = [(0.125, 0.0018), (0.25, 0.0035), (0.5, 0.0067), (1.0, 0.025), (2.0, 0.0932), (3.0, 0.18)]


def lambda_for(target_bpp: float | None) -> float:
    if target_bpp is None:
        return 0.0067
    return min(LAMBDA_FOR_BPP, key=lambda p: abs(math.log(p[0] / target_bpp)))[1]


def down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 5, 2, 2), GDN(cout))


def up(cin: int, cout: int, last: bool = False) -> nn.Module:
    conv = nn.ConvTranspose2d(cin, cout, 5, 2, 2, output_padding=1)
    return conv if last else nn.Sequential(conv, GDN(cout, inverse=True))


class CalVAE(ImageCodecModule):
    codec_name = "cal_vae"
    stride = 16  # DWT (2) × three stride-2 stages
    # knob: log2 of the latent step q; a larger step gives a smaller file
    knob_lo, knob_hi, knob_integer, knob_increasing = -3.0, 10.0, False, False

    def __init__(self, channels: int = 64, latent: int = 64, heads: int = 4, lmbda: float | None = None,
                 beta_kl: float = 1e-4, lr: float = 1e-4, aux_lr: float = 1e-3, target_bpp: float | None = None,
                 fit_steps: int = 2000, target=None):
        super().__init__()
        if lmbda is None:
            lmbda = lambda_for(target_bpp)
        self.save_hyperparameters(ignore=["target"])
        self.hparams.lmbda = lmbda
        self.target = target
        n = channels
        self.automatic_optimization = False  # two optimisers: the network, and the entropy model's quantiles
        self.enc_low = nn.Sequential(down(1, n), down(n, n))
        self.enc_high = nn.Sequential(down(1, n), down(n, n))
        self.band_embedding = nn.Parameter(torch.zeros(3, n, 1, 1))
        self.attention = nn.MultiheadAttention(n, heads, batch_first=True)
        self.norm = nn.LayerNorm(n)
        self.to_latent = nn.Conv2d(2 * n, 2 * latent, 5, 2, 2)  # μ and log σ²
        # Start with a near-deterministic posterior (σ ≈ 0.02): at σ ≈ 1 the entropy model learns a wide density and
        # the rate cannot fall (measured: a flat 1.18 bpp floor whatever the step); the KL term then regularises σ.
        nn.init.constant_(self.to_latent.bias[latent:], -8.0)
        self.entropy = EntropyBottleneck(latent)
        self.dec = nn.Sequential(up(latent, n), up(n, n), up(n, 4, last=True))
        self.post_filter = nn.Conv2d(1, 1, 3, 1, 1)
        nn.init.zeros_(self.post_filter.weight)
        nn.init.zeros_(self.post_filter.bias)

    # --- the network ---------------------------------------------------------------------------------------------
    def encode_moments(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, highs = haar_dwt(x01 * 2 - 1)
        f_low = self.enc_low(low)
        b, _, h, w = highs.shape
        f_high = self.enc_high(highs.reshape(b * 3, 1, h, w)).unflatten(0, (b, 3)) + self.band_embedding
        n = f_low.shape[1]
        # cross-attention per position: query LL (1 token), keys/values the three HF subbands (3 tokens)
        q = f_low.permute(0, 2, 3, 1).reshape(-1, 1, n)
        kv = f_high.permute(0, 3, 4, 1, 2).reshape(-1, 3, n)
        attended, _ = self.attention(q, kv, kv, need_weights=False)
        attended = self.norm(attended + q).reshape(b, f_low.shape[2], f_low.shape[3], n).permute(0, 3, 1, 2)
        mu, logvar = self.to_latent(torch.cat([f_low, attended], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 4)

    def decode_latent(self, y: torch.Tensor) -> torch.Tensor:
        bands = self.dec(y)
        x = haar_idwt(bands[:, :1], bands[:, 1:])
        x = x + self.post_filter(x)
        return (x + 1) / 2

    def training_loss(self, x):
        mu, logvar = self.encode_moments(x)
        y = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # VAE sample (reparameterised)
        y_hat, likelihoods = self.entropy(y)
        x_hat = self.decode_latent(y_hat)
        mse = F.mse_loss(x_hat, x)
        bpp_est = -torch.log2(likelihoods).sum() / x[:, 0].numel()
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum() / x[:, 0].numel()
        loss = self.hparams.lmbda * 255**2 * mse + bpp_est + self.hparams.beta_kl * kl
        psnr = 10 * torch.log10(1 / mse.detach())
        return loss, {"loss": loss, "mse": mse, "bpp_est": bpp_est, "kl": kl, "psnr_norm": psnr}

    def training_step(self, batch, batch_idx):
        opt, aux_opt = self.optimizers()
        loss, logs = self.training_loss(batch)
        opt.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        opt.step()
        aux = self.entropy.loss()
        aux_opt.zero_grad()
        self.manual_backward(aux)
        aux_opt.step()
        self.log_dict({f"train/{k}": v for k, v in logs.items()} | {"train/aux": aux}, prog_bar=True)

    def configure_optimizers(self):
        main = [p for n, p in self.named_parameters() if not n.endswith(".quantiles")]
        aux = [p for n, p in self.named_parameters() if n.endswith(".quantiles")]
        return torch.optim.Adam(main, lr=self.hparams.lr), torch.optim.Adam(aux, lr=self.hparams.aux_lr)

    # --- coding ---------------------------------------------------------------------------------------------------
    def prepare_coding(self):
        self.entropy.update(force=True)

    def analyse(self, x):
        return self.encode_moments(x)[0]

    # Rate control at coding time: a quantiser step q around the entropy model's medians m, symbols
    # s = round((y − m)/q), ŷ = s·q + m, coded with tables of the *learned* density integrated over the
    # step-q cells (P(s) = c(m + (s + ½)q) − c(m + (s − ½)q)). q = 1 is exactly the trained quantiser.
    # Hand-written because CompressAI's EntropyBottleneck.update() builds unit-step tables only; this mirrors it.
    @torch.no_grad()
    def _tables_for_step(self, q: float) -> None:
        eb = self.entropy
        medians = eb.quantiles[:, 0, 1]
        minima = torch.clamp(torch.ceil((medians - eb.quantiles[:, 0, 0]) / q).int(), min=0)
        maxima = torch.clamp(torch.ceil((eb.quantiles[:, 0, 2] - medians) / q).int(), min=0)
        pmf_length = maxima + minima + 1
        max_length = int(pmf_length.max())
        steps = torch.arange(max_length)[None, :] - minima[:, None]  # (C, L) step indices from −minima
        centres = (medians[:, None] + steps * q)[:, None, :]
        lower = eb._logits_cumulative(centres - q / 2, stop_gradient=True)
        upper = eb._logits_cumulative(centres + q / 2, stop_gradient=True)
        pmf = (torch.sigmoid(upper) - torch.sigmoid(lower))[:, 0, :]
        tail_mass = torch.sigmoid(lower[:, 0, :1]) + torch.sigmoid(-upper[:, 0, -1:])
        eb._offset = -minima
        eb._quantized_cdf = eb._pmf_to_cdf(pmf, tail_mass, pmf_length, max_length)
        eb._cdf_length = pmf_length + 2

    def stream(self, mu, knob):
        q = 2.0**knob
        self._tables_for_step(q)
        m = self.entropy._get_medians()
        return self.entropy.compress((mu - m) / q + m)[0]

    def synthesise(self, data, knob, padded_hw):
        q = 2.0**knob
        self._tables_for_step(q)
        size = (padded_hw[0] // self.stride, padded_hw[1] // self.stride)
        m = self.entropy._get_medians()
        y = (self.entropy.decompress([data], size) - m) * q + m
        return self.decode_latent(y)[0, 0]
