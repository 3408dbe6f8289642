"""The toy stage: a tiny stand-in with STAR's shape of training, used by the trainer's tests and as a smoke run.

    x (B, F) ─▶ adapter (trainable) ─▶ base (FROZEN MLP) ─▶ head (trainable blocks + norm + out) ─▶ logits (B, C)

Like STAR's pixel adapter, the adapter sits *before* the frozen base, so its gradient must pass back through the
frozen layers. Data is synthetic and addressable by sample index (sample i is drawn from a generator seeded by i), so
any position of the stream can be restarted exactly; the label is the argmax of a fixed random teacher projection.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from star.training.config import OptimConfig, TrainConfig, from_dict
from star.training.parallel import micro_batch_ranges


@dataclass(kw_only=True)
class ToyOptions:
    features: int = 16
    """Input features per sample."""
    hidden: int = 32
    """Width of the adapter output, the frozen base and the head."""
    classes: int = 4
    """Number of classes the teacher assigns."""
    depth: int = 2
    """Residual blocks in the trainable head."""
    dropout: float = 0.0
    """Dropout in the head blocks (exercises RNG-state restore on resume)."""
    nonfinite_samples: list[int] = field(default_factory=list)
    """Global sample indices whose inputs are replaced by NaN (exercises the non-finite guard)."""
    step_delay: float = 0.0
    """Seconds each loss call sleeps (lets a test kill a run part-way)."""

    def __post_init__(self):
        for name in ("features", "hidden", "classes", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"stage_options.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"stage_options.dropout must be in [0, 1), got {self.dropout}")
        if self.step_delay < 0:
            raise ValueError(f"stage_options.step_delay must be >= 0, got {self.step_delay}")


class Block(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(F.gelu(self.fc(self.norm(x))))  # (B, D)


class Head(nn.Module):
    def __init__(self, dim: int, classes: int, depth: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))  # (B, C)


class ToyModel(nn.Module):
    def __init__(self, opts: ToyOptions):
        super().__init__()
        self.adapter = nn.Linear(opts.features, opts.hidden)
        self.base = nn.Sequential(nn.Linear(opts.hidden, opts.hidden), nn.GELU(), nn.Linear(opts.hidden, opts.hidden))
        self.head = Head(opts.hidden, opts.classes, opts.depth, opts.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.adapter(x)  # (B, D)
        h = self.base(h.to(self.base[0].weight.dtype)).float()  # frozen, but gradients pass through to the adapter
        return self.head(h)  # (B, C)


class ToyStream:
    """This rank's micro-batches (x (b, F), y (b,)) from a global sample position; counts injected NaN samples."""

    def __init__(self, config: TrainConfig, opts: ToyOptions, rank: int, world_size: int, start_position: int):
        self.opts = opts
        self.seed = config.seed
        self.ranges = micro_batch_ranges(config, rank, world_size, start_position)
        teacher_gen = torch.Generator().manual_seed(1_000_003 + config.seed)
        self.teacher = torch.randn(opts.features, opts.classes, generator=teacher_gen)  # (F, C)
        self.bad = set(opts.nonfinite_samples)
        self.warnings = {"nonfinite_inputs": 0}

    def sample(self, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_000_007 + index)
        return torch.randn(self.opts.features, generator=gen)  # (F,)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        indices = next(self.ranges)
        x = torch.stack([self.sample(i) for i in indices])  # (b, F)
        y = (x @ self.teacher).argmax(dim=-1)  # (b,)
        for row, i in enumerate(indices):
            if i in self.bad:
                x[row] = float("nan")
                self.warnings["nonfinite_inputs"] += 1
        return x, y


class ToyStage:
    name = "toy"
    trainable = ("adapter", "head")
    frozen = ("base",)

    def default_config(self) -> TrainConfig:
        return TrainConfig(
            out_dir="runs/toy",
            steps=60,
            batch_size=16,
            checkpoint_every=20,
            optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=5, weight_decay=0.01),
        )

    def options(self, config: TrainConfig) -> ToyOptions:
        return from_dict(ToyOptions, config.stage_options, "stage_options.")

    def build(self, config: TrainConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
        opts = self.options(config)
        self.step_delay = opts.step_delay
        model = ToyModel(opts)  # initialised from the global RNG, which the trainer has seeded
        model.base.to(dtype).requires_grad_(False)
        return model.to(device)

    def batches(self, config: TrainConfig, rank: int, world_size: int, start_position: int) -> ToyStream:
        return ToyStream(config, self.options(config), rank, world_size, start_position)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x, y = batch
        device = next(model.parameters()).device
        if getattr(self, "step_delay", 0.0):
            time.sleep(self.step_delay)
        logits = model(x.to(device))  # (b, C)
        loss = F.cross_entropy(logits.float(), y.to(device))
        accuracy = (logits.argmax(-1) == y.to(device)).float().mean().item()
        return loss, {"tokens": float(len(y)), "accuracy": accuracy}

    def export(self, model: nn.Module, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("base.")}
        save_file(state, str(out_dir / "trainable.safetensors"))
        (out_dir / "stage.json").write_text(json.dumps({"stage": self.name, "trainable": list(self.trainable)}))
