"""The decode loop: prefill once, then one step per image code through the base and the stack(s) with their caches.

Data flow: Condition (B rows) ─▶ [with CFG: B cond rows + B null rows] ─▶ STAR.prefill ─▶ logits (R, K)
    repeat num_tokens times:  logits ─▶ apply_cfg ─▶ sample ─▶ code (B,) ─▶ STAR.step(code for cond and null row)
─▶ codes (B, num_tokens), raster order.

Tasks differ only in how the Condition was built (star.chat + STAR.embed); nothing here knows about T2I or editing.
Modified from: upstream MM-MVR/STAR `generate_images*` (three copies of this loop there), LlamaGen / gpt-fast loops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from star.model import STAR, Condition
from star.sampling import apply_cfg, sample


@torch.inference_mode()
def generate_codes(model: STAR, cond: Condition, num_tokens: int, *, guidance_scale: float = 1.0,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   generator: torch.Generator | list[torch.Generator] | None = None,
                   guidance_after_change: float | None = None) -> Tensor:
    """Sample `num_tokens` image codes per row of `cond`. Returns (B, num_tokens) int64.

    With guidance != 1 every row runs next to its null row and the sampled code is shared by the pair;
    guidance_scale == 1 equals the conditional distribution, so the null rows are skipped.
    guidance_after_change (rows with a source of num_tokens codes, i.e. edits): a row's scale from the first code that
    differs from the source's code in its cell on.
    """
    source = _source_codes(cond, num_tokens) if guidance_after_change is not None else None      # (B, N)
    guided = guidance_scale != 1.0 or (source is not None and guidance_after_change != 1.0)
    scale = torch.full((cond.batch_size, 1), float(guidance_scale), device=cond.input_ids.device)  # (B, 1)
    logits, state = model.prefill(cond.with_null() if guided else cond)       # (R, K), R = 2B or B
    codes = []
    for i in range(num_tokens):
        if guided:
            logits = apply_cfg(*logits.float().chunk(2), scale)              # (B, K)
        code = sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)   # (B,)
        if source is not None:
            scale = torch.where((code != source[:, i])[:, None], guidance_after_change, scale)
        codes.append(code)
        if i + 1 < num_tokens:
            logits, state = model.step(code.repeat(2) if guided else code, state)
    return torch.stack(codes, dim=1)                                          # (B, num_tokens)


def _source_codes(cond: Condition, num_tokens: int) -> Tensor:
    """(B, N) the source codes of each row, in the target's cells; an error for rows without a source."""
    if cond.source_codes is None or cond.source_codes.numel() != cond.batch_size * num_tokens:
        got = None if cond.source_codes is None else tuple(cond.source_codes.shape)
        raise ValueError(f"guidance_after_change needs a source image of {num_tokens} codes per row (an edit); "
                         f"got source codes {got} for {cond.batch_size} rows")
    return cond.source_codes.reshape(cond.batch_size, num_tokens)
