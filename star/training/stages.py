"""What a training stage is (the `Stage` protocol) and which stages exist (`STAGES`).

A stage is data, not a loop: it names the modules that train and the ones that stay frozen, builds the model, streams
batches from a saved position, computes the loss and exports what it trained. `star.training.trainer.train` runs
every stage with the same loop, on one CPU process or on many GPUs under torchrun.

Contract details the trainer relies on:
- `build` returns the model with frozen parts already frozen (`requires_grad_(False)`); every parameter must sit under
  exactly one name in `trainable` or `frozen`. Trainable parameters are float32 (autocast does the bf16 math).
  `build` must be deterministic given `config.seed` (the trainer seeds torch/numpy/random first): every rank builds the
  same weights, and the export path may build the model a second time.
- Trainable modules must be *called* (`module(x)`), not have their weights read directly: FSDP2 gathers a module's
  shards in a forward hook. Under FSDP2 or DDP every rank must call them on every micro-step, whatever its batch holds.
- Optional attribute `recompute` (dotted names, set by `build`): frozen modules that gradients flow through (the base
  when the adapter trains); with `activation_checkpointing` their blocks are recomputed in backward too.
- `batches` yields this rank's micro-batches in order, starting at `start_position`, the number of samples of the
  global stream already consumed (world-size independent; `parallel.micro_batch_ranges` gives the index ranges).
  Restarting at the same position must give the same batches: that is what makes resume exact, so draw any
  randomness (shuffles, augmentation) from `config.seed` and the sample index, never from the global RNG.
  The returned iterator may expose `warnings: dict[str, int]` (cumulative data-problem counts, e.g. skipped
  records); they are summed over ranks and logged.
- `loss` returns a scalar loss (mean over the micro-batch) and a dict of float metrics. The metric `tokens` (if
  present) is the number of tokens in the micro-batch and drives the tokens/s figure; other metrics are averaged over
  micro-steps and ranks and logged. The metric keys must be the same on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from star.training.config import TrainConfig


@runtime_checkable
class Stage(Protocol):
    name: str
    """Registry name, also recorded in checkpoints (resuming with another stage is refused)."""
    trainable: tuple[str, ...]
    """Dotted names of the submodules that train (FSDP2 shards exactly these)."""
    frozen: tuple[str, ...]
    """Dotted names of the submodules that stay frozen (hashed, never checkpointed, replicated on every rank)."""

    def default_config(self) -> TrainConfig:
        """The stage's recipe: schedule, batch size and stage_options defaults."""
        ...

    def build(self, config: TrainConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """The model on `device`, frozen parts frozen; `dtype` is the compute dtype (frozen weights may use it)."""
        ...

    def batches(self, config: TrainConfig, rank: int, world_size: int, start_position: int) -> Iterator[Any]:
        """This rank's micro-batches from global sample `start_position` on (an endless or long-enough stream)."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss, metrics) for one micro-batch; `model` may be wrapped (DDP) or sharded (FSDP2)."""
        ...

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """Write the trained parts (e.g. save_pretrained); `model` is a plain, unsharded module."""
        ...


def _toy() -> Stage:
    from star.training.toy import ToyStage

    return ToyStage()


def _vq() -> Stage:
    from star.training.stage_vq import VQStage

    return VQStage()


def _understanding() -> Stage:
    from star.training.stage_understanding import UnderstandingStage

    return UnderstandingStage()


def _generation() -> Stage:
    from star.training.stage_generation import GenerationStage

    return GenerationStage("generation")


def _editing() -> Stage:
    from star.training.stage_generation import GenerationStage

    return GenerationStage("editing")


# name -> factory; factories import lazily so `star train X` never imports another stage's model code.
#
# | stage         | trains                                   | frozen                     | data                    |
# |---------------|------------------------------------------|----------------------------|-------------------------|
# | understanding | the base VLM (ViT + LM + LM head)        | -                          | vqa, caption, text_qa   |
# | vq            | the tokenizer (encoder, codebook, dec.)  | -                          | images                  |
# | generation    | top stack, pixel adapter, pixel head     | base, VQ                   | t2i                     |
# | editing       | top stack (a new one with new_stack),    | base, VQ, earlier stacks   | edit + t2i              |
# |               | adapter (train_adapter), head            |                            |                         |
# | toy           | adapter, head                            | a random MLP               | synthetic               |
STAGES: dict[str, Callable[[], Stage]] = {
    "understanding": _understanding,
    "vq": _vq,
    "generation": _generation,
    "editing": _editing,
    "toy": _toy,
}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; available stages: {sorted(STAGES)}")
    stage = STAGES[name]()
    if not isinstance(stage, Stage):
        raise TypeError(f"stage {name!r} does not implement the Stage protocol (star/training/stages.py)")
    return stage
