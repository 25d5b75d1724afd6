"""Data-parallel training with torch.distributed, on one machine or several.

``splitserve train`` started by ``torchrun`` (which sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address) trains one model in WORLD_SIZE
processes: every rank holds the same weights, takes its own share of each
epoch's batches, and averages its gradients with the others after every
backward pass, which is what DistributedDataParallel does. The training loop
runs several widths through the model before one backward pass (the sandwich
rule), a pattern DDP's per-forward hooks do not allow, so the all-reduce is
explicit here. Rate control and BatchNorm statistics are averaged too, so all
ranks stay identical; rank 0 alone writes checkpoints and the bundle.

Backend: NCCL when every rank has a GPU, gloo otherwise (CPU, and the tests).
Without torchrun, ``World()`` is a single process and every call is a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from splitserve.devices import resolve_device

log = logging.getLogger("splitserve.train")


class World:
    """This process's place in the training job (rank 0 of 1 without torchrun)."""

    def __init__(self) -> None:
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.size > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend, timeout=timedelta(minutes=30))
            log.info("rank %d of %d (%s backend)", self.rank, self.size, backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def device(self, name: str) -> torch.device:
        """The device for ``name`` (see ``resolve_device``): each rank on a machine takes its own GPU."""
        device = resolve_device(name)
        if device.type == "cuda" and device.index is None and self.active:
            return torch.device("cuda", self.local_rank)
        return device

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, value: float) -> float:
        """The mean of a number over all ranks (so every rank's rate control moves alike)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.size

    def broadcast(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers, as DDP does when it wraps a model.

        Seeding alone does not make new weights equal: what the ranks drew from the global
        generator before (dropout masks, in batches of unequal size) differs between them.
        """
        if not self.active:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over ranks."""
        if not self.active:
            return
        for buf in module.buffers():
            if buf.is_floating_point() and buf.numel():
                dist.all_reduce(buf)
                buf /= self.size

    def check_in_sync(self, module: nn.Module, what: str) -> None:
        """Fail loudly if the ranks' weights have drifted apart (they must stay identical)."""
        if not self.active:
            return
        with torch.no_grad():
            total = sum((p.double().sum() for p in module.parameters()), torch.zeros((), dtype=torch.float64))
            lo, hi = total.clone().reshape(1), total.clone().reshape(1)
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if float(hi - lo) > 1e-6 * max(1.0, abs(float(total))):
            raise RuntimeError(f"rank {self.rank}: {what} weights differ between ranks ({float(lo)} vs {float(hi)})")
        if self.main:
            log.info("%s: weights identical on all %d ranks", what, self.size)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


class Sharded:
    """A frame source seen by one rank: of every ``size`` consecutive batches, the ``rank``-th.

    Every rank draws the same batches from the same generator state, so the shares
    never overlap, and each rank gets the same number of batches (an incomplete last
    group is dropped), so the all-reduce after every step never waits for a rank that
    has run out.
    """

    def __init__(self, source, world: World) -> None:  # type: ignore[no-untyped-def]
        self.source = source
        self.world = world

    def __len__(self) -> int:
        return len(self.source) // self.world.size

    def steps(self, batch_size: int) -> int:
        return steps_per_epoch(self.source, batch_size) // self.world.size

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator:
        group = []
        for batch in self.source.batches(batch_size, generator):
            group.append(batch)
            if len(group) == self.world.size:
                yield group[self.world.rank]
                group = []


def sharded(source, world: World):  # type: ignore[no-untyped-def]
    return Sharded(source, world) if world.active else source


def steps_per_epoch(source, batch_size: int) -> int:  # type: ignore[no-untyped-def]
    """How many batches an epoch of ``source`` yields: what a learning-rate schedule must plan for.

    A rank's share is not ceil(share / batch): ranks drop an incomplete last group of batches.
    """
    steps = getattr(source, "steps", None)
    return steps(batch_size) if steps is not None else -(-len(source) // batch_size)
