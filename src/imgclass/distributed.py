"""Data-parallel training under torchrun: the same `imgclass train` command in every process.

`torchrun --nproc_per_node N -m imgclass train ...` starts N copies with RANK, WORLD_SIZE,
LOCAL_RANK and LOCAL_WORLD_SIZE in their environment. Every rank loads the same data, splits it
the same way and draws the same epoch order (same seed, same "shuffle" stream); each takes its
own slice of every global batch (`Context.batches`), and DistributedDataParallel averages the
gradients. `batch_size` is global: one optimiser step sees the same images as one process with
that batch size. Validation runs on rank 0 and its figures are broadcast, so every rank
takes the same early-stopping decision; only rank 0 writes the run directory, and reads it:
what the other ranks need of it (a resumed run's configuration, split and checkpoint, the
checkpoint Ctrl-C goes back to) reaches them through the process group, so machines need no
shared disk. Each machine's local rank 0 fills its own cache. Without torchrun (or with one
process) nothing here starts a process group and every helper is the identity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from imgclass import runtime

T = TypeVar("T")

# How long a rank waits for the others at a collective (rank 0 validating, decoding the cache)
TIMEOUT = datetime.timedelta(minutes=30)


def batch_bounds(n: int, batch_size: int, world_size: int = 1) -> list[tuple[int, int]]:
    """[start, end) of each global batch of an epoch of n images.

    Consecutive batches of batch_size; a last batch smaller than the number of processes (it
    could not give every rank an image) joins the one before it, so no image is left out.
    """
    if n < world_size:
        raise ValueError(f"{n} training images cannot be shared by {world_size} processes")
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < world_size:
        end = bounds.pop()[1]
        bounds[-1] = (bounds[-1][0], end)
    return bounds


@dataclass(frozen=True)
class Context:
    """This process's place among the data-parallel processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    comm_device: torch.device = torch.device("cpu")  # where collectives' tensors live
    started: bool = False  # this Context started the process group (and stops it)

    @classmethod
    def from_env(cls) -> Context:
        """The ranks torchrun gives in the environment; a single process when there are none."""
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
        try:
            values = [
                int(os.environ.get(name, default))
                for name, default in zip(names, ("0", "1", "0", os.environ.get("WORLD_SIZE", "1")))
            ]
        except ValueError as err:
            raise ValueError(f"torchrun environment unreadable ({err})") from err
        context = cls(*values)
        if not 0 <= context.rank < context.world_size:
            raise ValueError(
                f"RANK {context.rank} out of range for WORLD_SIZE {context.world_size}"
            )
        return context

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def threads(self) -> int:
        """Compute threads for this process: the cores shared by the processes on this machine."""
        return max(1, runtime.usable_cores() // self.local_world_size)

    def start(self) -> Context:
        """Join the process group, before the run's configuration is known (on --resume only
        rank 0 may hold it): gloo for tensors on the CPU, NCCL for those on a GPU where there
        are GPUs. A no-op for one process."""
        if not self.active or dist.is_initialized():  # a caller's own group: used, left running
            return self
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
        return dataclasses.replace(self, started=True)

    def on(self, device: torch.device) -> Context:
        """The context of a process training on `device`: its collectives go through NCCL
        where the group has it for that GPU, else through gloo on the CPU."""
        if not self.active or device.type != "cuda":
            return self
        torch.cuda.set_device(device)
        if "nccl" not in str(dist.get_backend()):
            return self
        return dataclasses.replace(self, comm_device=device)

    def stop(self) -> None:
        if self.started and dist.is_initialized():
            dist.destroy_process_group()

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size {batch_size} is the global batch, split evenly over "
                f"{self.world_size} processes: make it a multiple of "
                f"{self.world_size}"
            )

    def batches(self, order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
        """This rank's indices of each global batch of the epoch order: contiguous slices,
        batch_size / world_size each (the last batch's slices differ by at most one image)."""
        return [
            torch.tensor_split(order[start:end], self.world_size)[self.rank]
            for start, end in batch_bounds(len(order), batch_size, self.world_size)
        ]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model whose backward pass averages gradients over the ranks (itself for one)."""
        if not self.active:
            return model
        return DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )

    def stream(self, name: str) -> str:
        """A random stream's name for this rank: rank 0 keeps the single-process stream."""
        return name if self.is_main else f"{name}@rank{self.rank}"

    def sum(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum over the ranks."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def from_main(self, values: Sequence[float]) -> list[float]:
        """Rank 0's values on every rank (what the others pass is ignored)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def on_main(self, fn: Callable[[], T]) -> T:
        """fn() run by rank 0 alone; its result, or its exception, reaches every rank."""
        if not self.active:
            return fn()
        box: list = [None]
        if self.is_main:
            try:
                box[0] = (fn(), None)
            except Exception as err:  # handed to every rank, raised everywhere alike
                box[0] = (None, err)
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        result, error = box[0]
        if error is not None:
            raise error
        return result

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """Each machine's local rank 0 runs the block first (filling that machine's cache), the
        other ranks after them (reading it)."""
        first = self.local_rank == 0
        if self.active and not first:
            dist.barrier()
        yield
        if self.active and first:
            dist.barrier()

    def gather_rng(self, rng: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank's random states, for rank 0's checkpoint: its own under their names, rank
        r's as "name@rankr" (resuming gives each rank its own back: `own_rng`)."""
        if not self.active:
            return rng
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, {k: v.cpu() for k, v in rng.items()})
        merged = dict(gathered[0])
        for rank, states in enumerate(gathered[1:], 1):
            merged |= {f"{name}@rank{rank}": state for name, state in states.items()}
        return merged

    def own_rng(self, rng: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's random states out of a checkpoint written by `gather_rng`."""
        suffix = f"@rank{self.rank}"
        own = {k: v for k, v in rng.items() if "@rank" not in k}
        if self.is_main:
            return own
        return own | {k.removesuffix(suffix): v for k, v in rng.items() if k.endswith(suffix)}


SINGLE = Context()  # one process, no process group
