"""Exponential moving average of the trainable weights (`TrainConfig.ema_decay > 0`).

After every optimizer update that is not skipped: ema <- ema + (1 - d) * (param - ema), with the decay ramping up
as d = min(ema_decay, (1 + n) / (10 + n)) over the n updates so far, so early weights do not linger. The averages
have the parameters' own dtype (fp32) and sharding (DTensor shards under FSDP2); they are saved in every checkpoint
(DCP, next to the model) with the update count, and at the end of the run they replace the trained weights before
`stage.export`. research/feasibility2.md found EMA weights with greedy decoding best for the ShapeWorld model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.decay_at(self.updates)
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach(), weight)
        self.updates += 1

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for name, p in self.params.items():
            p.copy_(self.shadow[name])

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averages in the model for the duration (a mid-run snapshot); the trained weights come back after."""
        trained = {name: p.detach().clone() for name, p in self.params.items()}
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(trained[name])
