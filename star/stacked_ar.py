"""Stacked AR: N decoder layers of the base's own architecture, stacked on top of the frozen base.

Data flow: base hidden (B, T, D, after the base's final norm) ─▶ StackedAR ─▶ hidden (B, T, D, after its own final
norm) ─▶ pixel head. It runs over the whole sequence (prompt and image codes) with its own KV cache and the same
position ids as the base.

The module is the base family's own text-decoder class (for Qwen2.5-VL: `Qwen2_5_VLTextModel`) built with N layers
and without token embeddings, so attention, masks, M-RoPE and caching are transformers' code, not a copy. Its state
dict keys (`decoder.layers.{i}.…`, `decoder.norm.weight`) mirror upstream's `stacked_ar.model.layers.{i}.…`.

Initialisation (`StackedARConfig.init`): "copy" clones the base's layers `source_layers` (default: the last N, as
upstream) and the base's final norm from the already-loaded base (the base is never loaded twice); "random" draws
normal(0, initializer_range) weights and unit norms; "identity" copies and then zeroes each layer's output
projections (attention `o_proj`, MLP `down_proj`), so the layers start as the identity on the residual stream and
the module returns its input renormalised (STAR.add_stack sets its final norm to match the module below).
Modified from: upstream MM-MVR/STAR star/models/model.py (which builds a full second Qwen2.5-VL and loads the base
checkpoint again to copy the layers).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from star.base import FrozenBase
from star.config import StackedARConfig


class StackedAR(nn.Module):
    def __init__(self, decoder: nn.Module, config: StackedARConfig):
        super().__init__()
        self.config = config
        self.decoder = decoder

    @classmethod
    def from_base(cls, base: FrozenBase, config: StackedARConfig) -> "StackedAR":
        """Build on the meta device, then materialise on the base's device and dtype (copy or random init)."""
        lm = base.language_model
        start, end = config.source_layers or (base.num_layers - config.num_layers, base.num_layers)
        if end > base.num_layers:
            raise ValueError(f"stacked AR wants base layers [{start}, {end}) but the base has {base.num_layers} "
                             f"layers; lower stacked_ar.num_layers or fix stacked_ar.source_layers")
        text_config = copy.deepcopy(lm.config)
        text_config.num_hidden_layers = config.num_layers
        text_config.layer_types = list(lm.config.layer_types[start:end])
        with torch.device("meta"):
            decoder = type(lm)(text_config)
        del decoder.embed_tokens                      # the stack reads hidden states, never token ids
        if config.init in ("copy", "identity"):
            state = {f"layers.{i}.{k}": v.detach().clone()
                     for i, layer in enumerate(lm.layers[start:end]) for k, v in layer.state_dict().items()}
            state.update({f"norm.{k}": v.detach().clone() for k, v in lm.norm.state_dict().items()})
            decoder.load_state_dict(state, strict=True, assign=True)
        else:
            decoder.to_empty(device=base.device)
            decoder.to(base.dtype)
            _random_init(decoder, std=text_config.initializer_range)
        decoder.rotary_emb = copy.deepcopy(lm.rotary_emb)   # non-persistent buffers; meta-built ones are empty
        decoder.requires_grad_(True)
        if config.init == "identity":
            _zero_output_projections(decoder)
        return cls(decoder, config)

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.decoder.config)

    def forward(self, hidden: Tensor, attention_mask: Tensor, position_ids: Tensor, cache=None) -> Tensor:
        """(B, T, D) -> (B, T, D). attention_mask (B, past + T), position_ids (3, B, T), cache: this stack's own."""
        out = self.decoder(inputs_embeds=hidden, attention_mask=attention_mask, position_ids=position_ids,
                           cache=cache, use_cache=cache is not None)
        return out.last_hidden_state


@torch.no_grad()
def _random_init(module: nn.Module, std: float) -> None:
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif p.ndim == 1:                             # RMSNorm scales
            p.fill_(1.0)
        else:
            p.normal_(0.0, std)


@torch.no_grad()
def _zero_output_projections(decoder: nn.Module) -> None:
    """Each layer's attention o_proj and MLP down_proj to zero: the layer then adds nothing to the residual stream."""
    for layer in decoder.layers:
        for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
            proj.weight.zero_()
            if proj.bias is not None:
                proj.bias.zero_()
