"""Typed configuration of the STAR model and its presets (`star-3b`, `star-7b`).

`STARConfig` is what goes next to the trained weights as `config.json`. It names the base folder and the VQ
folder (the frozen parts are referenced, never copied) and sizes the trained parts: the stacked AR module(s), the
pixel adapter and the pixel head. Runtime things (device, dtype, tokenizer) are arguments, never fields.

Presets carry the upstream sizes (research/paper.md §2.1) and the architecture of the Qwen2.5-VL base they stack
on (`BASE_ARCHITECTURES`), so a preset can be instantiated on the meta device without any download.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args


def _from_dict(cls, d: dict[str, Any], where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise KeyError(f"unknown {where} fields {unknown}; known fields are {sorted(known)}")
    return cls(**d)


StackInit = Literal["copy", "random", "identity"]
STACK_INITS: tuple[str, ...] = get_args(StackInit)


@dataclass(kw_only=True)
class StackedARConfig:
    """One stacked AR module: decoder layers of the base's architecture on top of the frozen base."""

    num_layers: int = 16
    """Decoder layers in this module (upstream: 16 on Qwen2.5-VL-3B, 14 on 7B)."""
    init: StackInit = "copy"
    """"copy": weights of `source_layers` of the base (and its final norm); "random": normal(0, initializer_range);
    "identity": "copy" with every layer's output projections at zero, so each layer adds nothing to the residual
    stream at the start (block expansion; for a module stacked on another, `STAR.add_stack`)."""
    source_layers: tuple[int, int] | None = None
    """Base layer range [start, end) to copy; None = the base's last `num_layers` layers (upstream)."""

    def __post_init__(self):
        if self.num_layers <= 0:
            raise ValueError(f"stacked_ar.num_layers must be > 0, got {self.num_layers}")
        if self.init not in STACK_INITS:
            raise ValueError(f"stacked_ar.init must be one of {STACK_INITS}, got {self.init!r}")
        if self.source_layers is not None:
            start, end = (int(v) for v in self.source_layers)
            if not 0 <= start < end or end - start != self.num_layers:
                raise ValueError(f"stacked_ar.source_layers must be [start, end) with end - start = num_layers "
                                 f"({self.num_layers}), got {list(self.source_layers)}")
            self.source_layers = (start, end)


@dataclass(kw_only=True)
class AdapterConfig:
    """Pixel adapter: code vectors (code_dim) -> base hidden size, an MLP with GELU between Linear layers."""

    code_dim: int = 512
    """Input width: the VQ's code vector dimension."""
    hidden_size: int = 2048
    """Output width: the base's hidden size."""
    depth: int = 2
    """Linear layers (upstream: 2 on 3B, 4 on 7B); GELU between consecutive ones."""
    grid_cells: int = 0
    """Codes per image that get a learned embedding of their grid cell (row-major index), added to the adapter's
    output: the 2-D position that the 1-D RoPE of the code sequence does not give. 0 = none (upstream). The table
    starts at zero, so a model gains it without changing its output."""

    def __post_init__(self):
        for name in ("code_dim", "hidden_size", "depth"):
            if getattr(self, name) <= 0:
                raise ValueError(f"adapter.{name} must be > 0, got {getattr(self, name)}")
        if self.grid_cells < 0:
            raise ValueError(f"adapter.grid_cells must be >= 0 (0 = no cell embedding), got {self.grid_cells}")


@dataclass(kw_only=True)
class HeadConfig:
    """Pixel head: Linear(hidden_size -> codebook_size) with bias, untied from the adapter (upstream), or, with
    code_dim > 0, codes scored through their VQ code vectors (star.head)."""

    hidden_size: int = 2048
    """Input width: the base's hidden size."""
    codebook_size: int = 65536
    """Output width: number of VQ codes."""
    code_dim: int = 0
    """0: a free output row per code (upstream). > 0: the VQ's code-vector width; each code's logit is computed from
    its code vector, so codes no training image produced are not simply pushed down."""

    def __post_init__(self):
        for name in ("hidden_size", "codebook_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"head.{name} must be > 0, got {getattr(self, name)}")
        if self.code_dim < 0:
            raise ValueError(f"head.code_dim must be >= 0 (0 = a free row per code), got {self.code_dim}")


@dataclass(kw_only=True)
class SamplingConfig:
    """Default sampling settings of a model (the pipeline's arguments override them)."""

    guidance_scale: float = 1.1
    """Classifier-free guidance on logits: uncond + scale * (cond - uncond); 1.0 = off (no null rows)."""
    top_k: int = 1000
    """Keep the k most likely codes; 0 = no top-k filter."""
    top_p: float = 0.8
    """Keep the smallest set of codes whose probability reaches p; 1.0 = no nucleus filter."""
    temperature: float = 1.0
    """Logits are divided by it; 0 = greedy (argmax)."""
    guidance_after_change: float | None = None
    """Editing: a row's CFG scale once one of its decoded codes differs from the source's code in that cell (the edit
    has started); None = guidance_scale throughout. Guidance has to start an edit against the pull to copy the
    source; kept on at full strength it draws the edit again elsewhere (not upstream)."""

    def __post_init__(self):
        check_sampling(self.guidance_scale, self.top_k, self.top_p, self.temperature, self.guidance_after_change)


def check_sampling(guidance_scale: float, top_k: int, top_p: float, temperature: float,
                   guidance_after_change: float | None = None) -> None:
    if not 0 <= guidance_scale < math.inf:                   # also refuses nan
        raise ValueError(f"guidance_scale must be >= 0 and finite, got {guidance_scale}")
    if guidance_after_change is not None and not 0 <= guidance_after_change < math.inf:
        raise ValueError(f"guidance_after_change must be >= 0 and finite, or None, got {guidance_after_change}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be >= 0 and finite (0 = greedy), got {temperature}")


@dataclass(kw_only=True)
class STARConfig:
    """The whole STAR model: references to the frozen parts and sizes of the trained parts."""

    base: str = ""
    """Folder of the frozen HF base (e.g. Qwen2.5-VL-7B-Instruct); relative paths resolve against the model folder."""
    vq: str = ""
    """VQ tokenizer: a folder (VQModel.save_pretrained), relative paths resolve against the model folder."""
    family: str = "qwen2_5_vl"
    """HF model_type of the base (a key of star.base.FAMILIES)."""
    hidden_size: int = 2048
    """The base's hidden size (checked against the loaded base)."""
    base_layer: int | None = None
    """Base hidden state the first stack reads: None = the last layer's, after the base's final norm (upstream);
    k = the output of base layer k (1 <= k < layers), before any norm: the stack branches off the base there."""
    stacks: list[StackedARConfig] = field(default_factory=lambda: [StackedARConfig()])
    """Stacked AR modules, bottom to top; more than one = progressive stacking (earlier ones frozen)."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    """Pixel adapter (code vectors -> hidden)."""
    head: HeadConfig = field(default_factory=HeadConfig)
    """Pixel head (hidden -> code logits)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Default sampling settings for this model."""
    edit_sampling: SamplingConfig | None = None
    """Default sampling settings for editing; None = `sampling` (a copying task may want other settings than T2I)."""
    cfg_dropout: float = 0.1
    """Training: probability that a row's prompt is replaced by its CFG null row."""
    max_prompt_tokens: int = 512
    """Longest accepted prompt (chat template included), in tokens."""
    edit_code_positions: str = "continue"
    """Positions of an edit's generated codes: "continue" = 1-D after the prompt (upstream); "source" = source code
    i's position + max_prompt_tokens, so each target code lies at one fixed distance from the source code in its
    place whatever the instruction's length (copying is then a single relative offset to learn; not upstream)."""
    edit_source_hint: bool = False
    """Editing: add a learned map of source code i's vector to the stack's input at the position that predicts
    target code i, so each cell being drawn sees what the source holds there (not upstream; needs a source of the
    target's grid)."""
    edit_vit_max_tokens: int | None = None
    """Editing: most ViT tokens for the source image (upstream: 576); None = the base image processor's budget."""
    edit_vit_min_tokens: int | None = None
    """Editing: fewest ViT tokens for the source image (upstream: 16); None = the image processor's budget."""
    understand_vit_max_tokens: int | None = None
    """Understanding: most ViT tokens per image (upstream: 1024); None = the image processor's budget."""

    def __post_init__(self):
        self.stacks = [s if isinstance(s, StackedARConfig) else _from_dict(StackedARConfig, s, "stacked_ar")
                       for s in self.stacks]
        if isinstance(self.adapter, dict):
            self.adapter = _from_dict(AdapterConfig, self.adapter, "adapter")
        if isinstance(self.head, dict):
            self.head = _from_dict(HeadConfig, self.head, "head")
        if isinstance(self.sampling, dict):
            self.sampling = _from_dict(SamplingConfig, self.sampling, "sampling")
        if isinstance(self.edit_sampling, dict):
            self.edit_sampling = _from_dict(SamplingConfig, self.edit_sampling, "edit_sampling")
        if not self.stacks:
            raise ValueError("stacks must hold at least one StackedARConfig")
        if self.hidden_size <= 0:
            raise ValueError(f"hidden_size must be > 0, got {self.hidden_size}")
        if self.base_layer is not None and self.base_layer < 1:
            raise ValueError(f"base_layer must be >= 1 (a base layer's output) or None (after the final norm), "
                             f"got {self.base_layer}")
        for name in ("adapter", "head"):
            if getattr(self, name).hidden_size != self.hidden_size:
                raise ValueError(f"{name}.hidden_size={getattr(self, name).hidden_size} differs from "
                                 f"hidden_size={self.hidden_size} (the base's width)")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if self.edit_code_positions not in ("continue", "source"):
            raise ValueError(f"edit_code_positions must be 'continue' or 'source', got {self.edit_code_positions!r}")
        if self.max_prompt_tokens <= 0:
            raise ValueError(f"max_prompt_tokens must be > 0, got {self.max_prompt_tokens}")
        for name in ("edit_vit_max_tokens", "edit_vit_min_tokens", "understand_vit_max_tokens"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {getattr(self, name)}")

    def default_sampling(self, task: str) -> SamplingConfig:
        """The sampling a task uses when the caller gives none: `edit_sampling` for "edit" when set, else `sampling`."""
        return self.edit_sampling if task == "edit" and self.edit_sampling is not None else self.sampling

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for s in d["stacks"]:
            s["source_layers"] = list(s["source_layers"]) if s["source_layers"] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "STARConfig":
        return _from_dict(cls, dict(d), "STARConfig")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "STARConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a STAR model folder holds config.json and model.safetensors "
                                    f"(written by STAR.save_pretrained or `star convert-upstream`)")
        return cls.from_dict(json.loads(path.read_text()))


# -----------------------------------------------------------------------------
# Presets: upstream sizes (research/paper.md §2.1) and the HF architecture of their bases

_QWEN25_VL_VISION = dict(depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420, num_heads=16,
                         in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                         fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
_QWEN25_VL_TEXT = dict(hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6,
                       rope_parameters=dict(rope_type="default", rope_theta=1_000_000.0, mrope_section=[16, 24, 24]),
                       bos_token_id=151643, eos_token_id=151645)
_QWEN25_VL_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                      vision_end_token_id=151653)

# Qwen2.5-VL-{3B,7B}-Instruct config.json values, as Qwen2_5_VLConfig keyword arguments.
BASE_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwen2.5-vl-3b": dict(
        text_config=dict(_QWEN25_VL_TEXT, vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                         num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2),
        vision_config=dict(_QWEN25_VL_VISION, out_hidden_size=2048), tie_word_embeddings=True, **_QWEN25_VL_IDS),
    "qwen2.5-vl-7b": dict(
        text_config=dict(_QWEN25_VL_TEXT, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                         num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4),
        vision_config=dict(_QWEN25_VL_VISION, out_hidden_size=3584), tie_word_embeddings=False, **_QWEN25_VL_IDS),
}

# ViT token budgets of the upstream scripts (28*28*N pixels): editing 16..576 tokens, understanding up to 1024.
UPSTREAM_VIT = dict(edit_vit_max_tokens=576, edit_vit_min_tokens=16, understand_vit_max_tokens=1024)
PRESETS: dict[str, dict[str, Any]] = {
    "star-3b": dict(family="qwen2_5_vl", hidden_size=2048, stacks=[dict(num_layers=16)],
                    adapter=dict(code_dim=512, hidden_size=2048, depth=2),
                    head=dict(hidden_size=2048, codebook_size=65536), **UPSTREAM_VIT),
    "star-7b": dict(family="qwen2_5_vl", hidden_size=3584, stacks=[dict(num_layers=14)],
                    adapter=dict(code_dim=512, hidden_size=3584, depth=4),
                    head=dict(hidden_size=3584, codebook_size=65536), **UPSTREAM_VIT),
}
PRESET_BASES = {"star-3b": "qwen2.5-vl-3b", "star-7b": "qwen2.5-vl-7b"}
PRESET_VQ = {"star-3b": "star-vq", "star-7b": "star-vq"}   # star.vq presets


def preset(name: str, **overrides: Any) -> STARConfig:
    """STARConfig of a named preset (`star-3b`, `star-7b`) with field overrides (e.g. base=..., vq=...)."""
    if name not in PRESETS:
        raise KeyError(f"unknown STAR preset {name!r}; choose one of {sorted(PRESETS)}")
    return STARConfig.from_dict({**PRESETS[name], **overrides})
