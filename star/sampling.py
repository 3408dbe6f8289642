"""Sampling: pure functions from code logits to codes (no model, no state).

Data flow: head logits (B, K) ─▶ apply_cfg (cond/null rows) ─▶ temperature ─▶ top-k ─▶ top-p ─▶ sample ─▶ codes (B,)

Randomness comes only from the `generator` argument: one torch.Generator for the batch, or a list with one per row
(row i then depends only on generator i, so a row of a batch equals a solo run seeded the same way). Sampling uses
the exponential-race form of a categorical draw, argmax(p / E) with E ~ Exp(1), which needs no host sync.
Unlike upstream (which hard-codes temperature 1.0), `temperature` is applied; 0 means greedy.
"""

from __future__ import annotations

import torch
from torch import Tensor


def apply_cfg(cond: Tensor, uncond: Tensor, scale: float | Tensor) -> Tensor:
    """Classifier-free guidance on logits: uncond + scale * (cond - uncond). (B, K), (B, K), scale () or (B, 1)."""
    return uncond + scale * (cond - uncond)


def filter_top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits per row (ties at the k-th value kept), others -> -inf; k <= 0 or k >= K: unchanged."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]                      # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the most likely codes until their probability reaches p (at least one); p >= 1: off."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs                                     # (B, K) probability of better codes
    remove_sorted = mass_before > p
    remove = remove_sorted.scatter(-1, order, remove_sorted)                   # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def _exponential_noise(shape: tuple[int, int], generator, device: torch.device) -> Tensor:
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for {shape[0]} rows; pass one per row or a single one")
        rows = [torch.empty(shape[1], device=g.device).exponential_(generator=g) for g in generator]
        return torch.stack(rows).to(device)
    dev = generator.device if generator is not None else device
    return torch.empty(shape, device=dev).exponential_(generator=generator).to(device)


def sample(logits: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | list[torch.Generator] | None = None) -> Tensor:
    """(B, K) logits -> (B,) int64 codes. temperature 0 = greedy; otherwise softmax(logits / T) after top-k, top-p."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_top_p(filter_top_k(logits / temperature, top_k), top_p)
    probs = logits.softmax(-1)                                                 # (B, K), zeros where filtered
    noise = _exponential_noise(tuple(probs.shape), generator, probs.device)
    return (probs / noise).argmax(-1)
