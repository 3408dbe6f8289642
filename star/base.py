"""The frozen base: a HuggingFace vision-language model, loaded with `from_pretrained` and never trained.

Data flow: token ids -> embed_text ─┐
           pixel values -> embed_images (ViT) ─┴▶ forward (all decoder layers + final norm) -> hidden (B, T, D)
           hidden -> the untouched LM head (understanding, through the model's own `generate`)

This is the ONE module that knows where an HF family keeps its parts. `FAMILIES` maps a config's `model_type` to a
`Family` (module paths, image features, rope index); adding another VLM family means adding one entry there. The
rest of STAR talks only to `FrozenBase`.

Written against transformers 5.x (`Qwen2_5_VLForConditionalGeneration` = `.model.language_model` (text decoder with
embed_tokens, layers, norm, rotary_emb), `.model.visual` (ViT + merger), `.lm_head`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Family:
    """Where one HF VLM family keeps its parts, and how it computes positions."""

    model_type: str
    model_class: Callable[[], type]
    """Returns the HF class with `from_pretrained` (imported lazily)."""
    language_model: Callable[[nn.Module], nn.Module]
    """The text decoder: embed_tokens, layers, norm, rotary_emb; forward(inputs_embeds, attention_mask,
    position_ids, cache, use_cache) -> last_hidden_state after the final norm."""
    visual: Callable[[nn.Module], nn.Module]
    lm_head: Callable[[nn.Module], nn.Module]
    image_features: Callable[[nn.Module, Tensor, Tensor], Tensor]
    """(model, pixel_values, image_grid_thw) -> (num_image_tokens, D), images in order."""
    rope_index: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]
    """(model, ids (B, T), attention_mask (B, T), image_grid_thw) -> position ids (3, B, T); image tokens get 3-D."""


def _qwen_image_features(model: nn.Module, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
    out = model.model.get_image_features(pixel_values, grid_thw)
    return torch.cat(out.pooler_output, dim=0)                              # (sum_i t*h*w / merge^2, D)


def _qwen_rope_index(model: nn.Module, ids: Tensor, attention_mask: Tensor, grid_thw: Tensor) -> Tensor:
    mm_token_type_ids = (ids == model.config.image_token_id).int()           # 1 = image token, 0 = text
    positions, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=grid_thw,
                                              attention_mask=attention_mask)
    return positions                                                         # (3, B, T)


def _qwen25_vl_class():
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration


FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family(
        model_type="qwen2_5_vl",
        model_class=_qwen25_vl_class,
        language_model=lambda m: m.model.language_model,
        visual=lambda m: m.model.visual,
        lm_head=lambda m: m.lm_head,
        image_features=_qwen_image_features,
        rope_index=_qwen_rope_index,
    ),
}


def get_family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(f"unknown base family {model_type!r}: STAR supports {sorted(FAMILIES)}. To add a VLM "
                         f"family, register its module paths in star.base.FAMILIES")
    return FAMILIES[model_type]


class FrozenBase(nn.Module):
    """A frozen HF VLM. `requires_grad_(False)` and eval mode are set once here and kept (train() is a no-op)."""

    def __init__(self, hf_model: nn.Module, tokenizer=None, image_processor=None):
        super().__init__()
        self.family = get_family(hf_model.config.model_type)
        self.hf = hf_model
        self.hf.requires_grad_(False)
        self.hf.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, attn_implementation: str | None = None) -> "FrozenBase":
        """Load model, tokenizer and image processor (PIL backend when torchvision is absent) from a local folder."""
        from transformers import AutoImageProcessor, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"base folder {path} has no config.json; pass a local HuggingFace folder such "
                                    f"as Qwen2.5-VL-7B-Instruct or one built by star.tiny_base.build_tiny_base")
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        family = get_family(model_type)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = family.model_class().from_pretrained(path, **kwargs)
        if device is not None:
            model = model.to(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.chat_template is None:
            for name in ("chat_template.json", "chat_template.jinja"):
                if (path / name).is_file():
                    text = (path / name).read_text()
                    tokenizer.chat_template = json.loads(text)["chat_template"] if name.endswith("json") else text
                    break
        image_processor = AutoImageProcessor.from_pretrained(path)
        return cls(model, tokenizer, image_processor)

    @classmethod
    def from_config(cls, config) -> "FrozenBase":
        """Random weights from an HF config (tests; under `torch.device('meta')` for sizing presets)."""
        return cls(get_family(config.model_type).model_class()(config))

    # --- parts -------------------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        return self.family.language_model(self.hf)

    @property
    def text_config(self):
        return self.language_model.config

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def num_layers(self) -> int:
        return len(self.language_model.layers)

    @property
    def lm_head(self) -> nn.Module:
        return self.family.lm_head(self.hf)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def train(self, mode: bool = True) -> "FrozenBase":
        return super().train(False)          # frozen: always eval (no dropout), whatever the parent asks

    # --- inputs ------------------------------------------------------------------
    def embed_text(self, ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, D) token embeddings."""
        return self.language_model.embed_tokens(ids)

    def embed_images(self, pixel_values: Tensor, image_grid_thw: Tensor) -> Tensor:
        """Processor output of several images -> (num_image_tokens, D) ViT tokens (after the merger), in order."""
        return self.family.image_features(self.hf, pixel_values.to(self.device), image_grid_thw.to(self.device))

    def position_ids(self, ids: Tensor, attention_mask: Tensor, image_grid_thw: Tensor | None = None) -> Tensor:
        """Surrogate ids (B, T) -> position ids (3, B, T). Without image tokens: 1-D positions counted from the
        first non-padding token (left padding), broadcast to the three rope sections; with image tokens: the
        family's rope index (3-D positions for the ViT tokens, 1-D continuation for everything else)."""
        if image_grid_thw is not None and bool((ids == self.hf.config.image_token_id).any()):
            return self.family.rope_index(self.hf, ids, attention_mask, image_grid_thw.to(ids.device))
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)     # (B, T)
        return positions[None].expand(3, -1, -1)

    # --- forward -----------------------------------------------------------------
    def forward(self, embeds: Tensor, attention_mask: Tensor, position_ids: Tensor, cache=None,
                layer: int | None = None) -> Tensor:
        """(B, T, D) input embeddings -> (B, T, D) hidden states after all layers and the final norm, or (`layer` =
        k) the output of layer k, before any norm.

        `attention_mask` (B, past + T) marks real tokens (left padding = 0); `position_ids` (3, B, T); `cache` a
        transformers Cache holding this base's keys/values (updated in place) or None.
        """
        if layer is not None and not 1 <= layer < self.num_layers:
            raise ValueError(f"base layer {layer} does not exist below the top: the base has {self.num_layers} "
                             f"layers (use 1..{self.num_layers - 1}, or None for the output after the final norm)")
        with self._only_first(layer):
            out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                      cache=cache, use_cache=cache is not None)
        return out.last_hidden_state

    @contextmanager
    def _only_first(self, layer: int | None):
        """Within the block the language model runs its first `layer` layers and no final norm (the layers above
        are not computed at all); None leaves it whole."""
        if layer is None:
            yield
            return
        lm = self.language_model
        layers, norm = lm.layers, lm.norm
        lm.layers, lm.norm = layers[:layer], nn.Identity()
        try:
            yield
        finally:
            lm.layers, lm.norm = layers, norm

    @torch.no_grad()
    def generate(self, **inputs) -> Tensor:
        """The base's own HF `generate` (understanding and the reasoning answer); the stack is not involved."""
        return self.hf.generate(**inputs)
