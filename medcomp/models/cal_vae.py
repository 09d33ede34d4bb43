"""CAL-VAE (seed 002): wavelet subbands + cross-attention + VAE latent + learned entropy coding.

image → one-level Haar DWT → LL and the three high-frequency subbands (LH, HL, HH) → subband encoders (the HF
encoder is shared by the three subbands, told apart by a learned embedding) → cross-attention at every latent
position: the LL feature is the query, the three HF features are keys and values (multi-head) → VAE head (μ, log σ²)
→ latent y, quantised and coded with CompressAI's EntropyBottleneck (factorised prior) → decoder back to the four
subbands → inverse DWT → learnable 3×3 post-filter (residual, starts as identity).

Loss: λ·255²·MSE + bpp_est + β·KL(q(y|x) ‖ N(0, I)). ``bpp_est`` is the entropy model's estimate, a training signal
only; every reported bpp comes from the file. Rate control at coding time: the latent is divided by a step q
before rounding (q = 1 is the trained operating point); the file's bytes decide q. The entropy tables come from
numbers stored with the weights, so a file decodes to the same pixels on any machine (see ``freeze_coding``).
"""

from __future__ import annotations

import copy
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
    # knob: the latent step q in 32nds (4: q = 1/8 … 32768: q = 1024); a larger step gives a smaller file
    knob_lo, knob_hi, knob_integer, knob_increasing = 4, 32768, True, False
    knob_name = "latent_step_32nds"

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
        # the learned CDF on a fixed lattice and the lattice span of each channel's quantiles (see freeze_coding)
        self.register_buffer("cdf_lattice", torch.empty(0, dtype=torch.float64))
        self.register_buffer("cdf_support", torch.empty(0, dtype=torch.long))
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
    # Rate control at coding time: a quantiser step q = knob/32 around the entropy model's medians m, symbols
    # s = round((y − m)/q), ŷ = s·q + m, coded with tables of the *learned* density integrated over the step-q cells
    # (P(s) = c(m + (s + ½)q) − c(m + (s − ½)q)); knob 32 (q = 1) is exactly the trained quantiser.
    #
    # Decode anywhere: the tables must be the same integers on every machine, and the density c() is a float network
    # whose last bits change with the CPU, the thread count or a GPU (one changed CDF entry and the rest of the stream
    # decodes to garbage; float32 vs float64 tables differ in dozens of entries). So c() is evaluated once, when the
    # weights are final, in float64 on the lattice m + j/64 (every cell edge of every step q = knob/32 lies on it) and
    # stored with the weights (``cdf_lattice``); coding only gathers and subtracts those stored numbers, which IEEE
    # arithmetic does identically everywhere. Hand-written because CompressAI's update() evaluates the network.
    LATTICE = 64

    def freeze_coding(self) -> None:
        eb = self.entropy
        with torch.no_grad():
            quantiles = eb.quantiles.detach().double()[:, 0, :]  # (C, 3): low tail, median, high tail
            medians = quantiles[:, 1]
            support = torch.stack([torch.floor((quantiles[:, 0] - medians) * self.LATTICE),
                                   torch.ceil((quantiles[:, 2] - medians) * self.LATTICE)], dim=1).long()
            half = int(support.abs().max()) + self.LATTICE
            points = medians[:, None] + torch.arange(-half, half + 1, dtype=torch.float64)[None, :] / self.LATTICE
            density = copy.deepcopy(eb).double()
            self.cdf_lattice = torch.sigmoid(density._logits_cumulative(points[:, None, :], stop_gradient=True))[:, 0]
            self.cdf_support = support

    def prepare_coding(self):
        if self.cdf_lattice.numel() == 0:
            self.freeze_coding()

    def analyse(self, x):
        return self.encode_moments(x)[0]

    @torch.no_grad()
    def _tables_for_step(self, knob: int) -> None:
        eb, n = self.entropy, int(knob)  # q = n/32: a cell edge every n lattice points
        # past the lattice the CDF is 0 below and 1 above (the quantiles lie well inside it): a step wider than the
        # lattice still puts the whole mass in its cells, as the learned density's own tails would
        ones = torch.ones_like(self.cdf_lattice[:, :1])
        cdf = torch.cat([0 * ones, self.cdf_lattice, ones], dim=1)
        half = (cdf.shape[1] - 1) // 2  # cdf[:, half] is the median
        minima = torch.clamp((-self.cdf_support[:, 0] + 2 * n - 1) // (2 * n), min=0)
        maxima = torch.clamp((self.cdf_support[:, 1] + 2 * n - 1) // (2 * n), min=0)
        pmf_length = minima + maxima + 1
        steps = torch.arange(int(pmf_length.max()))[None, :] - minima[:, None]  # (C, L)
        lower = cdf.gather(1, torch.clamp((2 * steps - 1) * n + half, 0, 2 * half))
        upper = cdf.gather(1, torch.clamp((2 * steps + 1) * n + half, 0, 2 * half))
        last_upper = upper.gather(1, (pmf_length - 1)[:, None])
        eb._offset = (-minima).int()
        eb._quantized_cdf = eb._pmf_to_cdf(upper - lower, lower[:, :1] + (1 - last_upper), pmf_length.int(),
                                           int(pmf_length.max()))
        eb._cdf_length = (pmf_length + 2).int()

    def stream(self, mu, knob):
        q = int(knob) / 32
        self._tables_for_step(knob)
        m = self.entropy._get_medians()
        return self.entropy.compress((mu - m) / q + m)[0]

    def synthesise(self, data, knob, padded_hw):
        q = int(knob) / 32
        self._tables_for_step(knob)
        size = (padded_hw[0] // self.stride, padded_hw[1] // self.stride)
        m = self.entropy._get_medians()
        y = (self.entropy.decompress([data], size) - m) * q + m
        return self.decode_latent(y)[0, 0]
