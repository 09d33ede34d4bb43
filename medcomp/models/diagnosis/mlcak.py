"""MLCAK (seed 003): a timm ViT teacher on high-resolution chest X-rays distils multi-level attention knowledge into
a ViT student that sees the same images at low resolution (112, 56 or 28 px).

Two heads on the class token: MLCT (multi-label local findings) and MCCT (normal vs abnormal). With a teacher:
    L = α·MSE(MLCT logits) + β·MSE(MCCT logits) + γ·MLCAK + classification,
MLCAK = MSE between the teacher's and the student's class-token attention maps, averaged over heads, at several
depths ("levels"), the teacher's token grid resampled to the student's (medcomp.distill.losses).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from medcomp.distill.losses import attention_maps_mse, hard_alignment
from medcomp.errors import MedcompError
from medcomp.models.diagnosis.classifier import ClassifierModule, load_teacher

log = logging.getLogger("medcomp")


def auto_patch_size(img_size: int) -> int:
    """16 px patches down to 112 px inputs, then a 7 × 7 token grid (56 → 8, 28 → 4): never an empty grid."""
    return 16 if img_size >= 112 else max(1, img_size // 7)


class ViTWithAttention(nn.Module):
    """A timm ViT (single channel, no classifier) that also returns its class-token attention maps, averaged over
    heads, at the blocks in ``levels``. timm's fused attention hides the weights, so it is switched off and the
    softmax output is caught where it enters ``attn_drop`` (a forward hook: gradients flow through it)."""

    def __init__(self, arch: str, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 levels: list[int], pretrained_path: str | None = None):
        super().__init__()
        import timm

        if img_size % patch_size:
            # timm would silently drop the border pixels that do not fill a patch.
            raise MedcompError(f"image size {img_size} is not a multiple of patch size {patch_size}")
        kwargs = dict(img_size=img_size, patch_size=patch_size, in_chans=1, num_classes=0, embed_dim=embed_dim,
                      depth=depth, num_heads=num_heads)
        self.source = "random-init"
        if pretrained_path:
            p = Path(pretrained_path).expanduser()
            try:  # timm adapts the patch embedding to one channel and resamples the position embedding
                self.vit = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(p)}, **kwargs)
                self.source = str(p)
            except Exception as exc:  # noqa: BLE001 — any failure falls back, and says so
                log.warning("pretrained ViT weights %s could not be loaded (%s); training from random init", p,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if self.source == "random-init":
            try:
                self.vit = timm.create_model(arch, pretrained=False, **kwargs)
            except AssertionError as exc:  # timm's hybrids assert that the stem's feature map tiles into patches
                raise MedcompError(f"model.arch={arch}: {img_size}-px images do not tile into {patch_size}-px patches "
                                   f"of its stem's feature map (R-Ti hybrid: image size a multiple of "
                                   f"{4 * patch_size})") from exc
        self.levels = [lv % depth for lv in levels]
        self.grid = tuple(self.vit.patch_embed.grid_size)
        self._maps: list[torch.Tensor] = []
        for lv in self.levels:
            attn = self.vit.blocks[lv].attn
            attn.fused_attn = False
            attn.attn_drop.register_forward_hook(self._catch)

    def _catch(self, module, inputs, output):
        prefix = self.vit.num_prefix_tokens
        cls_rows = output[:, :, 0, prefix:].mean(1)  # (B, patches): class token → patches, mean over heads
        self._maps.append(cls_rows.reshape(-1, *self.grid))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._maps = []
        features = self.vit(x)
        maps, self._maps = self._maps, []
        return features, maps


class MLCAK(ClassifierModule):
    def __init__(self, img_size: int = 224, input: str = "image", patch_size: int | None = None,
                 arch: str = "vit_tiny_patch16_224", embed_dim: int = 192, depth: int = 6, num_heads: int = 3,
                 levels: list[int] | None = None,
                 finding_names: list[str] | None = None, pretrained_path: str | None = None,
                 kd: bool = False, teacher_ckpt: str | None = None, alpha: float = 1.0, beta: float = 1.0,
                 gamma: float = 1.0, lr: float = 5e-4, weight_decay: float = 0.05, epochs: int = 10, target=None):
        super().__init__()
        self.save_hyperparameters(ignore=["target"])
        self.net = ViTWithAttention(arch, img_size, patch_size or auto_patch_size(img_size), embed_dim, depth,
                                    num_heads, levels if levels is not None else [depth // 3, 2 * depth // 3, -1],
                                    pretrained_path)
        self.mlct = nn.Linear(embed_dim, len(finding_names or ['pneumonia']))
        self.mcct = nn.Linear(embed_dim, 1)
        self.teacher = load_teacher(MLCAK, teacher_ckpt, "MLCAK distillation", "kd") if kd else None
        if self.teacher is not None and len(self.teacher.net.levels) != len(self.net.levels):
            raise MedcompError(f"teacher has {len(self.teacher.net.levels)} attention levels, "
                               f"the student {len(self.net.levels)}: set model.levels to match")

    def heads(self, batch):
        x = batch[self.hparams.input]
        if x.shape[-1] != self.hparams.img_size:
            raise MedcompError(f"model.img_size={self.hparams.img_size} but the '{self.hparams.input}' images are "
                               f"{x.shape[-1]} px (set data.resolution / data.image_size to match)")
        features, maps = self.net(x)
        return self.mcct(features).squeeze(1), self.mlct(features), {"attention": maps}

    def training_step(self, batch, batch_idx):
        mcct, mlct, extra = self.heads(batch)
        loss = cls_loss = self.classification_loss(mcct, mlct, batch)
        logs = {"train/cls": cls_loss}
        if self.teacher is not None:
            with torch.no_grad():
                t_mcct, t_mlct, t_extra = self.teacher.heads(batch)
            kd = {"kd_mlct": hard_alignment(mlct, t_mlct), "kd_mcct": hard_alignment(mcct, t_mcct),
                  "kd_attention": attention_maps_mse(extra["attention"], t_extra["attention"])}
            loss = loss + self.hparams.alpha * kd["kd_mlct"] + self.hparams.beta * kd["kd_mcct"] \
                + self.hparams.gamma * kd["kd_attention"]
            logs.update({f"train/{k}": v for k, v in kd.items()})
        logs["train/loss"] = loss
        self.log_dict(logs, prog_bar=False)
        return loss

    def attention_maps(self, batch) -> dict[str, list[torch.Tensor]]:
        """Head-averaged class-token attention per level, for the student and (if any) the teacher."""
        role = "student" if self.teacher is not None or self.hparams.input != "image" else "teacher"
        out = {f"{role} {self.hparams.img_size} px": self.heads(batch)[2]["attention"]}
        if self.teacher is not None:
            out[f"teacher {self.teacher.hparams.img_size} px"] = self.teacher.heads(batch)[2]["attention"]
        return out

    def describe(self) -> dict:
        return {"parameters": self.trainable_parameters(), "img_size": self.hparams.img_size,
                "patch_size": self.net.vit.patch_embed.patch_size[0], "grid": list(self.net.grid),
                "kd": self.teacher is not None, "weights_from": self.net.source}
