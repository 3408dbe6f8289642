"""Processes, devices and model wrapping: everything that differs between one CPU process and many GPUs.

- `setup(config)`: reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK, picks the device (never hard-coded), starts the
  process group (gloo on CPU, NCCL on CUDA) and returns a `Dist` describing this process.
- `wrap(model, stage, ...)`: activation checkpointing first, then FSDP2 (`fully_shard`) on the trainable modules only
  (the frozen base stays an ordinary replicated module, never all-gathered), or DDP, or nothing.
- `micro_batch_ranges`: how the global sample stream is split over ranks and accumulation micro-steps.

Model code stays single-device; this module applies parallelism from outside (torchtitan's rule).
"""

from __future__ import annotations

import os
from datetime import timedelta
from collections.abc import Iterator
from dataclasses import dataclass
from contextlib import nullcontext
from typing import Callable, ContextManager

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from star.training.config import TrainConfig


@dataclass
class Dist:
    rank: int
    """Global rank of this process (0 when not distributed)."""
    world_size: int
    """Number of processes (1 when not distributed)."""
    local_rank: int
    """Rank on this machine; picks the GPU under torchrun."""
    device: torch.device
    """Where this process computes."""
    owns_group: bool = False
    """Whether `setup` started the process group (and `teardown` should end it)."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def parse_device(name: str) -> torch.device:
    """--device as a torch.device; an unknown name, or CUDA where torch sees none, is a ValueError."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this torch build sees no CUDA device; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: there are only {torch.cuda.device_count()} CUDA devices")
    return device


def resolve_device(name: str, local_rank: int) -> torch.device:
    """'auto' -> CUDA if available (cuda:LOCAL_RANK), else CPU; 'cuda' -> cuda:LOCAL_RANK; anything else as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(name)                     # a ValueError for an unknown name or CUDA where there is none
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def setup(config: TrainConfig) -> Dist:
    """Describe this process; under torchrun (WORLD_SIZE > 1) also start the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config.device, local_rank)
    launched = "MASTER_ADDR" in os.environ and "RANK" in os.environ  # torchrun (also with --nproc_per_node 1)
    if (world_size > 1 or launched) and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=config.collective_timeout_min), **kwargs)
        return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device, owns_group=True)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown(env: Dist, clean: bool = True) -> None:
    """End the process group `setup` started; after an error, skip the barrier (the other ranks may never reach it)."""
    if env.owns_group and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier(env: Dist) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_object(env: Dist, obj):
    """rank 0's `obj` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(env: Dist, values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over ranks of a 1-D float tensor (one collective for all the step's scalars)."""
    if env.distributed:
        values = values.to(env.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = values / env.world_size
    return values.cpu()


def resolve_parallel(config: TrainConfig, env: Dist) -> str:
    mode = config.parallel
    if mode == "auto":
        mode = "fsdp" if env.distributed else "none"
    if mode == "none" and env.distributed:
        raise ValueError(
            f"parallel='none' with WORLD_SIZE={env.world_size} would train {env.world_size} diverging copies; "
            "use parallel='fsdp' (shards the trainable modules) or 'ddp'"
        )
    return mode


# -----------------------------------------------------------------------------
# Data split


def micro_batch_ranges(config: TrainConfig, rank: int, world_size: int, start_position: int) -> Iterator[range]:
    """Global sample indices of this rank's micro-batches, in order, from `start_position` on (endless).

    The optimizer step starting at position p reads samples [p, p + batch_size) (p = s * batch_size when the batch
    size never changed); that window is cut into
    grad_accum * world_size equal chunks, and micro-step a on rank r reads chunk a * world_size + r. The union over
    ranks and micro-steps is the same for any (world_size, grad_accum), which is why a 2-process run, a 1-process run
    and an accumulated run see the same global batches.
    """
    if start_position < 0:
        raise ValueError(f"start_position must be >= 0, got {start_position}")
    micro = config.micro_batch_size(world_size)
    position = start_position
    while True:
        for a in range(config.grad_accum):
            chunk = a * world_size + rank
            yield range(position + chunk * micro, position + (chunk + 1) * micro)
        position += config.batch_size


# -----------------------------------------------------------------------------
# Model wrapping


def blocks_of(module: nn.Module) -> list[nn.Module]:
    """The repeated blocks inside a module (members of any nn.ModuleList below it), or the module itself."""
    found = [m for sub in module.modules() if isinstance(sub, nn.ModuleList) for m in sub]
    return found or [module]


def _checkpointed(forward: Callable) -> Callable:
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def apply_activation_checkpointing(model: nn.Module, trainable: tuple[str, ...]) -> int:
    """Recompute each block of each trainable module in backward. Replaces the instance's `forward`, so state-dict
    keys do not change. Returns the number of blocks wrapped."""
    count = 0
    for name in trainable:
        for block in blocks_of(model.get_submodule(name)):
            block.forward = _checkpointed(block.forward)
            count += 1
    return count


def wrap(model: nn.Module, trainable: tuple[str, ...], mode: str, env: Dist, compute_dtype: torch.dtype) -> nn.Module:
    """Apply the parallel mode and return the module the loss should call.

    fsdp: `fully_shard` every block of every trainable module, then the module itself (one all-gather per block,
          overlapped with compute). The root model is not sharded, so the frozen base is never all-gathered.
          With bf16, parameters are gathered in bf16 and gradients reduced in fp32.
    ddp:  DistributedDataParallel over the whole model (gradients of parameters with requires_grad are all-reduced;
          at construction DDP also broadcasts rank 0's frozen weights).
    none: the model as is.
    """
    if mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if mode != "fsdp":
        raise ValueError(f"unknown parallel mode {mode!r}; use 'fsdp', 'ddp' or 'none'")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():  # fsdp in a single process: a 1-rank group keeps one code path
        raise ValueError("parallel='fsdp' needs torchrun (a process group); use parallel='none' for one process")
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for name in trainable:
        module = model.get_submodule(name)
        for block in blocks_of(module):
            if block is not module and any(True for _ in block.parameters()):
                fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(module, mesh=mesh, mp_policy=mp)
    return model


def gradient_sync(model: nn.Module, mode: str, sync: bool) -> ContextManager:
    """Context for one micro-step's backward: DDP's gradient all-reduce off for accumulation micro-steps (`no_sync()`),
    on for the last. FSDP2 reduce-scatters on every micro-step: skipping it would keep each rank's gradients whole and
    unsharded until the last one (the full trainable size in fp32 per rank, ~14 GB for a 7B stack), the memory FSDP
    is there to save."""
    if mode == "ddp" and not sync:
        return model.no_sync()
    return nullcontext()
