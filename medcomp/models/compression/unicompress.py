"""UniCompress (seed 001): one SIREN for many blocks, conditioned on a wavelet-prior vector-quantised code.

Per block: Haar DWT → raw / low / high parts → frozen pretrained extractor → attention fusion → VQ codebook →
SIREN(coordinates ⊕ code) → intensity. The decoder needs the SIREN weights, the used codewords and one index per
block; the extractor and fusion are encoder-side only and never stored. Weights and codewords are quantised and
entropy-coded; the bit depth is the largest in [weight_bits_min, weight_bits_max] whose file meets the target.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from medcomp.codecs.base import Codec
from medcomp.codecs.container import Container
from medcomp.codecs.deblock import signal_best_strength
from medcomp.codecs.quantize import top_for_bits
from medcomp.codecs.unicompress import decode_unicompress, unicompress_container  # the file format
from medcomp.codecs.unicompress_prior import Prior, prior_for
from medcomp.data.kinds import covering_range
from medcomp.errors import MedcompError
from medcomp.models.built_in_setup import BuiltInSetup
from medcomp.models.contracts import ImageFit
from medcomp.nn.fusion import AttentionFusion
from medcomp.nn.pretrained import load_extractor
from medcomp.nn.siren import (
    COORDINATE_FRAMES,
    BatchedSiren,
    block_coordinates,
    siren_param_count,
    siren_shapes,
    widest_siren,
    width_scaled_lr,
)
from medcomp.nn.vq import VectorQuantizer
from medcomp.nn.wavelet import haar_dwt, pad_even
from medcomp.target import Target, fill_budget
from medcomp.utils.distributed import keep_every_parameter_in_graph, mean_over_ranks, same_on_every_rank

log = logging.getLogger("medcomp")
PARTS = ("raw", "low", "high")


def wavelet_parts(blocks: torch.Tensor, parts=PARTS) -> list[torch.Tensor]:
    """(N, 1, *block) in [−1, 1] → the requested parts, each (N, 1, *) on a comparable scale."""
    d = blocks.ndim - 2
    low, highs = haar_dwt(pad_even(blocks))
    out = {"raw": blocks, "low": low / 2 ** (d / 2)}
    energy = highs.pow(2).sum(1, keepdim=True).sqrt()
    out["high"] = energy / energy.amax(dim=tuple(range(1, energy.ndim)), keepdim=True).clamp_min(1e-6) * 2 - 1
    return [out[p] for p in parts]


@torch.no_grad()
def extract_tokens(extractor, blocks: torch.Tensor, parts=PARTS, chunk: int = 256) -> torch.Tensor:
    """(N, 1, *block) → (parts, N, tokens, features), in chunks to bound memory; each chunk is moved to the
    extractor's device (the blocks stay where they are)."""
    device = next(extractor.parameters()).device
    outs = []
    for i in range(0, blocks.shape[0], chunk):
        outs.append(torch.stack([extractor(p) for p in wavelet_parts(blocks[i : i + chunk].to(device), parts)]))
    return torch.cat(outs, dim=1)


def split_width(params: float, depth: int, in_dim: int, n_blocks: int, max_width: int | None) -> tuple[int, int]:
    """(width, groups) for ``params`` SIREN parameters: one network (the paper's), or, when its width would pass
    ``max_width``, the fewest equal groups of consecutive blocks (a divisor of ``n_blocks``) whose networks are at
    most that wide. Why: a step costs ∝ width², so at a low ratio one wide SIREN gets few steps in a fixed time and is
    under-fitted (abdomen CT, CR 64, 30 s: width 202, 208 steps, below per-block SIREN); G networks of width w/√G
    hold the same parameters at 1/G of the cost a point."""
    best = (widest_siren(params, depth, in_dim), 1)
    for groups in range(2, n_blocks + 1):
        if not max_width or best[0] <= max_width:
            break
        if n_blocks % groups == 0:
            w = widest_siren(params / groups, depth, in_dim)
            if w < 2:
                break
            best = (w, groups)
    return best


def groups_for_prior(bytes_for_weights: float, prior: Prior, bits_per_weight: float, n_blocks: int) -> int:
    """Networks of the prior's shape that ``bytes_for_weights`` holds at ``bits_per_weight`` (Δ's entropy-coded
    cost the fit plans with; the levels then fill the file exactly): the largest divisor of ``n_blocks`` not above
    that count, at least one."""
    r = prior.record
    fits = bytes_for_weights * 8 / bits_per_weight / siren_param_count(r["width"], r["depth"], r["in_dim"])
    return max([g for g in range(1, n_blocks + 1) if n_blocks % g == 0 and g <= fits] or [1])


class UniCompress(BuiltInSetup, ImageFit, L.LightningModule):
    """The teacher: every image of the data module gets one SIREN + codebook; the fusion encoder is shared."""

    full_precision_fit = True  # fp32 whatever trainer.precision says (medcomp.fitting.trainer_rules)

    codec_name = "unicompress"

    def __init__(self, depth: int = 4, w0: float = 30.0, w0_hidden: float | None = None, lr: float = 5e-3, fusion_lr: float = 1e-4, code_dim: int = 8,
                 codebook_size: int = 256, max_codebook_fraction: float = 0.35, weight_bits_min: int = 8,
                 weight_bits_max: int = 16, codebook_bits: int = 8, freeze_codes_at: float = 0.75,
                 lr_reference_width: int = 20, coordinates: str = "image", collapse_check_every: int = 10,
                 max_width: int | None = None, prior: str | None = "none", delta: bool = True,
                 prior_bits: float = 8.0, prior_bits_min: float = 6.0,
                 d_model: int = 64, heads: int = 4,
                 beta: float = 0.25, parts: list[str] = PARTS, extractor_ckpt: str | None = "auto",
                 fit_steps: int = 1500, target: Target | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["target"])
        unknown = set(parts) - set(PARTS)
        if unknown or not parts:
            raise MedcompError(f"model.parts must be a non-empty subset of {list(PARTS)}, got {list(parts)}")
        if coordinates not in COORDINATE_FRAMES:
            raise MedcompError(f"model.coordinates must be one of {list(COORDINATE_FRAMES)}, got {coordinates!r}")
        self.parts = tuple(parts)
        self.target = target
        self.sirens = torch.nn.ModuleList()
        self.quantizers = torch.nn.ModuleList()
        self.widths: list[int] = []
        self.groups: list[int] = []  # per image: SIRENs, each for an equal run of consecutive blocks
        self.priors: list[Prior | None] = []  # per image: the shipped prior its networks start from (model.prior)
        # per image: sd of the SIREN's output ÷ sd of the values at the last step (a buffer: it lives on the device)
        self.register_buffer("output_spread", torch.zeros(0), persistent=False)
        self.fusion = None
        self.extractor_source = None

    # --- building from the data ------------------------------------------------------------------------------

    def _build_extractor(self, dims: int):
        extractor, self.extractor_source = load_extractor(dims, self.hparams.extractor_ckpt)
        extractor.requires_grad_(False).eval()
        return extractor

    def _codebook_size(self, budget: float, n_blocks: int, name: str = "") -> int:
        hp = self.hparams
        k = min(hp.codebook_size, 2 ** math.ceil(math.log2(max(n_blocks, 2))))
        while k > 2 and k * hp.code_dim * hp.codebook_bits / 8 > hp.max_codebook_fraction * budget:
            k //= 2
        if k < hp.codebook_size:
            log.info("%s: codebook %d → %d entries to fit %.0f bytes", name, hp.codebook_size, k, budget)
        return k

    def _solve_width(self, image, layout, k: int, prior: Prior | None = None) -> tuple[int, int, Prior | None]:
        """(width, groups, prior): the SIREN width that the byte target leaves, into how many networks it is split,
        and the prior the fit starts from. With a prior the width is the prior's and the budget sets the number of
        networks; a budget that cannot hold one network of the prior's at ``prior_bits`` a weight gets the paper's
        start under ``prior=auto`` (logged) and an error for a named prior."""
        hp = self.hparams
        budget = self.target.target_bytes(image)
        in_dim = len(layout.block) + hp.code_dim
        probe = unicompress_container(image, layout, (0.0, 1.0), 99, hp.depth, hp.w0, hp.code_dim, top_for_bits(16),
                                      hp.codebook_bits,
                                      [np.zeros(s, np.float32) for s in siren_shapes(2, hp.depth, in_dim)],
                                      np.zeros((k, hp.code_dim), np.float32), np.arange(layout.n_blocks) % k)
        fixed = len(probe.to_bytes()) + math.ceil(k * hp.code_dim * hp.codebook_bits / 8)
        if prior is not None:
            r = prior.record
            need = siren_param_count(r["width"], r["depth"], r["in_dim"]) * hp.prior_bits_min / 8
            if need <= budget - fixed:
                return r["width"], groups_for_prior(budget - fixed, prior, hp.prior_bits, layout.n_blocks), prior
            message = (f"{image.name}: the {prior.id} prior's {r['width']}-wide SIREN needs {need:.0f} bytes at "
                       f"{hp.prior_bits_min:g} bits a weight; target {self.target.describe()} leaves {budget - fixed:.0f}")
            prior = self._prior_unusable(message)
        params = (budget - fixed) / (hp.weight_bits_min / 8)  # worst case: no entropy-coding gain
        width = widest_siren(params, hp.depth, in_dim)
        if width < 2:
            raise MedcompError(f"{image.name}: target {self.target.describe()} ({budget:.0f} bytes) leaves no room for "
                               f"the shared SIREN after {fixed} bytes of codebook, indices and header")
        return *split_width(params, hp.depth, in_dim, layout.n_blocks, hp.max_width), None

    def setup(self, stage=None):
        if len(self.sirens):
            return
        dm = self.data
        if dm.normalise != "image":
            raise MedcompError("model=unicompress shares one network across blocks: use data.normalise=image")
        hp = self.hparams
        dims = {im.ndim for im in dm.images}
        # the frozen extractor runs once here, on the fit's device (Lightning moves the model there only later)
        device = self._trainer.strategy.root_device if getattr(self, "_trainer", None) is not None else None
        extractor = self._build_extractor(dims.pop()).to(device or "cpu")
        for i, (image, layout, blocks) in enumerate(zip(dm.images, dm.layouts, dm.blocks)):
            k = self._codebook_size(self.target.target_bytes(image), layout.n_blocks, image.name)
            width, groups, prior = self._solve_width(image, layout, k, self._prior_for(image, len(layout.block) + hp.code_dim))
            if prior is not None:
                self._renormalise(i, covering_range(image.array, prior.fixed_range))
            self.widths.append(width)
            self.groups.append(groups)
            self.priors.append(prior)
            self.sirens.append(prior.network(groups) if prior is not None else
                               BatchedSiren(groups, len(layout.block) + hp.code_dim, width, hp.depth, 1, hp.w0,
                                            hp.w0_hidden))
            self.quantizers.append(VectorQuantizer(k, hp.code_dim, hp.beta))
            local, corners = block_coordinates(layout, hp.coordinates)
            self.register_buffer(f"coords_{i}", local, persistent=False)
            self.register_buffer(f"corners_{i}", corners, persistent=False)
            tokens = extract_tokens(extractor, blocks.reshape((-1, 1) + layout.block), self.parts)
            # Standardise each feature across the image's blocks: what conditions the INR is how blocks differ,
            # and a frozen extractor's raw features can vary by less than 1 % of their mean.
            # One block has no spread (the unbiased std of one value is NaN, which made every weight NaN): its
            # standardised features are zeros, the INR is conditioned on nothing, as a plain SIREN.
            spread = tokens.std(1, keepdim=True) if tokens.shape[1] > 1 else torch.zeros_like(tokens[:, :1])
            tokens = (tokens - tokens.mean(1, keepdim=True)) / (spread + 1e-6)
            self.register_buffer(f"tokens_{i}", tokens, persistent=False)
        self.fusion = AttentionFusion(len(self.parts), extractor.n_tokens, extractor.out_dim, hp.d_model, hp.heads,
                                      hp.code_dim)
        log.info("unicompress: SIREN widths %s (groups %s), extractor %s, prior %s", self.widths, self.groups,
                 self.extractor_source, [p.id if p else None for p in self.priors])

    def _prior_for(self, image, in_dim: int) -> Prior | None:
        """model.prior for this image; a shipped prior of another network shape is a logged fallback under auto."""
        hp = self.hparams
        prior = prior_for(image, hp.prior)
        if prior is None or prior.matches(prior.record["width"], hp.depth, in_dim):
            return prior
        message = (f"prior {prior.path} is for a depth-{prior.record['depth']} SIREN of {prior.record['in_dim']} inputs; "
                   f"this fit has depth {hp.depth} and {in_dim} inputs")
        return self._prior_unusable(message)

    def _prior_unusable(self, message: str) -> None:
        """A prior that cannot start this fit: under model.prior=auto the paper's random start (logged), for a prior
        named by path an error."""
        if self.hparams.prior != "auto":
            raise MedcompError(message)
        log.warning("unicompress: %s: random start", message)

    def _renormalise(self, i: int, value_range: tuple[float, float]) -> None:
        """Image i's blocks (in [−1, 1] over the image's min/max) re-mapped in place to ``value_range``: the prior's
        fixed window (CT in HU), so that images of one kind reach the network on one scale."""
        dm = self.data
        lo, hi = (float(v) for v in dm.block_ranges[i][0])
        new_lo, new_hi = value_range
        scale = (hi - lo) / (new_hi - new_lo)  # x → ((x + 1) (hi − lo) / 2 + lo − new_lo) / (new_hi − new_lo) · 2 − 1
        dm.blocks[i].mul_(scale).add_(scale + 2 * (lo - new_lo) / (new_hi - new_lo) - 1)
        dm.block_ranges[i][:] = np.array([new_lo, new_hi], dtype=np.float32)

    # --- training --------------------------------------------------------------------------------------------

    def inr_parameters(self) -> int:
        return sum(p.numel() for s in self.sirens for p in s.parameters())

    def describe(self) -> dict:
        """What metrics.json records about the fitted model."""
        return {"inr_parameters": self.inr_parameters(), "widths": list(self.widths), "groups": list(self.groups),
                "priors": [f"{p.id} ({p.sha256[:12]})" if p else None for p in self.priors],
                "codebook_sizes": [int(q.codebook.shape[0]) for q in self.quantizers], "extractor": self.extractor_source}

    def codes(self, i: int):
        """(fusion output z, codes q, indices, commitment loss) of image i's blocks. Once the assignment is frozen,
        z can change nothing in the file (the indices are fixed; q's value and its gradient to the codebook do not
        depend on z), so the fusion is skipped: z is None and the step is cheaper (abdomen CT, CR 64: ≈ 20 %)."""
        vq = self.quantizers[i]
        if vq.frozen:
            return None, vq.codebook[vq.frozen_idx], vq.frozen_idx, vq.codebook.new_zeros(())
        z = self.fused(i)
        return z, *vq(z)

    def fused(self, i: int) -> torch.Tensor:
        """The attention fusion's vector for each of image i's blocks (before quantisation)."""
        return self.fusion(list(getattr(self, f"tokens_{i}").unbind(0)))

    def at_freeze_step(self) -> bool:
        """True at the step where the block assignments are fixed (``freeze_codes_at`` of the fit)."""
        return self.trainer.max_steps > 0 and self.global_step == int(self.hparams.freeze_codes_at * self.trainer.max_steps)

    @torch.no_grad()
    def freeze_codes(self) -> None:
        """Fix each block's codeword for the rest of the fit (see VectorQuantizer.freeze)."""
        for i, vq in enumerate(self.quantizers):
            vq.freeze(self.fused(i))

    def point_inputs(self, i: int, q: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """SIREN input of the sampled points ``idx`` (N, P) of image i's blocks: coordinates ⊕ the block's code."""
        coords = getattr(self, f"corners_{i}")[:, None, :] + getattr(self, f"coords_{i}")[idx]  # (N, P, d)
        inp = torch.cat([coords, q[:, None, :].expand(-1, idx.shape[1], -1)], dim=-1)
        return inp.reshape(self.groups[i], -1, inp.shape[-1])  # blocks in raster order: group g is the g-th run

    def predict_points(self, i: int, q: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.sirens[i](self.point_inputs(i, q, idx)).reshape(idx.shape)

    def training_step(self, batch, batch_idx):
        recon, commit, spreads = 0.0, 0.0, []
        for i, (idx, values) in enumerate(batch):
            _, q, _, c = self.codes(i)
            pred = self.predict_points(i, q, idx)
            recon = recon + F.mse_loss(pred, values)
            commit = commit + c
            spreads.append(pred.detach().std() / (values.std() + 1e-8))  # read only when checked: no sync
        self.output_spread = torch.stack(spreads)
        loss = keep_every_parameter_in_graph(recon + commit, self)
        self.log_dict({"train/recon": recon, "train/commit": commit, "train/psnr_norm": 10 * torch.log10(4.0 / recon.detach())},
                      prog_bar=True)
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        self.restart_collapsed_sirens()
        if self.at_freeze_step():
            self.freeze_codes()

    def restart_collapsed_sirens(self, floor: float = 0.15, min_w0_hidden: float = 10.0) -> None:
        """A SIREN whose output has collapsed to a near-constant (sd < ``floor`` × the values' sd) is restarted in
        place with half the hidden w0, every ``collapse_check_every`` steps in the first quarter of the fit.

        Why: the hidden w0 acts as a step size. w0 60 gives the abdomen CT +0.7 dB over 30 (CR 256, 300 steps), but
        on the ISBI EM volume it collapses at once (output sd 0.016 vs the data's 0.35 from step 10, the file then
        15.09 dB = the mean), where w0 30 fits (sd 0.11 at step 10). Healthy fits measured ≥ 0.3 at step 10."""
        every, step = self.hparams.collapse_check_every, self.global_step
        if not every or step == 0 or step % every or step > self.trainer.max_steps // 4 or not self.output_spread.numel():
            return
        opt = self.optimizers().optimizer
        # every rank sampled its own points: the mean over ranks is one decision for all (their networks stay equal)
        for i, spread in enumerate(mean_over_ranks(self.output_spread).tolist()):
            net = self.sirens[i]
            if spread < floor and net.w0_hidden / 2 >= min_w0_hidden:
                log.warning("unicompress: image %d's SIREN output collapsed at step %d (sd %.3f of the data's); "
                            "restarted with hidden w0 %g", i, step, spread, net.w0_hidden / 2)
                net.reset_parameters(w0_hidden=net.w0_hidden / 2)  # with a prior too: its file still codes Δ from it
                same_on_every_rank(net.parameters())
                for p in net.parameters():
                    opt.state.pop(p, None)  # Adam re-initialises its moments for these

    def slow_parameters(self) -> list:
        """Parameters trained at ``fusion_lr``: the attention fusion (and, in subclasses, trainable extractors)."""
        return list(self.fusion.parameters())

    def siren_widths(self) -> list[tuple[torch.nn.Module, int]]:
        return list(zip(self.sirens, self.widths))

    def siren_lr(self, width: int) -> float:
        """``lr`` × min(1, √(reference width / width)). Measured on the abdomen CT at CR 64 (width 202): 5e-3 left the
        loss at the data variance, 1e-3 fitted; on data=sample (width 20) 5e-3 was best."""
        return width_scaled_lr(self.hparams.lr, self.hparams.lr_reference_width, width)

    def configure_optimizers(self):
        # The attention fusion needs a transformer-sized step; INR and codebook fit fast (measured on data=sample:
        # one shared lr of 5e-3 collapsed every block onto one or two codewords).
        param_groups = [{"params": self.slow_parameters(), "lr": self.hparams.fusion_lr}]
        param_groups += [{"params": list(net.parameters()), "lr": self.siren_lr(w)} for net, w in self.siren_widths()]
        taken = {id(p) for g in param_groups for p in g["params"]}
        param_groups.append({"params": [p for p in self.parameters() if id(p) not in taken], "lr": self.hparams.lr})
        opt = torch.optim.Adam(param_groups)
        steps = max(1, self.trainer.max_steps if self.trainer.max_steps > 0 else self.hparams.fit_steps)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=self.hparams.fusion_lr * 0.05)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- writing the file ------------------------------------------------------------------------------------

    def container_within_budget(self, image, layout, value_range, width, siren, codebook, idx,
                                prior: Prior | None = None) -> Container:
        """The file with the most weight levels, between weight_bits_min and weight_bits_max bits, that meets the
        target: the width is solved for weight_bits_min without entropy coding, and the levels fill what is left.
        With a prior the width is fixed and the levels (of Δ under model.delta, else of the weights) go down to 3:
        they are the rate knob. Its header carries the deblocking strength that suits it best (medcomp.codecs.deblock)."""
        hp = self.hparams
        delta_prior = prior if prior is not None and hp.delta else None
        # with a prior, the levels go down to 3 (one bit-depth setting, min = max, still fixes them: export-loss probes)
        fixed_depth = hp.weight_bits_min == hp.weight_bits_max
        lowest = 1 if prior is not None and not fixed_depth else top_for_bits(hp.weight_bits_min)
        params = [t.detach().cpu().numpy() for pair in zip(siren.weights, siren.biases) for t in pair]
        codebook, idx = codebook.detach().cpu().numpy(), idx.detach().cpu().numpy()

        def build(top):
            return unicompress_container(image, layout, value_range, width, hp.depth, siren.w0, hp.code_dim, top,
                                         hp.codebook_bits, params, codebook, idx, self.codec_name, hp.coordinates,
                                         siren.w0_hidden, siren.weights[0].shape[0], prior=delta_prior)

        container = fill_budget(build, self.target.target_bytes(image), lowest, top_for_bits(hp.weight_bits_max))
        return signal_best_strength(container, image.array, layout, decode_unicompress)

    def as_codec(self) -> Codec:
        """This fit as a codec: it encodes the images it was fitted on (their :meth:`export` files) and decodes any
        file of its kind (decoding needs only the file)."""
        from medcomp.codecs.registry import get_codec

        return get_codec(self.codec_name).holding(self)

    @torch.no_grad()
    def export(self) -> list[Container]:
        dm = self.data
        out = []
        for i, (image, layout, ranges) in enumerate(zip(dm.images, dm.layouts, dm.block_ranges)):
            _, _, idx, _ = self.codes(i)
            out.append(self.container_within_budget(image, layout, ranges[0], self.widths[i], self.sirens[i],
                                                    self.quantizers[i].codebook, idx, self.priors[i]))
        return out

