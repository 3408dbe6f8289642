"""Pixel adapter: VQ code vectors -> the base's hidden size, so image codes can be fed to the frozen base.

Data flow: codes (B, N) ─▶ vq.embed ─▶ (B, N, code_dim) ─▶ PixelAdapter ─▶ (B, N, D) ─▶ base input embeddings.
An MLP: Linear(code_dim -> D), then (depth - 1) x [GELU, Linear(D -> D)]. Parameter names (`layers.{0,2,4,...}`)
match upstream's `pixel_adapter.layers.*`, so the converter only renames the prefix. With `grid_cells` (not
upstream) a learned embedding of each code's grid cell is added to the MLP's output.
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
        if config.grid_cells:
            self.cells = nn.Embedding(config.grid_cells, config.hidden_size)
            nn.init.zeros_(self.cells.weight)

    def forward(self, vectors: Tensor, cells: Tensor | None = None) -> Tensor:
        """(..., code_dim) -> (..., hidden_size), in the adapter's dtype. `cells` (...) holds each code's grid cell
        (row-major index); it is needed exactly when the adapter has a cell embedding."""
        out = self.layers(vectors.to(self.layers[0].weight.dtype))
        if (cells is not None) != bool(self.config.grid_cells):
            raise ValueError(f"adapter.grid_cells={self.config.grid_cells}: pass each code's cell index exactly when "
                             f"it is > 0 (got cells={'None' if cells is None else tuple(cells.shape)})")
        return out if cells is None else out + self.cells(cells)
