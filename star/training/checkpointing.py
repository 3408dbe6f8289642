"""Checkpoints (atomic, trainable-only, sharded with torch.distributed.checkpoint) and frozen-weight fingerprints.

One code path for one process and for many: the model and optimizer state go through `get_state_dict` and DCP
(`dcp.save` runs without a process group when there is none), so an FSDP2 run saves shards and can resume on a
different number of ranks. Layout of one checkpoint:

    checkpoints/step_00001000/
        state/                    DCP: trainable parameters (frozen ones are never stored), AdamW moments
        rng_rank{r}.pt            python / numpy / torch (+ CUDA) RNG states of rank r
        trainer_state.json        step, data position, skip counters, stage name, frozen-weight SHA-256, config

A checkpoint is written to `step_XXXXXXXX.tmp/`, `trainer_state.json` last, and only then renamed into place, so a
process killed at any moment leaves either the previous checkpoints or a complete new one (plus a `.tmp` folder that
the next start deletes). The learning-rate schedule is a pure function of the step and needs no state of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from star.training.parallel import Dist, barrier

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


# -----------------------------------------------------------------------------
# Frozen-weight fingerprints


def is_under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def frozen_tensors(model: nn.Module, frozen: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of the frozen modules, by full name."""
    out = {}
    for name in frozen:
        for key, tensor in model.get_submodule(name).state_dict(keep_vars=True).items():
            out[f"{name}.{key}"] = tensor
    return out


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and raw bytes (device-independent)."""
    t = tensor.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def frozen_hashes(model: nn.Module, frozen: tuple[str, ...]) -> dict[str, str]:
    return {k: tensor_sha256(t) for k, t in frozen_tensors(model, frozen).items()}


def verify_frozen(model: nn.Module, frozen: tuple[str, ...], expected: dict[str, str], when: str) -> None:
    """Raise if any frozen tensor differs from its recorded hash (or the set of frozen tensors changed)."""
    actual = frozen_hashes(model, frozen)
    changed = sorted(k for k in expected.keys() & actual.keys() if expected[k] != actual[k])
    missing, extra = sorted(expected.keys() - actual.keys()), sorted(actual.keys() - expected.keys())
    if changed or missing or extra:
        raise RuntimeError(
            f"frozen weights changed ({when}): changed={changed[:5]} missing={missing[:5]} new={extra[:5]} "
            f"({len(changed)} changed, {len(missing)} missing, {len(extra)} new). Frozen modules must not train: "
            "check that the stage sets requires_grad_(False) on them, keeps them out of the optimizer, and that no "
            "code writes to them in place (e.g. BatchNorm running stats in train mode)."
        )


# -----------------------------------------------------------------------------
# RNG states


def rng_state() -> dict[str, Any]:
    """All global RNG states of this process, as tensors/tuples that `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()    # this rank's device only: a resume may see other devices
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):           # older checkpoints: every visible device's state, by index
            device = torch.cuda.current_device()
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


# -----------------------------------------------------------------------------
# Atomic files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -----------------------------------------------------------------------------
# Save / load


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer, frozen: tuple[str, ...]) -> dict[str, Any]:
    """The model (trainable parameters, buffers of trainable modules) and optimizer state, keyed by clean FQNs."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    model_sd = {k: v for k, v in model_sd.items() if not is_under(k, frozen)}  # frozen modules' buffers too
    return {"model": model_sd, "optim": optim_sd}


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns that it 'assumes a single process' when there is no process group: that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (with trainer_state.json), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def clean_partial(root: Path) -> None:
    """Delete leftovers of interrupted saves/prunes (`*.tmp`, `*.trash`). Call on rank 0 before anyone saves."""
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and (p.name.endswith(".tmp") or p.name.endswith(".trash")):
                shutil.rmtree(p, ignore_errors=True)


def save(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    frozen: tuple[str, ...],
    trainer_state: dict[str, Any],
    env: Dist,
    keep: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `step` atomically on every rank (a collective), then keep only the newest `keep`.

    `extra` maps names to dicts of tensors saved next to the model (e.g. {"ema": averages}); `load` restores them in
    place."""
    import torch.distributed.checkpoint as dcp

    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(env)
    with _single_process_quiet():
        dcp.save({**_dcp_state(model, optimizer, frozen), **(extra or {})}, checkpoint_id=tmp / "state",
                 no_dist=not dist.is_initialized())
    rng_path = tmp / f"rng_rank{env.rank}.pt"
    with open(rng_path, "wb") as f:
        torch.save(rng_state(), f)
        f.flush()
        os.fsync(f.fileno())
    barrier(env)
    if env.is_main:
        write_json_atomic(tmp / STATE_FILE, trainer_state)  # its presence marks the checkpoint complete
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume): move the old one aside first
            trash = final.with_name(final.name + ".trash")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(root)[:-keep]:
            trash = old.with_name(old.name + ".trash")
            os.replace(old, trash)  # renamed first: a half-deleted folder never looks like a checkpoint
            shutil.rmtree(trash, ignore_errors=True)
    barrier(env)
    return final


def read_trainer_state(path: Path) -> dict[str, Any]:
    with open(path / STATE_FILE) as f:
        return json.load(f)


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, frozen: tuple[str, ...], env: Dist,
         extra: dict[str, Any] | None = None) -> dict:
    """Restore model, optimizer, `extra` (in place) and (when the world size matches) this rank's RNG state; return
    trainer_state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _dcp_state(model, optimizer, frozen)  # the right keys, shapes and shardings to load into
    state.update(extra or {})
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=path / "state", no_dist=not dist.is_initialized())
    except Exception as exc:
        raise RuntimeError(
            f"could not load {path / 'state'}: {exc}\nThe checkpoint must come from the same stage and model "
            "configuration (the trainable modules' names and shapes must match)."
        ) from exc
    result = set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=StateDictOptions(strict=False),
    )
    missing = [k for k in result.missing_keys if not is_under(k, frozen)]
    if missing or result.unexpected_keys:
        raise KeyError(f"checkpoint {path} mismatch: missing={missing[:5]} unexpected={result.unexpected_keys[:5]}")
    trainer_state = read_trainer_state(path)
    rng_path = path / f"rng_rank{env.rank}.pt"
    if trainer_state.get("world_size") == env.world_size and rng_path.is_file():
        set_rng_state(torch.load(rng_path, weights_only=True))
    else:
        seed_everything(int(trainer_state["config"]["seed"]) + env.rank + int(trainer_state["step"]))
        if env.is_main:
            why = (f"was written by {trainer_state.get('world_size')} ranks, resuming on {env.world_size}; model and "
                   f"optimizer are resharded" if trainer_state.get("world_size") != env.world_size
                   else f"has no {rng_path.name}")
            print(f"note: checkpoint {why}; RNG streams are reseeded (dropout differs from an unbroken run)")
    return trainer_state


def full_trainable_state(model: nn.Module, frozen: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Unsharded trainable state on CPU, on rank 0 (empty elsewhere). A collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return {k: v for k, v in get_model_state_dict(model, options=options).items() if not is_under(k, frozen)}
