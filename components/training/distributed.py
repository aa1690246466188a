"""Multi-process training with PyTorch's own engine (``torchrun`` + DistributedDataParallel).

``DistributedContext.from_env()`` reads the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group: NCCL when CUDA is available,
gloo otherwise. Without them (a plain ``python -m pipelines.train``) it is a single-process no-op context,
so the same code path serves both.

Batch semantics: ``--batch-size`` is the GLOBAL batch (pairs per optimiser step over all ranks). Every rank
draws the same seeded batch stream, keeps its contiguous slice of each batch (:meth:`DistributedContext.local_slice`),
encodes it, and :func:`all_gather_with_grad` rebuilds the global representations in batch order, so the
contrastive and distillation losses see the whole global batch and every rank computes the same loss.

Gradient scaling: the backward of the all-gather (:func:`all_gather_with_grad`) SUMS the incoming gradients
over ranks; each rank holds the same global loss L, so a rank's local z receives W * dL/dz. DDP then AVERAGES
the parameter gradients over the W ranks, which divides that factor out: the result is exactly dL/dtheta of
the single-process step on the same global batch (checked in ``tests/components/training/test_distributed.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def auto_backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo`` (the CPU backend)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


@dataclass
class DistributedContext:
    """Rank, world size and the collectives flipkd needs; ``world_size == 1`` is the no-op context."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    @classmethod
    def from_env(cls, backend: str | None = None) -> DistributedContext:
        """Join the group ``torchrun`` describes in the environment; single-process when it describes none."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        missing = [v for v in TORCHRUN_VARS if v not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start with torchrun")
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        return cls.init(rank, world_size, backend=backend, local_rank=local_rank)

    @classmethod
    def init(cls, rank: int, world_size: int, *, backend: str | None = None, local_rank: int | None = None,
             init_method: str = "env://") -> DistributedContext:
        backend = backend or auto_backend()
        local_rank = rank if local_rank is None else local_rank
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
        return cls(rank, world_size, local_rank, backend)

    # ----------------------------------------------------------------- data
    def local_slice(self, index: Sequence[int]) -> list[int]:
        """This rank's contiguous share of a global batch (shares differ by at most one; rank order = batch order)."""
        base, extra = divmod(len(index), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return list(index[start:start + base + (1 if self.rank < extra else 0)])

    def shard(self, items: Sequence) -> list:
        """Every ``world_size``-th item starting at ``rank`` (for work such as teacher scoring)."""
        return list(items[self.rank::self.world_size])

    # ----------------------------------------------------------------- collectives (no-ops when single-process)
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj, src: int = 0):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_gather_with_grad(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Each rank's ``tensor`` (first dimensions may differ), differentiable; see the module docstring."""
        if not self.enabled:
            return [tensor]
        return all_gather_with_grad(tensor)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in DistributedDataParallel (unused parameters allowed: the forward stops at the
        representation layer, so later LoRA weights get no gradient); unchanged when single-process."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


class _AllGather(torch.autograd.Function):
    """All-gather whose backward SUMS each slice's gradient over ranks (the semantics of the deprecated
    ``torch.distributed.nn.functional.all_gather``), so DDP's averaging yields the single-process gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        total = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[dist.get_rank()]


def all_gather_with_grad(tensor: torch.Tensor) -> list[torch.Tensor]:
    """All-gather with gradients, for tensors whose first dimension differs by rank: padded to the largest,
    gathered (the backward sums the gradients over ranks), then trimmed."""
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device))
    sizes = [int(s) for s in sizes]
    largest = max(sizes)
    padded = tensor
    if tensor.shape[0] < largest:
        pad = tensor.new_zeros((largest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad])
    gathered = _AllGather.apply(padded)
    return [g[:n] for g, n in zip(gathered, sizes, strict=True)]

