"""What a fit needs so that every rank of a Lightning DDP run (gloo on CPU, NCCL on GPU) does the same thing: one place
for the few collectives the models use, and an evaluation sampler that shards a split without padding it.

Why not torchmetrics' dist sync for AUROC: Lightning's DistributedSampler pads the last shard with repeated images, so
a synced metric counts some images twice; an unpadded shard gathered in order gives the whole split exactly once.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def trainer_rank(trainer) -> int:
    """This process's global rank in ``trainer``'s run (0 without a trainer)."""
    return trainer.global_rank if trainer is not None else 0


def on_gpu(trainer) -> bool:
    """Whether ``trainer`` fits on a CUDA device."""
    return trainer is not None and trainer.strategy.root_device.type == "cuda"


def keep_every_parameter_in_graph(loss: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """``loss`` + 0 × every trainable parameter, under DDP only. DDP's reducer waits for a gradient of every
    parameter it was built with; a step that leaves some unused (UniCompress's fusion once the block codes are frozen,
    a student's encoder with ``block_codes=teacher``) would fail ("parameters that were not used in producing the
    loss"). A zero gradient keeps the reducer whole without ``find_unused_parameters`` (a graph walk every step, and a
    ``strategy=ddp`` a user types would not have it). Under DDP even with one process (``trainer.devices=1``: DDP
    still wraps the model); fits without a process group are untouched (their bytes are unchanged)."""
    if not (dist.is_available() and dist.is_initialized()):
        return loss
    zero = sum(p.sum() for p in module.parameters() if p.requires_grad)
    return loss + 0.0 * zero


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over ranks (the value itself in one process): decisions taken from it agree."""
    if world_size() == 1:
        return value
    out = value.detach().clone().float()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


@torch.no_grad()
def same_on_every_rank(tensors) -> None:
    """Rank zero's values of ``tensors``, in place, on every rank (a collective; no-op in one process). For state a
    rank draws at random during a fit (a SIREN restarted after a collapse, codewords reseeded): the ranks' random
    streams need not agree, and DDP only keeps equal what was equal and got the same gradients."""
    if world_size() == 1:
        return
    for t in tensors:
        dist.broadcast(t.data, src=0)


def gather_in_order(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each rank's tensors (one list per rank, of CPU tensors, rank r holding the r-th contiguous run of the split, as
    :class:`EvalShardSampler` gives them) → the whole split, in loader order, on every rank."""
    if world_size() == 1:
        return parts
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, [p.cpu() for p in parts])
    return [torch.cat([g[i] for g in gathered]) for i in range(len(parts))]


class EvalShardSampler(DistributedSampler):
    """Rank r takes the r-th contiguous run of the split, no padding and no shuffling: gathered in rank order
    (:func:`gather_in_order`), the shards are the split once, in order. Lightning leaves a DistributedSampler as it is."""

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        per = math.ceil(len(dataset) / num_replicas)
        self.indices = list(range(len(dataset)))[rank * per : (rank + 1) * per]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def eval_sampler(dataset, trainer) -> EvalShardSampler | None:
    """An unpadded shard of ``dataset`` for this rank when the trainer runs several processes, else None."""
    if trainer is None or trainer.world_size <= 1:
        return None
    return EvalShardSampler(dataset, trainer.world_size, trainer.global_rank)


def state_checksums(module: torch.nn.Module) -> dict[str, float]:
    """A float64 sum per tensor of the state dict (what a checkpoint keeps; not per-rank observations such as the
    last step's statistics): equal on every rank of a correct DDP fit. BatchNorm's running statistics are left out:
    DDP broadcasts them from rank zero before every forward, and after the last step each rank's hold its own batch."""
    return {name: float(t.detach().double().sum()) for name, t in module.state_dict().items()
            if torch.is_tensor(t) and not name.endswith(BATCHNORM_STATISTICS)}


BATCHNORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def tensors_that_disagree(module: torch.nn.Module) -> list[str]:
    """``rank: name`` of each parameter or buffer that differs from rank zero's (a collective: every rank calls it)."""
    if world_size() == 1:
        return []
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, state_checksums(module))
    return [f"rank {r}: {name}" for r, sums in enumerate(gathered) for name in sorted(set(sums) | set(gathered[0]))
            if sums.get(name) != gathered[0].get(name)]


def loader_settings(trainer, num_workers: int | str = "auto", pin_memory: bool | str = "auto") -> dict:
    """DataLoader workers and pinning for this trainer. ``auto``: on a GPU, up to 4 worker processes (one core
    left to the training process) and pinned batches, so that decoding and augmentation overlap the device's
    work; on a CPU, 0 workers (the cores are the training's) and no pinning."""
    from medcomp.utils.parallel import usable_cpus

    gpu = on_gpu(trainer)
    workers = (min(4, max(0, usable_cpus() // max(1, trainer.num_devices) - 1)) if gpu else 0) \
        if num_workers == "auto" else int(num_workers)
    return {"num_workers": workers, "pin_memory": gpu if pin_memory == "auto" else bool(pin_memory)}
