"""Typed configuration for the trainer: `OptimConfig` (AdamW + schedule) and `TrainConfig` (everything else).

Every field has a type, a default and one docstring line; `__post_init__` validates with the field's name.
A config round-trips through JSON (`to_dict` / `from_dict`), and `apply_overrides(config, ["optim.lr=1e-4"])`
implements the CLI's `--set key=value`. Stage-specific knobs live in `TrainConfig.stage_options`, a plain dict each
stage validates itself (a stage is data; the trainer does not know its fields).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

Parallel = Literal["auto", "fsdp", "ddp", "none"]
Precision = Literal["auto", "bf16", "fp32"]


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate, reached at the end of warm-up."""
    min_lr: float = 3e-5
    """Learning rate at the end of the cosine decay (and after it)."""
    warmup_steps: int = 100
    """Optimizer steps of linear warm-up from lr/warmup_steps to lr."""
    decay_steps: int | None = None
    """Step at which the cosine reaches min_lr; None means the run's total `steps`."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied only to parameters with 2+ dims (never to norms, biases, 1-D params)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient L2 norm to this value; 0 disables clipping (the norm is still measured and logged)."""

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)  # JSON gives a list
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr must be in [0, optim.lr={self.lr}], got {self.min_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay_steps is not None and self.decay_steps <= 0:
            raise ValueError(f"optim.decay_steps must be > 0 or None, got {self.decay_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.eps <= 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")


@dataclass(kw_only=True)
class TrainConfig:
    out_dir: str = "runs/train"
    """Run folder: config.json, log.jsonl, loss.png, checkpoints/step_XXXXXXXX/, export/."""
    steps: int = 1000
    """Total optimizer steps of the run (a resumed run continues up to this number)."""
    time_budget_s: float = 0.0
    """Wall-clock seconds the run may take, build and export included (0 = no limit; star/training/budget.py). The
    trainer times the first steps (up to `optim.warmup_steps`, at most 50, while the learning rate does not yet
    depend on the run's length) and then lowers `steps`, never raises it, to what fits; the cosine schedule spans the
    shortened run. Every 5 steps after that it projects the end from the recent pace (the slower of the last 10
    steps' median time and the wall clock per step over the last 50, checkpoints and snapshots included) and, if that
    end lies past the budget, shortens the run again (the schedule then ends at the new end). Decisions and the time
    spent are kept in the checkpoints: a resumed run trains the steps decided and counts the time its earlier
    processes spent up to their last checkpoint."""
    batch_size: int = 32
    """Global batch: samples per optimizer step, summed over ranks and accumulation micro-steps."""
    grad_accum: int = 1
    """Micro-steps per optimizer step on each rank; micro-batch = batch_size / (world_size * grad_accum)."""
    seed: int = 0
    """Seed for model construction (same on every rank); rank r trains with seed + r (dropout etc.)."""
    device: str = "auto"
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda' (cuda:LOCAL_RANK under torchrun) or any torch device."""
    precision: Precision = "auto"
    """'auto' = bf16 autocast on CUDA, fp32 elsewhere; 'bf16' or 'fp32' force it. Trainable weights stay fp32."""
    parallel: Parallel = "auto"
    """'fsdp' (FSDP2 fully_shard on the trainable modules), 'ddp', 'none'; 'auto' = fsdp when WORLD_SIZE > 1."""
    activation_checkpointing: bool = False
    """Recompute the trainable modules' blocks in backward instead of storing their activations."""
    collective_timeout_min: float = 30.0
    """Under torchrun: how long a collective may wait (torch's default is 10 min for NCCL), e.g. the other ranks at
    the barrier while rank 0 writes a 7B export."""
    checkpoint_every: int = 500
    """Save a checkpoint every this many steps (and always at the last step); 0 = only at the last step."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep on disk."""
    resume: bool = False
    """Continue from the newest complete checkpoint in out_dir/checkpoints (start fresh if there is none)."""
    log_every: int = 1
    """Write a JSONL record (and refresh the progress bar) every this many steps."""
    max_consecutive_nonfinite: int = 5
    """Abort after this many consecutive steps whose loss or gradient norm was NaN/inf (each such step is skipped)."""
    progress: bool = True
    """Show a tqdm progress bar on rank 0."""
    export: bool = True
    """At the end, call stage.export(model, out_dir/export) on rank 0."""
    snapshot_every: int = 0
    """Also export the (EMA) weights to out_dir/snapshots/step_XXXXXXXX every this many steps (0 = never): model
    folders to evaluate for a learning curve (scripts/learning_curve.py). Kept, unlike checkpoints."""
    ema_decay: float = 0.0
    """EMA of the trainable weights (0 = off): kept and checkpointed during the run, exported instead of the raw
    weights; the decay ramps as min(ema_decay, (1 + n) / (10 + n)) over the n updates (star/training/ema.py)."""
    stage_options: dict[str, Any] = field(default_factory=dict)
    """Stage-specific settings (data paths, model preset, ...), validated by the stage itself."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = from_dict(OptimConfig, self.optim)
        if not self.out_dir:
            raise ValueError("out_dir must be a non-empty path")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints", "max_consecutive_nonfinite"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0 = only at the end), got {self.checkpoint_every}")
        if not self.collective_timeout_min > 0:
            raise ValueError(f"collective_timeout_min must be > 0, got {self.collective_timeout_min}")
        if self.time_budget_s < 0:
            raise ValueError(f"time_budget_s must be >= 0 (0 = no limit), got {self.time_budget_s}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0 (0 = never), got {self.snapshot_every}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}; "
                "batch_size is the global batch, split into grad_accum micro-steps on each rank"
            )
        for name in ("precision", "parallel"):
            allowed = typing.get_args(Precision if name == "precision" else Parallel)
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if not isinstance(self.stage_options, dict):
            raise ValueError(f"stage_options must be a dict, got {type(self.stage_options).__name__}")

    def micro_batch_size(self, world_size: int) -> int:
        """Samples per micro-step on one rank; raises if the global batch does not split evenly."""
        parts = world_size * self.grad_accum
        if self.batch_size % parts:
            raise ValueError(
                f"batch_size={self.batch_size} does not split over world_size={world_size} x grad_accum="
                f"{self.grad_accum} = {parts} micro-batches; choose a batch_size that is a multiple of {parts}"
            )
        return self.batch_size // parts

    def total_decay_steps(self) -> int:
        return self.optim.decay_steps or self.steps


# -----------------------------------------------------------------------------
# JSON round trip and --set overrides


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    out = dataclasses.asdict(config)
    return json.loads(json.dumps(out))  # tuples -> lists, so the dict equals what JSON gives back


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a field annotation; convert only lossless JSON cases (int -> float, list -> tuple)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        return value if isinstance(value, annotation) else from_dict(annotation, value, f"{where}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ValueError:
                pass
        raise ValueError(f"{where}: {value!r} does not match {annotation}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {args}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0] if args else Any, where) for v in value)
    if origin in (dict, list):
        if not isinstance(value, origin):
            raise ValueError(f"{where}: expected a {origin.__name__}, got {value!r}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and (type(value) is not annotation):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build a config dataclass from a dict, refusing unknown keys (with the list of known ones)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where.rstrip('.') or cls.__name__}: expected an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise KeyError(f"unknown {cls.__name__} key(s) {unknown}; known keys: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    """`--set` values are JSON when they parse as JSON (numbers, true/false, null, lists, objects), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: TrainConfig, overrides: list[str], label: str = "") -> TrainConfig:
    """Return a new config with `key.sub=value` overrides applied and every field re-validated.

    `stage_options.<name>=value` sets a stage option (stage options are free-form, so any name is accepted here and
    checked by the stage). `label` prefixes the key in error messages (a recipe's `generation.`).
    """
    data = to_dict(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value (e.g. optim.lr=1e-4), got {item!r}")
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise KeyError(f"--set {label}{key}: {'.'.join(parts[: i + 1])!r} is not a config section")
            node = node[part]
        free_form = parts[0] == "stage_options"
        if not free_form and parts[-1] not in node:
            raise KeyError(f"--set {label}{key}: unknown key {parts[-1]!r}; known: {sorted(node)}")
        node[parts[-1]] = _parse_value(text)
    return from_dict(TrainConfig, data, label)


def merge_json(config: TrainConfig, data: dict[str, Any]) -> TrainConfig:
    """Overlay a (possibly partial) JSON object onto a config; nested sections merge key by key."""

    def merge(base: dict, extra: dict) -> dict:
        out = dict(base)
        for k, v in extra.items():
            out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return out

    return from_dict(TrainConfig, merge(to_dict(config), data))
