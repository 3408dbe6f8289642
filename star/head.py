"""Pixel head: stacked-AR hidden states -> logits over the VQ codebook.

Data flow: stacked AR hidden (B, N, D) ─▶ PixelHead ─▶ logits (B, N, K). One Linear with bias, untied from the
adapter (as upstream's `pixel_output_head`).

With `HeadConfig.copy_source` (editing, not upstream) a gate Linear(D -> 1) reads the same hidden state and adds its
value to the logit of the code the source image has in the cell being predicted:

    logits[b, n, source[b, n]] += gate(hidden[b, n])        source (B, N) codes, -1 where a row has no source

so an edit keeps a cell by opening the gate, whatever the code, and changes it by closing it.
"""

from __future__ import annotations

from torch import Tensor, nn

from star.config import HeadConfig


class PixelHead(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.hidden_size, config.codebook_size)
        if config.copy_source:
            self.copy_gate = nn.Linear(config.hidden_size, 1)
            nn.init.zeros_(self.copy_gate.weight)                  # starts as the plain head
            nn.init.zeros_(self.copy_gate.bias)

    def forward(self, hidden: Tensor, source: Tensor | None = None) -> Tensor:
        """(..., D) -> (..., K) logits, in the head's dtype. `source` (...) long: the source code of each predicted
        cell, -1 where there is none (ignored unless config.copy_source)."""
        logits = self.proj(hidden)
        if not self.config.copy_source or source is None:
            return logits
        has = source >= 0                                                    # (...)
        bonus = self.copy_gate(hidden).to(logits.dtype) * has[..., None]      # (..., 1)
        return logits.scatter_add(-1, source.clamp(min=0)[..., None], bonus)
