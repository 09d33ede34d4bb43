"""UniCompress stage 2: distil a smaller student SIREN from a teacher checkpoint, fine-tuning the teacher.

Student: trainable extractor on the raw block only, its own fusion, the teacher's codebook (shared), a SIREN with at
most ``max_param_ratio`` × the teacher's INR parameters. Losses, each logged on its own: ground truth, output
alignment to the teacher, codebook alignment (MSE, hard), feature KL at temperature T (soft), and the teacher's own
loss while it is fine-tuned. The student writes the same ``unicompress`` bitstream as the teacher.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from medcomp.distill.losses import hard_alignment, soft_kl
from medcomp.errors import MedcompError
from medcomp.models.compression.unicompress import UniCompress
from medcomp.nn.fusion import AttentionFusion
from medcomp.nn.siren import BatchedSiren, siren_param_count, widest_siren
from medcomp.target import Target
from medcomp.utils.distributed import keep_every_parameter_in_graph

log = logging.getLogger("medcomp")


class UniCompressStudent(UniCompress):
    def __init__(self, teacher_ckpt: str | None = None, max_param_ratio: float = 0.55, temperature: float = 2.0,
                 w_gt: float = 1.0, w_out_teacher: float = 1.0, w_codebook: float = 1.0, w_kl: float = 0.1,
                 w_teacher: float = 1.0, distill: bool = True, block_codes: str = "teacher",
                 target: Target | None = None, **teacher_defaults):
        super().__init__(target=target, **teacher_defaults)
        self.save_hyperparameters(ignore=["target"])
        if block_codes not in ("teacher", "own"):
            raise MedcompError(f"model.block_codes must be 'teacher' or 'own', got {block_codes!r}")
        self.teacher: UniCompress | None = None
        self.student_sirens = torch.nn.ModuleList()
        self.student_widths: list[int] = []

    def setup(self, stage=None):
        if self.teacher is not None:
            return
        hp = self.hparams
        ckpt = self._load_teacher_checkpoint()
        teacher_keys = [k for k in UniCompress.__init__.__code__.co_varnames if k not in ("self", "target")]
        # A teacher from a checkpoint keeps its own settings; without one (no-KD baseline) it takes this run's.
        source = ckpt["hyper_parameters"] if ckpt is not None else hp
        self.teacher = UniCompress(target=self.target, **{k: source[k] for k in teacher_keys if k in source})
        self.teacher._trainer = self._trainer
        self.teacher._data = self.data  # ddp_spawn's main process: the trainer no longer holds the data module
        self.teacher.setup(stage)
        if ckpt is not None:
            # Cross-domain teachers were fitted to other images: load what has the same shape (the shared fusion
            # always; per-image SIRENs and codebooks only when the data matches) and say what was left out.
            own = self.teacher.state_dict()
            usable = {k: v for k, v in ckpt["state_dict"].items() if k in own and own[k].shape == v.shape}
            self.teacher.load_state_dict(usable, strict=False)
            for i, w0_hidden in enumerate(ckpt.get("siren_w0_hidden", [])):  # a SIREN restarted after a collapse
                if f"sirens.{i}.weights.0" in usable:
                    self.teacher.sirens[i].w0_hidden = w0_hidden
            skipped = sorted(set(own) - set(usable))
            if skipped:
                log.info("teacher checkpoint: %d of %d tensors loaded; re-fitted here: %s", len(usable), len(own),
                         ", ".join(skipped[:6]) + (" ..." if len(skipped) > 6 else ""))
        for key in ("depth", "w0", "w0_hidden", "code_dim", "codebook_bits", "coordinates"):  # the student's file follows the teacher's format
            self.hparams[key] = self.teacher.hparams[key]
        dm = self.data
        extractor = self._build_extractor(dm.images[0].ndim)
        extractor.requires_grad_(True).train()
        self.extractor = extractor
        self.fusion = AttentionFusion(1, extractor.n_tokens, extractor.out_dim, self.teacher.hparams.d_model,
                                      self.teacher.hparams.heads, self.teacher.hparams.code_dim)
        depth, d = self.teacher.hparams.depth, len(dm.layouts[0].block)
        in_dim = d + self.teacher.hparams.code_dim
        self.groups = list(self.teacher.groups)  # the student's SIRENs cover the same runs of blocks
        for i, (teacher_width, blocks, layout) in enumerate(zip(self.teacher.widths, dm.blocks, dm.layouts)):
            budget = hp.max_param_ratio * siren_param_count(teacher_width, depth, in_dim)
            width = min(teacher_width, widest_siren(budget, depth, in_dim))
            if width < 1:
                raise MedcompError(f"a teacher SIREN of width {teacher_width} leaves no student within "
                                   f"{hp.max_param_ratio} x its parameters; raise model.max_param_ratio")
            self.student_widths.append(width)
            self.student_sirens.append(BatchedSiren(self.groups[i], in_dim, width, depth, 1, hp.w0,
                                                    self.teacher.sirens[i].w0_hidden))
            self.register_buffer(f"blocks_{i}", blocks.reshape((-1, 1) + layout.block), persistent=False)
            # image i's block assignment once frozen (empty until then): in checkpoints, moved by .to()
            self.register_buffer(f"student_idx_{i}", torch.zeros(0, dtype=torch.long))
            for name in (f"coords_{i}", f"corners_{i}"):
                self.register_buffer(name, getattr(self.teacher, name), persistent=False)
        log.info("student INR parameters %d = %.3f x teacher %d", self.inr_parameters(),
                 self.inr_parameters() / self.teacher.inr_parameters(), self.teacher.inr_parameters())

    def _load_teacher_checkpoint(self):
        path = self.hparams.teacher_ckpt
        if not path:
            if self.hparams.distill:
                raise MedcompError("model.teacher_ckpt is required for distillation (stage 1: run.py model=unicompress)")
            return None
        p = Path(path).expanduser()
        if not p.is_file():
            raise MedcompError(f"{p}: teacher checkpoint not found")
        return torch.load(p, map_location="cpu", weights_only=True)

    def inr_parameters(self) -> int:
        return sum(p.numel() for s in self.student_sirens for p in s.parameters())

    def describe(self) -> dict:
        teacher = self.teacher.inr_parameters()
        return {"inr_parameters": self.inr_parameters(), "widths": list(self.student_widths),
                "teacher_inr_parameters": teacher, "param_ratio": self.inr_parameters() / teacher,
                "teacher_widths": list(self.teacher.widths), "distill": bool(self.hparams.distill),
                "teacher_ckpt": self.hparams.teacher_ckpt, "extractor": self.extractor_source}

    def student_codes(self, i: int, teacher_idx: torch.Tensor | None = None):
        """(z, codes, indices) of image i's blocks on the teacher's codebook. ``block_codes=teacher``: the teacher's
        assignment (``teacher_idx`` when the caller has it), no student encoder (z is None). ``own``: the student's
        encoder, skipped too once the assignments are frozen (it can change nothing in the file then)."""
        vq = self.teacher.quantizers[i]  # the shared codebook
        idx = getattr(self, f"student_idx_{i}")
        idx = idx if idx.numel() else None
        if idx is None and self.hparams.block_codes == "teacher":
            idx = teacher_idx if teacher_idx is not None else self.teacher.codes(i)[2]
        if idx is not None:
            return None, vq.codebook[idx], idx
        z = self.fusion([self.extractor(getattr(self, f"blocks_{i}"))])
        idx = vq.nearest(z.detach())
        q = vq.codebook[idx]
        return z, q + z - z.detach(), idx

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        terms = {k: 0.0 for k in ("gt", "out_teacher", "codebook", "kl", "teacher")}
        for i, (idx, values) in enumerate(batch):
            # A teacher that is not fine-tuned (w_teacher 0) runs without a graph; the no-KD student never uses the
            # teacher's outputs, so they are not computed at all.
            with torch.set_grad_enabled(bool(hp.w_teacher)):
                zt, qt, idx_t, commit = self.teacher.codes(i)
                pred_t = self.teacher.predict_points(i, qt, idx) if hp.distill or hp.w_teacher else None
            if pred_t is not None:
                terms["teacher"] = terms["teacher"] + F.mse_loss(pred_t, values) + commit
            zs, qs, _ = self.student_codes(i, idx_t)
            pred_s = self.student_sirens[i](self.point_inputs(i, qs, idx)).reshape(idx.shape)
            terms["gt"] = terms["gt"] + F.mse_loss(pred_s, values)
            if hp.distill:
                terms["out_teacher"] = terms["out_teacher"] + hard_alignment(pred_s, pred_t)
                if zs is not None and zt is not None:  # the encoders' terms, until the assignments are frozen
                    terms["codebook"] = terms["codebook"] + hard_alignment(qs, qt)
                    terms["kl"] = terms["kl"] + soft_kl(zs, zt, hp.temperature)
        weights = {"gt": hp.w_gt, "out_teacher": hp.w_out_teacher, "codebook": hp.w_codebook, "kl": hp.w_kl,
                   "teacher": hp.w_teacher}
        loss = keep_every_parameter_in_graph(sum(weights[k] * v for k, v in terms.items()), self)
        self.log_dict({f"kd/{k}": v for k, v in terms.items() if torch.is_tensor(v)}, prog_bar=False)
        self.log("train/psnr_norm", 10 * torch.log10(4.0 / terms["gt"].detach()), prog_bar=True)
        return loss

    def siren_widths(self):
        return self.teacher.siren_widths() + list(zip(self.student_sirens, self.student_widths))

    def slow_parameters(self) -> list:
        return list(self.fusion.parameters()) + list(self.teacher.fusion.parameters()) + list(self.extractor.parameters())

    def on_train_batch_start(self, batch, batch_idx):
        """At ``freeze_codes_at`` of the fit, both assignments are fixed, as in the teacher's own fit: from then on
        neither encoder runs (the student's trainable 3-D extractor over every block made its steps ≈ 15× dearer than
        the teacher's: abdomen CT, CR 256, 30 s: 53 steps against 817) and the SIRENs and codebook train alone."""
        if self.at_freeze_step():
            self.teacher.freeze_codes()
            with torch.no_grad():
                for i in range(len(self.student_sirens)):
                    setattr(self, f"student_idx_{i}", self.student_codes(i)[2])

    @torch.no_grad()
    def export(self):
        """The student's files: its SIREN, the shared codebook, its own block indices (same format as the teacher)."""
        dm = self.data
        out = []
        for i, (image, layout, ranges) in enumerate(zip(dm.images, dm.layouts, dm.block_ranges)):
            _, _, idx = self.student_codes(i)
            out.append(self.container_within_budget(image, layout, ranges[0], self.student_widths[i],
                                                    self.student_sirens[i], self.teacher.quantizers[i].codebook, idx))
        return out
