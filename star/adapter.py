"""Pixel adapter: VQ code vectors -> the base's hidden size, so image codes can be fed to the frozen base.

Data flow: codes (B, N) ─▶ vq.embed ─▶ (B, N, code_dim) ─▶ PixelAdapter ─▶ (B, N, D) ─▶ base input embeddings.
An MLP: Linear(code_dim -> D), then (depth - 1) x [GELU, Linear(D -> D)]. Parameter names (`layers.{0,2,4,...}`)
match upstream's `pixel_adapter.layers.*`, so the converter only renames the prefix.
"""

from __future__ import annotations

from torch import Tensor, nn

from star.config import AdapterConfig


class PixelAdapter(nn.Module):
    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [nn.Linear(config.code_dim, config.hidden_size)]
        for _ in range(config.depth - 1):
            layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        self.layers = nn.Sequential(*layers)

    def forward(self, vectors: Tensor) -> Tensor:
        """(..., code_dim) -> (..., hidden_size), in the adapter's dtype."""
        return self.layers(vectors.to(self.layers[0].weight.dtype))
