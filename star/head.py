"""Pixel head: stacked-AR hidden states -> logits over the VQ codebook.

Data flow: stacked AR hidden (B, N, D) ─▶ PixelHead ─▶ logits (B, N, K).

Two forms (HeadConfig.code_dim):
- 0 (upstream's `pixel_output_head`): one Linear with bias, a free row per code, untied from the adapter.
- > 0 (not upstream): every code is scored through its VQ code vector, logit_k = <query(h), codes(e_k)>, with no
  parameter of its own. A code no training image produced (a held-out colour-class pair's) gets a logit from what
  its vector shares with the codes that were trained, where a free row would only ever be pushed down.
"""

from __future__ import annotations

from torch import Tensor, nn

from star.config import HeadConfig


class PixelHead(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        if config.code_dim:
            self.query = nn.Linear(d, d)
            self.codes = nn.Sequential(nn.Linear(config.code_dim, d), nn.GELU(), nn.Linear(d, d))
        else:
            self.proj = nn.Linear(d, config.codebook_size)

    def keys(self, code_vectors: Tensor) -> Tensor:
        """(K, code_dim) the VQ codebook -> (K, D) one key per code (a code-vector head only)."""
        if not self.config.code_dim:
            raise ValueError("head.code_dim=0: this head has a row per code, not code keys")
        if code_vectors.shape != (self.config.codebook_size, self.config.code_dim):
            raise ValueError(f"head.code_dim={self.config.code_dim}: pass the VQ codebook "
                             f"({self.config.codebook_size}, {self.config.code_dim}), got {tuple(code_vectors.shape)}")
        return self.codes(code_vectors.to(self.query.weight.dtype))

    def forward(self, hidden: Tensor, keys: Tensor | None = None, code_vectors: Tensor | None = None) -> Tensor:
        """(..., D) -> (..., K) logits, in the head's dtype. A code-vector head (config.code_dim > 0) needs its code
        keys: `keys` (K, D) precomputed by `keys(codebook)` (decoding), or the VQ codebook `code_vectors` (K, code_dim)
        to compute them here (training: inside forward, so that FSDP has gathered the head's parameters)."""
        if not self.config.code_dim:
            return self.proj(hidden)
        if keys is None:
            if code_vectors is None:
                raise ValueError(f"head.code_dim={self.config.code_dim}: pass the code keys, head.keys(VQ codebook), "
                                 f"or the codebook as code_vectors")
            keys = self.keys(code_vectors)                                   # (K, D)
        return self.query(hidden) @ keys.T                                   # (..., K)
