"""CAL-VAE (seed 002): wavelet subbands + cross-attention + VAE latent + learned entropy coding.

image → one-level Haar DWT → LL and the three high-frequency subbands (LH, HL, HH) → subband encoders (the HF
encoder is shared by the three subbands, told apart by a learned embedding) → cross-attention at every latent
position: the LL feature is the query, the three HF features are keys and values (multi-head) → VAE head (μ, log σ²)
→ latent y, quantised and coded with CompressAI's EntropyBottleneck (factorised prior) → decoder back to the four
subbands → inverse DWT → learnable 3×3 post-filter (residual, starts as identity).

Variable rate from one weights file, by gain units (Cui et al., CVPR 2021, "Asymmetric gained deep image
compression with continuous rate adaptation"): a ladder of λ (``lmbdas``), and for each a learned per-channel gain on
the latent before rounding and an inverse gain after it. Training draws a ladder level per image and weighs its
distortion by that level's λ: loss = λ_k·255²·MSE + bpp_est + β·KL(q(y|x) ‖ N(0, I)). ``bpp_est`` is the entropy
model's estimate, a training signal only; every reported bpp comes from the file. At coding time the gains are
interpolated between adjacent levels (geometrically), so the rate is continuous between the lowest and the highest λ
and the file's bytes pick the level. Chosen over a ladder of separate weights files (CompressAI ships quality 1–8
that way) because one 4 MB file serves every rate and the network trains once. The entropy tables come from numbers
stored with the weights, so a file decodes to the same pixels on any machine (see ``freeze_coding``).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():  # compressai 1.2.8 scripts a helper with torch.jit, deprecated in torch 2.14
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from compressai.entropy_models import EntropyBottleneck
    from compressai.layers import GDN

from medcomp.codecs.entropy import with_tail
from medcomp.errors import CorruptFileError
from medcomp.models.compression.trained_image import TrainedImageModel
from medcomp.nn.wavelet import haar_dwt, haar_idwt

# The λ ladder of the shipped weights: CompressAI's MSE ladder (its q1 … q8) and two levels below it, so that one file
# spans the rates the benchmarks ask of it (0.125–1 bpp on X-rays; measured: experiments/results/codecs2d_rd.json).
LAMBDAS = (0.00045, 0.0009, 0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483, 0.0932, 0.18)


class FactorizedEntropyModel(EntropyBottleneck):
    """CompressAI's EntropyBottleneck, whose forward moves the channel axis first as a transpose. CompressAI builds
    that permutation as a device tensor and unpacks it (``x.permute(*perm)``): four host syncs a training step on a
    GPU. Same numbers; everything else (the density, the coding tables, ``compress``) is CompressAI's."""

    def forward(self, x: torch.Tensor, training: bool | None = None):
        training = self.training if training is None else training
        values = x.transpose(0, 1).contiguous()  # B × C × … → C × B × …
        shape = values.shape
        outputs = self.quantize(values.reshape(shape[0], 1, -1), "noise" if training else "dequantize",
                                self._get_medians())
        likelihood, _, _ = self._likelihood(outputs)
        if self.use_likelihood_bound:
            likelihood = self.likelihood_lower_bound(likelihood)
        return (outputs.reshape(shape).transpose(0, 1).contiguous(),
                likelihood.reshape(shape).transpose(0, 1).contiguous())


def optimiser_groups(net: nn.Module) -> dict[str, list[nn.Parameter]]:
    """A learned codec's parameters by what trains them: ``network``; ``density``, every EntropyBottleneck's density
    (its own learning rate: see ``entropy_lr``); ``quantiles``, fitted by the entropy model's aux loss alone."""
    density = {id(p) for m in net.modules() if isinstance(m, EntropyBottleneck) for p in m.parameters()}
    groups = {"network": [], "density": [], "quantiles": []}
    for name, p in net.named_parameters():
        groups["quantiles" if name.endswith(".quantiles") else "density" if id(p) in density else "network"].append(p)
    return groups


def down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 5, 2, 2), GDN(cout))


def up(cin: int, cout: int, last: bool = False) -> nn.Module:
    conv = nn.ConvTranspose2d(cin, cout, 5, 2, 2, output_padding=1)
    return conv if last else nn.Sequential(conv, GDN(cout, inverse=True))


class CalVAE(TrainedImageModel):
    codec_name = "cal_vae"
    stride = 16  # DWT (2) × three stride-2 stages
    knob_integer, knob_increasing = True, True
    knob_name = "gain_level_32nds"  # the ladder level in 32nds (0: the lowest λ … 32·(levels − 1): the highest)
    # Past the highest λ the gains are extrapolated (log-linearly from the top two levels) for two more levels: the
    # file keeps growing and PSNR keeps rising, slowly — the decoder, not the gains, is the limit there (shipped
    # weights, 4 X-rays: top level 0.51 bpp 39.81 dB, +1 level 0.69 / 40.05, +2 0.89 / 40.18, +3 1.15 / 40.24,
    # +5 1.91 / 40.19, falling).
    EXTRAPOLATED_LEVELS = 2

    def __init__(self, channels: int = 64, latent: int = 64, heads: int = 4, lmbdas: list[float] | None = None,
                 beta_kl: float = 1e-4, lr: float = 1e-4, entropy_lr: float = 1e-3, aux_lr: float = 1e-3,
                 entropy_init_scale: float = 2.0, fit_steps: int = 2000, target=None):
        super().__init__()  # target: the run's compression target, unused (the file's bytes pick the rate)
        lmbdas = [float(v) for v in (LAMBDAS if lmbdas is None else lmbdas)]
        if not lmbdas or sorted(lmbdas) != lmbdas or len(set(lmbdas)) != len(lmbdas):
            raise ValueError(f"model.lmbdas={lmbdas}: a non-empty list of distinct values, smallest first")
        self.save_hyperparameters(ignore=["target"])
        self.hparams.lmbdas = lmbdas
        extra = self.EXTRAPOLATED_LEVELS if len(lmbdas) > 1 else 0
        self.knob_lo, self.knob_hi = 0, 32 * (len(lmbdas) - 1 + extra)
        n = channels
        self.automatic_optimization = False  # gradients clipped on the network, not on the quantiles
        self.enc_low = nn.Sequential(down(1, n), down(n, n))
        self.enc_high = nn.Sequential(down(1, n), down(n, n))
        self.band_embedding = nn.Parameter(torch.zeros(3, n, 1, 1))
        self.attention = nn.MultiheadAttention(n, heads, batch_first=True)
        self.norm = nn.LayerNorm(n)
        self.to_latent = nn.Conv2d(2 * n, 2 * latent, 5, 2, 2)  # μ and log σ²
        # Start with a near-deterministic posterior (σ ≈ 0.02): at σ ≈ 1 the entropy model learns a wide density and
        # the rate cannot fall (measured: a flat 1.18 bpp floor whatever the step); the KL term then regularises σ.
        nn.init.constant_(self.to_latent.bias[latent:], -8.0)
        # gain units, in log space (positive, and interpolated geometrically). Start from the step an MSE-optimal
        # quantiser would take at each λ (q ∝ 1/√λ, relative to the middle of the ladder); training refines them.
        start = 0.5 * torch.log(torch.tensor(lmbdas) / lmbdas[len(lmbdas) // 2])
        self.log_gain = nn.Parameter(start[:, None].repeat(1, latent))
        self.log_inverse_gain = nn.Parameter(-start[:, None].repeat(1, latent))
        # The factorised density starts at the latents' scale and learns at 10× the network's rate: with CompressAI's
        # defaults (init_scale 10, one learning rate) it stays wide for the few thousand steps a CPU affords, and every
        # symbol costs ≈ 1.4 bits whatever the gain (measured after 800 steps, ladder ends: defaults 1.12–1.14 bpp;
        # entropy_lr 1e-3 0.23–0.60; init_scale 2 0.59–0.81; both 0.17–0.54 bpp, 19.9–33.1 dB).
        self.entropy = FactorizedEntropyModel(latent, init_scale=entropy_init_scale)
        # the learned CDF at the cell edges around the medians, and their span per channel (see freeze_coding)
        self.register_buffer("cdf_edges", torch.empty(0, dtype=torch.float64))
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

    def gains(self, level: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, inverse gain), each (…, latent), at a ladder level: an integer is a trained level, a fraction
        interpolates the two around it geometrically (linearly in log space); past the top, the top two extrapolate."""
        level = torch.as_tensor(level, dtype=self.log_gain.dtype, device=self.log_gain.device)
        k = level.floor().clamp(0, max(len(self.hparams.lmbdas) - 2, 0)).long()
        t = (level - k)[..., None]
        k1 = (k + 1).clamp(max=len(self.hparams.lmbdas) - 1)
        lerp = lambda table: (1 - t) * table[k] + t * table[k1]  # noqa: E731
        return lerp(self.log_gain).exp(), lerp(self.log_inverse_gain).exp()

    def training_loss(self, x):
        levels = torch.randint(len(self.hparams.lmbdas), (x.shape[0],), device=x.device)  # a ladder level per image
        lmbda = torch.tensor(self.hparams.lmbdas, dtype=x.dtype, device=x.device)[levels]
        gain, inverse_gain = (g[:, :, None, None] for g in self.gains(levels))
        mu, logvar = self.encode_moments(x)
        y = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # VAE sample (reparameterised)
        y_hat, likelihoods = self.entropy(y * gain)
        x_hat = self.decode_latent(y_hat * inverse_gain)
        mse = F.mse_loss(x_hat, x, reduction="none").flatten(1).mean(1)  # per image
        pixels = x[0, 0].numel()
        bpp_est = -torch.log2(likelihoods).flatten(1).sum(1) / pixels
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum() / x[:, 0].numel()
        loss = (lmbda * 255**2 * mse + bpp_est).mean() + self.hparams.beta_kl * kl
        psnr = 10 * torch.log10(1 / mse.detach()).mean()
        return loss, {"loss": loss, "mse": mse.mean(), "bpp_est": bpp_est.mean(), "kl": kl, "psnr_norm": psnr}

    def training_step(self, batch, batch_idx):
        # one optimiser, three groups (network, density, quantiles), so that one step is one trainer step
        opt = self.optimizers()
        loss, logs = self.training_loss(batch)
        aux = self.entropy.loss()  # fits the quantiles only (the density is detached inside)
        opt.zero_grad()
        self.manual_backward(loss + aux)
        opt.step()  # clipped in on_before_optimizer_step
        self.log_dict({f"train/{k}": v for k, v in logs.items()} | {"train/aux": aux}, prog_bar=True)

    def on_before_optimizer_step(self, optimizer):
        # Clip the network's and the density's gradients, not the quantiles'. Here, not in training_step: under
        # 16-mixed the gradients are unscaled only once the step has begun (clipping scaled ones clips nothing).
        network_and_density = optimizer.param_groups[0]["params"] + optimizer.param_groups[1]["params"]
        torch.nn.utils.clip_grad_norm_(network_and_density, 1.0)

    def configure_optimizers(self):
        groups, hp = optimiser_groups(self), self.hparams
        return torch.optim.Adam([{"params": groups["network"], "lr": hp.lr},
                                 {"params": groups["density"], "lr": hp.entropy_lr},
                                 {"params": groups["quantiles"], "lr": hp.aux_lr}])

    # --- coding ---------------------------------------------------------------------------------------------------
    # Rate control at coding time: the knob picks a ladder level ℓ = knob/32 and its gains g(ℓ), g⁻(ℓ); symbols
    # s = round(g·y − m) around the entropy model's medians m, ŷ = g⁻·(s + m); P(s) = c(m + s + ½) − c(m + s − ½).
    #
    # Decode anywhere: the tables must be the same integers on every machine, and the density c() is a float network
    # whose last bits change with the CPU, the thread count or a GPU (one changed CDF entry and the rest of the stream
    # decodes to garbage; float32 vs float64 tables differ in dozens of entries). So c() is evaluated once, when the
    # weights are final, in float64 at the cell edges m + s ± ½ and stored with the weights (``cdf_edges``); the
    # coding tables are built from those stored numbers only. Hand-written because CompressAI's update() evaluates
    # the network.
    def freeze_coding(self) -> None:
        eb = self.entropy
        with torch.no_grad():
            quantiles = eb.quantiles.detach().double()[:, 0, :]  # (C, 3): low tail, median, high tail
            medians = quantiles[:, 1]
            # symbols from −support[:, 0] to support[:, 1] around the median cover the learned tails
            support = torch.stack([torch.ceil(medians - quantiles[:, 0]), torch.ceil(quantiles[:, 2] - medians)],
                                  dim=1).clamp(min=0).long()
            half = int(support.max())
            edges = medians[:, None] + torch.arange(-half, half + 2, dtype=torch.float64)[None, :] - 0.5
            density = copy.deepcopy(eb).double()
            self.cdf_edges = torch.sigmoid(density._logits_cumulative(edges[:, None, :], stop_gradient=True))[:, 0]
            self.cdf_support = support

    def prepare_coding(self):
        if self.cdf_edges.numel() == 0:
            self.freeze_coding()
        self._build_tables()

    @torch.no_grad()
    def _build_tables(self) -> None:
        eb = self.entropy
        half = (self.cdf_edges.shape[1] - 2) // 2  # cdf_edges[:, half + s] = c(m + s − ½)
        minima, maxima = self.cdf_support[:, 0], self.cdf_support[:, 1]
        pmf_length = minima + maxima + 1
        symbols = torch.arange(int(pmf_length.max()))[None, :] - minima[:, None]  # (C, L)
        lower = self.cdf_edges.gather(1, torch.clamp(symbols + half, 0, 2 * half + 1))
        upper = self.cdf_edges.gather(1, torch.clamp(symbols + half + 1, 0, 2 * half + 1))
        last_upper = upper.gather(1, (pmf_length - 1)[:, None])
        eb._offset = (-minima).int()
        eb._quantized_cdf = eb._pmf_to_cdf(upper - lower, lower[:, :1] + (1 - last_upper), pmf_length.int(),
                                           int(pmf_length.max()))
        eb._cdf_length = (pmf_length + 2).int()

    def analyse(self, x):
        return self.encode_moments(x)[0]

    def stream(self, mu, knob):
        gain, _ = self.gains(int(knob) / 32)
        return self.entropy.compress(mu * gain[None, :, None, None])[0]

    def synthesise(self, data, knob, padded_hw):
        _, inverse_gain = self.gains(int(knob) / 32)
        size = (padded_hw[0] // self.stride, padded_hw[1] // self.stride)
        # zeros after the stream: CompressAI's decoder does not check the end of its buffer, and a cut stream read
        # into whatever memory follows (a decode that spun for minutes in its bypass mode, holding the GIL)
        n_symbols = self.hparams.latent * size[0] * size[1]
        y = self.entropy.decompress([with_tail(data, n_symbols)], size)
        # rANS has no end marker, and a stream cut short still decodes (to other latents): a stream is valid exactly
        # when it is the coding of what it decodes to (compress rounds y − medians back to the same symbols)
        if self.entropy.compress(y)[0] != data:
            raise CorruptFileError("corrupt .mcz: a CAL-VAE tile stream is not the coding of its latents (cut or damaged)")
        y = y * inverse_gain[None, :, None, None]
        return self.decode_latent(y)[0, 0]
