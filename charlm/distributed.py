"""Many processes, one run: `torchrun --nproc-per-node N -m charlm train …`.

torchrun starts N copies of charlm and tells each its rank and the world size in the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Each process carries its own share of the
batch rows; DistributedDataParallel averages the gradients after every backward pass (gloo on CPUs,
NCCL on GPUs), so every process takes the same step and the weights stay equal everywhere — the
same step a single process takes on the whole batch. Rank 0 alone decides when to stop and save
(and tells the others), writes checkpoints, metrics and the display.

    rows of one window (batch 8, 2 processes)      rank 0: rows 0-3      rank 1: rows 4-7
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as td

from charlm.errors import CharLMError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This process's share of the batch rows."""
        share = batch_size // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    # -- collectives (all no-ops in one process) --------------------------------------------------

    def agree(self, *values: float) -> list[float]:
        """Rank 0's values, on every rank (the stop, save and progress decisions)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        td.broadcast(t, src=0)
        return t.tolist()

    def all_true(self, ok: bool) -> bool:
        """True only where every rank says True (a step is skipped everywhere or nowhere)."""
        if self.world == 1:
            return ok
        t = torch.tensor([1 if ok else 0], device=_comm_device())
        td.all_reduce(t, op=td.ReduceOp.MIN)
        return bool(t.item())

    def gather(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's ``t`` joined along ``dim`` in rank order (all ranks take part)."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        td.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim)

    def barrier(self) -> None:
        if self.world > 1:
            td.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")


def from_env() -> Dist:
    """The process's place in a torchrun launch (rank 0 of 1 when not launched by torchrun)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise CharLMError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise CharLMError(f"rank {rank} of {world} processes is not a valid place in a launch")
    return Dist(rank, world, local)


def start(dist: Dist, device: torch.device) -> None:
    """Join the other processes: NCCL between GPUs, gloo between CPUs."""
    if dist.world == 1 or td.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    td.init_process_group(backend, rank=dist.rank, world_size=dist.world)


def stop(dist: Dist) -> None:
    if dist.world > 1 and td.is_initialized():
        gc.collect()  # a wrapper caught in a reference cycle would otherwise outlive its group
        td.destroy_process_group()


class LossModule(torch.nn.Module):
    """model.loss as a forward pass, so DistributedDataParallel can hook its backward."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor, state):
        return self.model.loss(x, y, state)


def wrap(model: torch.nn.Module, dist: Dist, device: torch.device):
    """The callable a training step uses for its loss: model.loss itself in one process, and
    DistributedDataParallel around it in several (it also makes every rank start from rank 0's
    weights)."""
    if dist.world == 1:
        return model.loss
    ids = [device.index] if device.type == "cuda" else None
    adaptive = getattr(model, "adaptive", None) is not None  # clusters a batch never reaches get no gradient
    return torch.nn.parallel.DistributedDataParallel(LossModule(model), device_ids=ids,
                                                     find_unused_parameters=adaptive)
