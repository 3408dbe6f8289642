"""Pixel head: stacked-AR hidden states -> logits over the VQ codebook.

Data flow: stacked AR hidden (B, N, D) ─▶ PixelHead ─▶ logits (B, N, K). One Linear with bias, untied from the
adapter (as upstream's `pixel_output_head`).
"""

from __future__ import annotations

from torch import Tensor, nn

from star.config import HeadConfig


class PixelHead(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.hidden_size, config.codebook_size)

    def forward(self, hidden: Tensor) -> Tensor:
        """(..., D) -> (..., K) logits, in the head's dtype."""
        return self.proj(hidden)
