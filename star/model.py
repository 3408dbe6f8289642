"""The STAR model: frozen base + stacked AR + pixel adapter + pixel head, and the single sequence builder.

Data flow:

    Condition (chat.Row ids, padded) ─▶ embed ─▶ Sequence (embeds (B, T, D), attention_mask, position_ids (3, B, T))
        text ids ─▶ base.embed_text;  <|vision_pad|> slots ◀─ adapter(vq.embed(source codes));  <|image_pad|> slots
        ◀─ base.embed_images (ViT);  positions ◀─ base.position_ids (1-D for T2I, Qwen's 3-D rope index for editing)
        image codes to feed (teacher forcing, or one per decode step) are appended: adapter(vq.embed(codes), cells),
        1-D positions continuing after the prompt (edits with config.edit_code_positions="source": after the source);
        with config.edit_source_hint, the stack's input at the position predicting target code i also gets
        source_hint(vq.embed(source code i)): what the source holds in the cell being drawn
    Sequence ─▶ base (all layers + final norm; or up to config.base_layer) ─▶ stacked AR module(s) ─▶ head ─▶ code
    logits (B, ·, K)

`forward` is the training pass (cross-entropy on image-code positions only, with prompt dropout to the CFG null row);
`prefill` / `step` are the inference passes with a KV cache per module (base and each stack). Both go through
`embed`, so training and generation see the same sequences. No loops over tokens, no sampling, no PIL here: the
decode loop is star.generate, sampling is star.sampling, images are star.pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from star.adapter import PixelAdapter
from star.base import FrozenBase
from star.chat import Row, SpecialTokens
from star.config import STARConfig, StackedARConfig
from star.head import PixelHead
from star.stacked_ar import StackedAR


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token id lists -> ids (B, T) left-padded with pad_id, attention mask (B, T) with 0 on the padding."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, length - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, length - len(s):] = 1
    return ids, mask


@dataclass
class Condition:
    """A batch of conditioning sequences (everything before the first generated code), left-padded."""

    input_ids: Tensor                        # (B, T) surrogate ids: text, <|vision_pad|> per VQ code, <|image_pad|>
    null_ids: Tensor                         # (B, T) the CFG null row of each sequence (same length and image slots)
    attention_mask: Tensor                   # (B, T) 1 = token, 0 = left padding
    source_codes: Tensor | None = None       # (B, M) VQ codes filling the <|vision_pad|> slots (editing), row order
    pixel_values: Tensor | None = None       # (P, C*t*p*p) ViT patches of the images filling <|image_pad|> slots
    image_grid_thw: Tensor | None = None     # (num_images, 3) ViT grid per image, in row order

    @classmethod
    def from_rows(cls, rows: list[Row], pad_id: int, *, source_codes: Tensor | None = None,
                  pixel_values: Tensor | None = None, image_grid_thw: Tensor | None = None,
                  device: torch.device | str | None = None) -> "Condition":
        """Left-pad chat rows into tensors (so every row's last token is in the last column)."""
        ids, mask = left_pad([r.ids for r in rows], pad_id)
        null, _ = left_pad([r.null_ids for r in rows], pad_id)
        return cls(ids, null, mask, source_codes, pixel_values, image_grid_thw).to(device)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str | None) -> "Condition":
        if device is None:
            return self
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return Condition(*(move(getattr(self, f)) for f in self.__dataclass_fields__))

    def with_null(self) -> "Condition":
        """(2B, T): rows [cond_0 .. cond_B-1, null_0 .. null_B-1]; image inputs repeated for the null rows."""
        twice = lambda t: torch.cat([t, t]) if t is not None else None  # noqa: E731
        return Condition(torch.cat([self.input_ids, self.null_ids]), torch.cat([self.null_ids, self.null_ids]),
                         twice(self.attention_mask), twice(self.source_codes), twice(self.pixel_values),
                         twice(self.image_grid_thw))

    def drop_prompts(self, drop: Tensor) -> "Condition":
        """Rows where `drop` (B,) is True use their null row (prompt -> <|fim_pad|>), for CFG training."""
        return replace(self, input_ids=torch.where(drop[:, None], self.null_ids, self.input_ids))


@dataclass
class Sequence:
    """Model-ready inputs of the base and the stacks."""

    embeds: Tensor           # (B, T, D)
    attention_mask: Tensor   # (B, past + T)
    position_ids: Tensor     # (3, B, T)
    next_position: Tensor    # (B,) position of the next token to append
    stack_hints: Tensor | None = None   # (B, T, D) added to the stack's input (edit_source_hint), else None
    source_hints: Tensor | None = None  # (B, N, D) source_hint(source code i) per row, for decoding steps


@dataclass
class DecodeState:
    """Inference state after prefill / each step: one KV cache per module, the running mask and positions."""

    caches: list             # [base cache, stack 0 cache, ...], transformers DynamicCache, updated in place
    attention_mask: Tensor   # (R, T_so_far)
    next_position: Tensor    # (R,)
    codes_fed: int = 0       # image codes appended so far (the next one's grid cell)
    source_hints: Tensor | None = None  # (R, N, D) edit_source_hint per row, else None
    head_keys: Tensor | None = None     # (K, D) a code-vector head's code keys, computed once at prefill, else None


@dataclass
class STAROutput:
    loss: Tensor             # () cross-entropy over image-code positions
    logits: Tensor           # (B, N, K) code logits at the N positions that predict the N target codes
    dropped: Tensor          # (B,) bool, rows trained on their null row


class STAR(nn.Module):
    """Frozen base + stacked AR module(s) + pixel adapter + pixel head, with a frozen VQ for code vectors."""

    def __init__(self, config: STARConfig, base: FrozenBase, vq: nn.Module):
        super().__init__()
        if base.family.model_type != config.family:
            raise ValueError(f"config.family={config.family!r} but the base is a {base.family.model_type!r} model")
        if base.hidden_size != config.hidden_size:
            raise ValueError(f"the base's hidden size is {base.hidden_size} but the STAR config expects "
                             f"{config.hidden_size}; this checkpoint was trained on a different base")
        if vq.config.codebook_size != config.head.codebook_size:
            raise ValueError(f"the VQ has {vq.config.codebook_size} codes but the pixel head predicts "
                             f"{config.head.codebook_size}; load the VQ this model was trained with "
                             f"(or set head.codebook_size = {vq.config.codebook_size} for a new model)")
        if vq.config.code_dim != config.adapter.code_dim:
            raise ValueError(f"the VQ's code vectors have {vq.config.code_dim} dims but the pixel adapter takes "
                             f"{config.adapter.code_dim}; load the VQ this model was trained with "
                             f"(or set adapter.code_dim = {vq.config.code_dim} for a new model)")
        if config.head.code_dim not in (0, vq.config.code_dim):
            dim = vq.config.code_dim
            raise ValueError(f"head.code_dim={config.head.code_dim} but the VQ's code vectors have {dim} dims; set "
                             f"it to {dim} (or 0 for a free row per code)")
        if config.base_layer is not None and config.base_layer >= base.num_layers:
            raise ValueError(f"config.base_layer={config.base_layer} but the base has {base.num_layers} layers; the "
                             f"stack reads a layer below the top (1..{base.num_layers - 1}) or None (the top)")
        self.config = config
        self.base = base
        self.vq = vq.requires_grad_(False).eval()
        if config.adapter.grid_cells not in (0, self.num_image_tokens):
            (h, w), n = self.image_grid, self.num_image_tokens
            raise ValueError(f"adapter.grid_cells={config.adapter.grid_cells}, but the VQ's images have {h}x{w} = {n} "
                             f"codes; set it to {n} (or 0 for no cell embedding)")
        self.stacks = nn.ModuleList([StackedAR.from_base(base, c) for c in config.stacks])
        for earlier in self.stacks[:-1]:
            earlier.requires_grad_(False)
        self.adapter = PixelAdapter(config.adapter).to(base.device, base.dtype)
        self.head = PixelHead(config.head).to(base.device, base.dtype)
        self.source_hint = None
        if config.edit_source_hint:                  # zero at init: a model that never trained it is unchanged
            self.source_hint = nn.Linear(config.adapter.code_dim, config.hidden_size, bias=False,
                                         device=base.device, dtype=base.dtype)
            nn.init.zeros_(self.source_hint.weight)
        self.special = SpecialTokens.from_tokenizer(base.tokenizer) if base.tokenizer is not None else None

    # --- sizes ---------------------------------------------------------------------
    @property
    def image_grid(self) -> tuple[int, int]:
        """(h, w) codes per generated image."""
        side = self.vq.config.resolution // self.vq.config.downsample
        return side, side

    @property
    def num_image_tokens(self) -> int:
        return self.image_grid[0] * self.image_grid[1]

    def train(self, mode: bool = True) -> "STAR":
        super().train(mode)
        self.vq.eval()                               # frozen tokenizer (the base keeps itself in eval)
        return self

    def add_stack(self, config: StackedARConfig) -> StackedAR:
        """Progressive stacking: freeze every existing stack and put a new one on top (initialised per `config`).
        With init "identity" the new module starts as (nearly) the identity on the previous one's output: its final
        norm is set to the RMS of that output's norm weights (the output's RMS when its channels are alike)."""
        for stack in self.stacks:
            stack.requires_grad_(False)
        stack = StackedAR.from_base(self.base, config)
        if config.init == "identity" and self.stacks:
            below = self.stacks[-1].decoder.norm.weight
            with torch.no_grad():
                stack.decoder.norm.weight.fill_(float(below.float().pow(2).mean().sqrt()))
        self.stacks.append(stack)
        self.config.stacks.append(config)
        return stack

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The parts STAR trains and saves: stacks, adapter, head, source_hint (the base and the VQ are referenced)."""
        return {k: v for k, v in self.state_dict().items()
                if k.startswith(("stacks.", "adapter.", "head.", "source_hint."))}

    # --- the single sequence builder -------------------------------------------
    def embed_codes(self, codes: Tensor, first_cell: int = 0, check: bool = True) -> Tensor:
        """(B, N) codes -> (B, N, D): adapter(vq.embed(codes)), the input embedding of image codes. Code j sits in
        grid cell (first_cell + j) mod the image's cells (used by an adapter with a cell embedding). `check=False`
        skips the codebook range check (and its host sync), for codes the head itself sampled."""
        cells = None
        if self.config.adapter.grid_cells:
            cells = (first_cell + torch.arange(codes.shape[1], device=codes.device)) % self.num_image_tokens
            cells = cells.expand_as(codes)                                             # (B, N)
        return self.adapter(self.vq.embed(codes, check), cells)

    def embed(self, cond: Condition, codes: Tensor | None = None) -> Sequence:
        """Condition (+ image codes to append) -> Sequence. Used by training, prefill and the parity tests."""
        if self.special is None:
            raise RuntimeError("this STAR model's base has no tokenizer (built from a bare config); load the base "
                               "with FrozenBase.from_pretrained to run it")
        ids, mask = cond.input_ids, cond.attention_mask
        x = self.base.embed_text(ids)                                                  # (B, T, D)
        vq_slots = ids == self.special.vision_pad                                      # (B, T)
        if bool(vq_slots.any()):
            n = int(vq_slots.sum())
            if cond.source_codes is None or cond.source_codes.numel() != n:
                got = None if cond.source_codes is None else tuple(cond.source_codes.shape)
                raise ValueError(f"the sequence has {n} <|vision_pad|> slots but source_codes is {got}")
            x = x.masked_scatter(vq_slots[..., None], self.embed_codes(cond.source_codes).to(x.dtype))
        vit_slots = ids == self.base.hf.config.image_token_id                          # (B, T)
        if bool(vit_slots.any()):
            if cond.pixel_values is None or cond.image_grid_thw is None:
                raise ValueError("the sequence has <|image_pad|> slots but no pixel_values / image_grid_thw")
            feats = self.base.embed_images(cond.pixel_values, cond.image_grid_thw)      # (n_vit, D)
            if feats.shape[0] != int(vit_slots.sum()):
                raise ValueError(f"the ViT produced {feats.shape[0]} tokens for {int(vit_slots.sum())} "
                                 f"<|image_pad|> slots; the chat rows and image_grid_thw disagree")
            x = x.masked_scatter(vit_slots[..., None], feats.to(x.dtype))
        positions = self.base.position_ids(ids, mask, cond.image_grid_thw)             # (3, B, T)
        next_position = positions.amax(dim=(0, 2)) + 1                                 # (B,)
        if self.config.edit_code_positions == "source" and bool(vq_slots.any()):
            first = positions[0].gather(1, vq_slots.int().argmax(1, keepdim=True))[:, 0]  # (B,) source code 0
            next_position = torch.where(vq_slots.any(1), first + self.config.max_prompt_tokens, next_position)
        if codes is not None and codes.shape[1] > 0:
            n = codes.shape[1]
            steps = torch.arange(n, device=ids.device)
            x = torch.cat([x, self.embed_codes(codes).to(x.dtype)], dim=1)             # (B, T + n, D)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], n)], dim=1)
            positions = torch.cat([positions, (next_position[:, None] + steps)[None].expand(3, -1, -1)], dim=2)
            next_position = next_position + n
        hints = self.source_hints(cond, vq_slots)                                      # (B, N, D) or None
        stack_hints = None
        if hints is not None:           # inputs predicting codes 0..k-1: the prompt's last token, then the codes fed
            t, k = ids.shape[1] - 1, min(x.shape[1] - ids.shape[1] + 1, hints.shape[1])
            stack_hints = hints.new_zeros(x.shape[0], x.shape[1], hints.shape[-1])     # (B, T + n, D)
            stack_hints[:, t:t + k] = hints[:, :k]
        return Sequence(x, mask, positions, next_position, stack_hints, hints)

    def source_hints(self, cond: Condition, vq_slots: Tensor) -> Tensor | None:
        """(B, N, D) source_hint(source code i) per edit row, zeros for rows without a source; None when the model
        has no source hint, or the batch no source and the hint is not training."""
        if self.source_hint is None:
            return None
        n, edit_rows = self.num_image_tokens, vq_slots.any(1)                          # (B,)
        if not bool(edit_rows.any()):
            if not (torch.is_grad_enabled() and self.source_hint.weight.requires_grad):
                return None
            # training on a micro-batch without edits: call the map all the same (on zeros, so the hints are zero),
            # so that every rank runs its FSDP/DDP collectives whatever its share of the stream holds
            zeros = vq_slots.new_zeros(vq_slots.shape[0], n, self.source_hint.in_features,
                                       dtype=self.source_hint.weight.dtype)
            return self.source_hint(zeros)                                             # (B, N, D) zeros
        if bool((vq_slots.sum(1)[edit_rows] != n).any()):
            raise ValueError(f"edit_source_hint needs a source of {n} codes (the target's grid) per edit row, "
                             f"got {vq_slots.sum(1)[edit_rows].tolist()}")
        vectors = self.vq.embed(cond.source_codes.reshape(-1, n)).to(self.source_hint.weight.dtype)
        hints = self.source_hint(vectors)                                              # (B_edit, N, D)
        out = hints.new_zeros(vq_slots.shape[0], n, hints.shape[-1])                   # (B, N, D)
        return out.masked_scatter(edit_rows[:, None, None], hints)

    def hidden_states(self, seq: Sequence, state: DecodeState | None = None) -> Tensor:
        """Sequence -> (B, T, D) hidden states of the top stack. The base runs without a graph when the adapter
        is frozen (nothing upstream of the stack then needs gradients)."""
        caches = state.caches if state is not None else [None] * (1 + len(self.stacks))
        adapter_trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.adapter.parameters())
        with torch.set_grad_enabled(adapter_trains):
            h = self.base(seq.embeds, seq.attention_mask, seq.position_ids, caches[0],   # (B, T, D) post-norm,
                          layer=self.config.base_layer)                                   # or layer k's output
        if seq.stack_hints is not None:
            h = h + seq.stack_hints.to(h.dtype)
        for stack, cache in zip(self.stacks, caches[1:]):
            h = stack(h, seq.attention_mask, seq.position_ids, cache)                  # (B, T, D)
        return h

    # --- training -----------------------------------------------------------------
    def forward(self, cond: Condition, codes: Tensor, drop_prompt: Tensor | None = None,
                inputs: Tensor | None = None) -> STAROutput:
        """Teacher-forced next-code prediction on target codes (B, N); loss on the N code positions only.

        drop_prompt (B,) bool picks the rows trained on their CFG null row; None draws it with probability
        config.cfg_dropout in training mode (no dropping in eval mode). inputs (B, N - 1): the codes fed in place of
        codes[:, :-1] (teacher forcing on a corrupted context; the loss stays on `codes`).
        """
        b, n = codes.shape
        if drop_prompt is None:
            p = self.config.cfg_dropout if self.training else 0.0
            drop_prompt = torch.rand(b, device=codes.device) < p
        if inputs is None:
            inputs = codes[:, :-1]
        elif inputs.shape != (b, n - 1):
            raise ValueError(f"inputs must be (B, N - 1) = {(b, n - 1)} codes, got {tuple(inputs.shape)}")
        seq = self.embed(cond.drop_prompts(drop_prompt.to(cond.input_ids.device)), inputs)
        hidden = self.hidden_states(seq)[:, -n:]                 # (B, N, D): <|vision_start|> and codes[:, :-1]
        logits = self.logits(hidden)                             # (B, N, K)
        loss = F.cross_entropy(logits.float().flatten(0, 1), codes.flatten())
        return STAROutput(loss=loss, logits=logits, dropped=drop_prompt)

    def logits(self, hidden: Tensor, head_keys: Tensor | None = None) -> Tensor:
        """(..., D) stacked-AR hidden states -> (..., K) code logits. A code-vector head scores the VQ codebook's
        vectors, through `head_keys` (K, D) when given (decoding computes them once, at prefill); otherwise the head
        computes them in its own forward, where FSDP gathers its parameters (training)."""
        if head_keys is not None or not self.config.head.code_dim:
            return self.head(hidden, head_keys)
        return self.head(hidden, code_vectors=self.vq.quantize.codebook())

    def head_keys(self) -> Tensor | None:
        """(K, D) a code-vector head's keys for every code (None for a head with a row per code)."""
        return self.head.keys(self.vq.quantize.codebook()) if self.config.head.code_dim else None

    # --- inference ---------------------------------------------------------------
    def prefill(self, cond: Condition) -> tuple[Tensor, DecodeState]:
        """Run the whole condition once; return the logits of the first code (R, K) and the decode state."""
        from transformers import DynamicCache

        seq = self.embed(cond)
        caches = [DynamicCache(config=self.base.text_config)] + [s.new_cache() for s in self.stacks]
        state = DecodeState(caches, seq.attention_mask, seq.next_position, 0, seq.source_hints, self.head_keys())
        return self.logits(self.hidden_states(seq, state)[:, -1], state.head_keys), state

    def step(self, codes: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """Feed one code per row (R,) through base and stacks with their caches; return next logits (R, K). The codes
        are not range-checked (no host sync per step): decoding feeds back what the head sampled."""
        r = codes.shape[0]
        mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(r, 1)], dim=1)   # (R, T + 1)
        positions = state.next_position.view(1, r, 1).expand(3, r, 1)                          # (3, R, 1)
        hints, i = state.source_hints, state.codes_fed + 1                             # this input predicts code i
        stack_hints = hints[:, i:i + 1] if hints is not None and i < hints.shape[1] else None   # (R, 1, D)
        x = self.embed_codes(codes[:, None], state.codes_fed, check=False)             # (R, 1, D) sampled codes
        seq = Sequence(x, mask, positions, state.next_position + 1, stack_hints)
        state = DecodeState(state.caches, mask, seq.next_position, state.codes_fed + 1, hints, state.head_keys)
        return self.logits(self.hidden_states(seq, state)[:, -1], state.head_keys), state

    # --- persistence (star.checkpoint) ------------------------------------------
    def save_pretrained(self, directory) -> None:
        from star.checkpoint import save_star

        save_star(self, directory)

    @classmethod
    def from_pretrained(cls, directory, device=None, dtype=None) -> "STAR":
        from star.checkpoint import load_star

        return load_star(directory, device=device, dtype=dtype)
