"""STAR model on a tiny random Qwen2.5-VL base (CPU, fp32, offline): construction, sequences, caches, training step.

Tolerances: fp32 comparisons between two computations of the same logits (cached vs recomputed, batched vs solo) use
atol 1e-5 (observed differences are ~1e-6); "unchanged" and "copied" parameters are compared bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from star.chat import REASONING_SUFFIX, edit_row, image_blocks, null_row, reasoning_row, t2i_row
from star.config import StackedARConfig
from star.model import Condition
from star.pipeline import STARPipeline

ATOL = 1e-5



def rgb(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def step_logits(model, cond: Condition, codes: torch.Tensor) -> torch.Tensor:
    """Logits for every code position by prefill + one cached step per code: (R, N, K)."""
    with torch.no_grad():
        logits, state = model.prefill(cond)
        out = [logits]
        for i in range(codes.shape[1] - 1):
            logits, state = model.step(codes[:, i], state)
            out.append(logits)
    return torch.stack(out, 1), state


def full_logits(model, cond: Condition, codes: torch.Tensor) -> torch.Tensor:
    """Logits for every code position by one pass over prompt + codes[:, :-1] (no cache): (R, N, K)."""
    with torch.no_grad():
        return model.logits(model.hidden_states(model.embed(cond, codes[:, :-1])))[:, -codes.shape[1]:]


# -----------------------------------------------------------------------------
# Construction


def test_stack_equals_base_last_layers_after_construction(make_star):
    model = make_star()
    lm = model.base.language_model
    stack = model.stacks[0].decoder
    first = len(lm.layers) - len(stack.layers)
    assert len(stack.layers) == 2 and first == 2
    for i, layer in enumerate(stack.layers):
        source = lm.layers[first + i].state_dict()
        for key, value in layer.state_dict().items():
            assert torch.equal(value, source[key]), f"stack layer {i} {key} != base layer {first + i}"
            assert value.data_ptr() != source[key].data_ptr(), "the stack owns a copy, not the base's tensor"
    assert torch.equal(stack.norm.weight, lm.norm.weight), "the stack's final norm is the base's final norm"
    assert not hasattr(stack, "embed_tokens"), "the stack has no token embeddings"
    assert all(p.requires_grad for p in model.stacks.parameters())
    assert not any(p.requires_grad for p in model.base.parameters()), "the base is frozen"
    assert not any(p.requires_grad for p in model.vq.parameters()), "the VQ is frozen"
    assert not model.train().base.training, "the base stays in eval mode when the model trains"


def test_stack_init_options_and_progressive_stacking(make_star):
    ranged = make_star(stacks=[dict(num_layers=2, source_layers=[0, 2])])
    lm = ranged.base.language_model
    for i in range(2):
        assert torch.equal(ranged.stacks[0].decoder.layers[i].mlp.up_proj.weight, lm.layers[i].mlp.up_proj.weight)

    rand = make_star(stacks=[dict(num_layers=2, init="random")])
    q = rand.stacks[0].decoder.layers[0].self_attn.q_proj.weight
    assert not any(torch.equal(q, layer.self_attn.q_proj.weight) for layer in rand.base.language_model.layers)
    assert torch.equal(rand.stacks[0].decoder.norm.weight, torch.ones(64)), "random init: unit norms"
    std = rand.base.text_config.initializer_range
    assert abs(q.std().item() - std) < 0.25 * std, "random init: normal(0, initializer_range)"

    # Branching: a stack reading base layer 2's output, copied from the layers above it, starts as the base itself.
    branch = make_star(base_layer=2, stacks=[dict(num_layers=2, source_layers=[2, 4])])
    cond = Condition.from_rows([t2i_row(branch.base.tokenizer, branch.special, "a red cube")],
                               branch.special.end_of_text)
    seq = branch.embed(cond)
    with torch.no_grad():
        top_of_base = branch.base(seq.embeds, seq.attention_mask, seq.position_ids)
        every = branch.base.language_model(inputs_embeds=seq.embeds, attention_mask=seq.attention_mask,
                                           position_ids=seq.position_ids, output_hidden_states=True).hidden_states
        at_2 = branch.base(seq.embeds, seq.attention_mask, seq.position_ids, layer=2)
        assert torch.equal(at_2, every[2]), "layer=2 is layer 2's output (the layers above are not run)"
        assert len(branch.base.language_model.layers) == 4, "the base is whole again afterwards"
        torch.testing.assert_close(branch.hidden_states(seq), top_of_base, atol=ATOL, rtol=0)
        assert not torch.allclose(make_star().hidden_states(seq), top_of_base, atol=1e-3), "upstream re-applies"
    codes = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(step_logits(branch, cond, codes)[0], full_logits(branch, cond, codes), atol=ATOL,
                               rtol=0)
    with pytest.raises(ValueError, match="base_layer=4 but the base has 4 layers"):
        make_star(base_layer=4)

    model = make_star()
    top = model.add_stack(StackedARConfig(num_layers=1))
    assert len(model.stacks) == 2 and len(model.config.stacks) == 2
    assert not any(p.requires_grad for p in model.stacks[0].parameters()), "the earlier stack is frozen"
    assert all(p.requires_grad for p in top.parameters())
    cond = Condition.from_rows([t2i_row(model.base.tokenizer, model.special, "a red cube")], model.special.end_of_text)
    codes = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(step_logits(model, cond, codes)[0], full_logits(model, cond, codes), atol=ATOL, rtol=0)


def test_an_identity_stack_starts_as_its_input_renormalised(make_star):
    model = make_star()
    for p in model.stacks[0].decoder.norm.parameters():
        p.data.copy_(torch.linspace(0.5, 1.5, p.numel()))        # a trained-looking, uneven norm below
    cond = Condition.from_rows([t2i_row(model.base.tokenizer, model.special, "a red cube")], model.special.end_of_text)
    seq = model.embed(cond)
    with torch.no_grad():
        below = model.hidden_states(seq)                                                    # (1, T, D)
    top = model.add_stack(StackedARConfig(num_layers=2, init="identity"))
    layer = top.decoder.layers[0]
    assert not layer.self_attn.o_proj.weight.any() and not layer.mlp.down_proj.weight.any()
    assert layer.self_attn.q_proj.weight.any(), "the rest of the layer is the base's copy"
    scale = model.stacks[0].decoder.norm.weight.pow(2).mean().sqrt()
    assert torch.allclose(top.decoder.norm.weight, scale.expand_as(top.decoder.norm.weight))
    with torch.no_grad():
        out = model.hidden_states(seq)
    rms = below.pow(2).mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close(out, below / rms * scale, atol=1e-4, rtol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(out, below, dim=-1)
    assert bool((cosine > 0.9999).all()), "each position's direction is kept; only its length is renormalised"
    codes = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(step_logits(model, cond, codes)[0], full_logits(model, cond, codes), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="'identity'"):
        StackedARConfig(num_layers=1, init="zeros")


# -----------------------------------------------------------------------------
# Sequences: null row, positions, cached decoding


def upstream_null(ids: list[int], fim_pad: int) -> list[int]:
    """Upstream's tensor ops, transcribed: tokens[i, 1:-1] = fim_pad; tokens[i, -4:] = input_ids[-4:]."""
    tokens = torch.tensor(ids)
    null = tokens.clone()
    null[1:-1] = fim_pad
    null[-4:] = tokens[-4:]
    return null.tolist()


def test_null_row_matches_upstream_construction(make_star):
    model = make_star()
    tok, sp = model.base.tokenizer, model.special
    prompt = "a red cube left of a blue ball"
    row = t2i_row(tok, sp, prompt)
    assert tok.decode(row.ids) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                   f"{prompt}<|im_end|>\n<|im_start|>assistant\n<|vision_start|>")
    assert row.null_ids == upstream_null(row.ids, sp.fim_pad)
    pieces = tok.convert_ids_to_tokens(row.null_ids)
    assert pieces[0] == "<|im_start|>" and set(pieces[1:-4]) == {"<|fim_pad|>"}
    assert [tok.decode([i]) for i in row.null_ids[-4:]] == ["<|im_start|>", "assistant", "\n", "<|vision_start|>"]

    # Editing: upstream nulls the text row first, then inserts the image blocks after `<|im_start|>user\n`.
    edit = edit_row(tok, sp, "make the cube blue", num_vq=16, num_vit=4)
    text = t2i_row(tok, sp, "make the cube blue").ids
    header = tok.encode("<|im_start|>user\n", add_special_tokens=False)
    windows = torch.tensor(text).unfold(0, len(header), 1)
    at = int(torch.where((windows == torch.tensor(header)).all(1))[0][0]) + len(header)
    block = image_blocks(sp, 16, 4)
    assert edit.ids == text[:at] + block + text[at:]
    assert edit.null_ids == upstream_null(text, sp.fim_pad)[:at] + block + upstream_null(text, sp.fim_pad)[at:]
    assert tok.decode(block) == ("<|vision_start|>" + "<|vision_pad|>" * 16 + "<|vision_end|><|vision_start|>"
                                 + "<|image_pad|>" * 4 + "<|vision_end|>\n")

    # Implicit reasoning: prompt tokens replaced by answer + suffix; the null row follows the same rule.
    reason = reasoning_row(tok, sp, prompt, "a red cube")
    assert tok.decode(reason.ids).endswith(f"user\na red cube{REASONING_SUFFIX}<|im_end|>\n<|im_start|>assistant\n"
                                           "<|vision_start|>")
    assert reason.null_ids == null_row(reason.ids, sp) == upstream_null(reason.ids, sp.fim_pad)


def test_cached_decoding_equals_full_recompute_t2i(make_star):
    model = make_star()
    tok, sp = model.base.tokenizer, model.special
    rows = [t2i_row(tok, sp, "a red cube"), t2i_row(tok, sp, "two green triangles above a yellow star")]
    cond = Condition.from_rows(rows, sp.end_of_text).with_null()                 # 4 rows, left-padded
    assert cond.attention_mask[0].sum() < cond.attention_mask[1].sum(), "rows of different lengths"
    codes = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    cached, state = step_logits(model, cond, codes)
    torch.testing.assert_close(cached, full_logits(model, cond, codes), atol=ATOL, rtol=0)
    assert all(c.get_seq_length() == cond.input_ids.shape[1] + 15 for c in state.caches), "every module cached"
    seq = model.embed(cond, codes)
    lengths = cond.attention_mask.sum(1)
    expected = (lengths[:, None] + torch.arange(16))                             # 1-D positions continue the text
    assert torch.equal(seq.position_ids[:, :, -16:], expected[None].expand(3, -1, -1))


def test_cached_decoding_equals_full_recompute_edit(make_star):
    model = make_star()
    pipe = STARPipeline(model)
    cond = pipe.edit_condition([rgb(0, (64, 64)), rgb(1, (96, 64))], ["make the cube blue", "remove the ball"])
    assert cond.image_grid_thw.tolist() == [[1, 8, 8], [1, 8, 12]], "different ViT grids -> left padding"
    cond = cond.with_null()
    codes = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(2))
    cached, _ = step_logits(model, cond, codes)
    torch.testing.assert_close(cached, full_logits(model, cond, codes), atol=ATOL, rtol=0)

    # Positions = Qwen's rope index on upstream's surrogate sequence (prompt + one <|vision_pad|> per generated code).
    seq = model.embed(cond, codes)
    surrogate = torch.cat([cond.input_ids, torch.full((4, 16), model.special.vision_pad)], 1)
    mask = torch.cat([cond.attention_mask, torch.ones(4, 16, dtype=torch.long)], 1)
    mm = (surrogate == model.base.hf.config.image_token_id).int()
    ref, _ = model.base.hf.model.get_rope_index(surrogate, mm_token_type_ids=mm, image_grid_thw=cond.image_grid_thw,
                                                attention_mask=mask)
    assert torch.equal(seq.position_ids[:, mask.bool()], ref[:, mask.bool()])
    vit = cond.input_ids[1] == model.special.image_pad
    assert not torch.equal(seq.position_ids[1, 1, :-16][vit], seq.position_ids[2, 1, :-16][vit]), "ViT block is 3-D"
    vq = cond.input_ids[1] == model.special.vision_pad
    p = seq.position_ids[:, 1, :-16][:, vq]
    assert torch.equal(p[0], p[1]) and torch.equal(p[0], p[2]) and torch.equal(p[0].diff(), torch.ones(15).long()), \
        "the VQ block has 1-D positions"


def test_edit_code_positions_source_puts_each_target_code_at_one_distance_from_its_source(make_star):
    model = make_star(edit_code_positions="source")
    pipe = STARPipeline(model)
    cond = pipe.edit_condition([rgb(0), rgb(1)], ["make the cube blue", "remove the big ball on the left side"])
    cond = cond.with_null()
    codes = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(3))
    cached, _ = step_logits(model, cond, codes)
    torch.testing.assert_close(cached, full_logits(model, cond, codes), atol=ATOL, rtol=0)
    seq = model.embed(cond, codes)
    for row in range(4):
        source = seq.position_ids[0, row, :-16][cond.input_ids[row] == model.special.vision_pad]     # (16,)
        target = seq.position_ids[:, row, -16:]                                                      # (3, 16)
        assert torch.equal(target - source, torch.full((3, 16), model.config.max_prompt_tokens)), row
        assert int(target.min()) > int(seq.position_ids[:, row, :-16].max()), "codes come after the prompt"
    assert (cond.input_ids[0] != model.special.end_of_text).sum() != (cond.input_ids[1] != model.special.end_of_text
                                                                      ).sum(), "instructions of different lengths"


def test_cell_embedding_gives_every_code_its_grid_cell_in_training_and_decoding(make_star):
    grid = dict(code_dim=8, hidden_size=64, depth=2, grid_cells=16)
    plain, model = make_star(), make_star(adapter=grid)
    state = plain.state_dict()
    model.load_state_dict({**state, "adapter.cells.weight": model.adapter.cells.weight})    # same weights + table
    assert torch.count_nonzero(model.adapter.cells.weight) == 0, "the table starts at zero"
    pipe = STARPipeline(model)
    t2i = Condition.from_rows([t2i_row(model.base.tokenizer, model.special, "a red cube")],
                              model.special.end_of_text).with_null()
    edit = pipe.edit_condition([rgb(0), rgb(1)], ["make the cube blue", "remove the ball"]).with_null()
    codes = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(full_logits(model, edit, codes), full_logits(plain, edit, codes), atol=0, rtol=0)

    with torch.no_grad():
        model.adapter.cells.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(5))
    for cond, rows in ((t2i, 2), (edit, 4)):
        cached, _ = step_logits(model, cond, codes[:rows])       # each decode step must know its code's cell
        torch.testing.assert_close(cached, full_logits(model, cond, codes[:rows]), atol=ATOL, rtol=0)
        assert not torch.allclose(cached, full_logits(plain, cond, codes[:rows]), atol=1e-3), "the cells matter"
    # the same code in two cells enters the base as two different vectors; source code j is in cell j, as target j
    same = torch.full((1, 16), 7)
    vectors = model.embed_codes(same)[0]                                                     # (16, D)
    assert not torch.allclose(vectors[0], vectors[1])
    seq = model.embed(edit, codes)
    sources = seq.embeds[0, :-16][edit.input_ids[0] == model.special.vision_pad]             # (16, D)
    expected = model.embed_codes(edit.source_codes[:1])[0]
    torch.testing.assert_close(sources, expected, atol=0, rtol=0)
    assert not torch.equal(model.embed_codes(edit.source_codes[:1, 1:])[0], expected[1:]), "cell j, not j - 1"

    with pytest.raises(ValueError, match="grid_cells=9.*16"):
        make_star(adapter={**grid, "grid_cells": 9})


def test_code_vector_head_scores_each_code_through_its_vq_vector(make_star):
    model = make_star(head=dict(hidden_size=64, codebook_size=64, code_dim=8))
    k = model.config.head.codebook_size
    assert sorted(n for n, _ in model.head.named_parameters()) == [
        "codes.0.bias", "codes.0.weight", "codes.2.bias", "codes.2.weight", "query.bias", "query.weight"], \
        "no output row or bias of its own per code"
    cond = Condition.from_rows([t2i_row(model.base.tokenizer, model.special, "a red cube")],
                               model.special.end_of_text).with_null()
    codes = torch.randint(6, k, (2, 16), generator=torch.Generator().manual_seed(8))   # fed codes avoid 3 and 5
    calls = []
    hook = model.head.codes.register_forward_hook(lambda *_: calls.append(1))
    cached, _ = step_logits(model, cond, codes)
    hook.remove()
    assert len(calls) == 1, "decoding computes the code keys once, at prefill, not at every step"
    torch.testing.assert_close(cached, full_logits(model, cond, codes), atol=ATOL, rtol=0)

    # a code's logit follows its vector: give code 5 the vector of code 3 and their logits agree, the rest unchanged
    with torch.no_grad():
        model.vq.quantize.embedding.weight[5] = model.vq.quantize.embedding.weight[3]
    moved = full_logits(model, cond, codes)
    torch.testing.assert_close(moved[..., 5], moved[..., 3], atol=0, rtol=0)
    assert not torch.allclose(moved[..., 5], cached[..., 5], atol=1e-3)
    keep = [i for i in range(k) if i != 5]
    torch.testing.assert_close(moved[..., keep], cached[..., keep], atol=ATOL, rtol=0)

    # training on code 3 alone raises code 5 (same vector) with it; a free row per code leaves code 5 to fall
    for head in (None, dict(hidden_size=64, codebook_size=64)):
        m = model if head is None else make_star(head=head)
        with torch.no_grad():
            m.vq.quantize.embedding.weight[5] = m.vq.quantize.embedding.weight[3]
        hidden = torch.randn(32, 64, generator=torch.Generator().manual_seed(9))
        before = m.logits(hidden).log_softmax(-1)[:, 5].mean().item()
        opt = torch.optim.Adam(m.head.parameters(), lr=1e-2)
        for _ in range(30):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m.logits(hidden), torch.full((32,), 3)).backward()
            opt.step()
        after = m.logits(hidden).log_softmax(-1)[:, 5].mean().item()
        assert (after > before + 1.0) if head is None else (after < before), (head, before, after)

    with pytest.raises(ValueError, match="head.code_dim=4 but the VQ's code vectors have 8 dims"):
        make_star(head=dict(hidden_size=64, codebook_size=64, code_dim=4))
    with pytest.raises(ValueError, match="pass the code keys"):
        model.head(torch.zeros(1, 64))
    with pytest.raises(ValueError, match="pass the VQ codebook"):
        model.head.keys(torch.zeros(64, 4))


def test_code_vector_head_trains_under_fsdp2(make_star, monkeypatch):
    """Sharded (a 1-rank gloo group), the head's parameters are DTensors outside its forward: the code keys must be
    computed inside it, or the first step fails on mixed Tensor/DTensor."""
    import socket

    import torch.distributed as dist

    from star.training.parallel import Dist, wrap

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = make_star(head=dict(hidden_size=64, codebook_size=64, code_dim=8)).train()
        env = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        wrap(model, ("stacks.0", "adapter", "head"), "fsdp", env, torch.float32)
        cond = Condition.from_rows([t2i_row(model.base.tokenizer, model.special, "a red cube")] * 2,
                                   model.special.end_of_text)
        codes = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
        model(cond, codes, drop_prompt=torch.zeros(2, dtype=torch.bool)).loss.backward()
        grads = [p.grad for p in model.head.codes.parameters()]
        assert all(g is not None and torch.count_nonzero(g.full_tensor()) > 0 for g in grads)
    finally:
        dist.destroy_process_group()


def test_edit_source_hint_gives_the_input_predicting_code_i_source_code_i(make_star):
    plain, model = make_star(), make_star(edit_source_hint=True)
    model.load_state_dict({**plain.state_dict(), "source_hint.weight": model.source_hint.weight})
    assert torch.count_nonzero(model.source_hint.weight) == 0, "the map starts at zero"
    assert "source_hint.weight" in model.trainable_state_dict(), "saved with the trained parts"
    pipe = STARPipeline(model)
    edit = pipe.edit_condition([rgb(0), rgb(1)], ["make the cube blue", "remove the ball"]).with_null()
    t2i = Condition.from_rows([t2i_row(model.base.tokenizer, model.special, "a red cube")],
                              model.special.end_of_text).with_null()
    codes = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(full_logits(model, edit, codes), full_logits(plain, edit, codes), atol=0, rtol=0)

    with torch.no_grad():
        model.source_hint.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(7))
    cached, _ = step_logits(model, edit, codes)               # each decode step adds the next cell's source code
    torch.testing.assert_close(cached, full_logits(model, edit, codes), atol=ATOL, rtol=0)
    assert not torch.allclose(cached, full_logits(plain, edit, codes), atol=1e-3), "the hint matters"
    torch.testing.assert_close(full_logits(model, t2i, codes[:2]), full_logits(plain, t2i, codes[:2]), atol=0, rtol=0)

    # the position predicting code i (the prompt's last token for i = 0, then code i - 1) holds hint(source code i)
    seq = model.embed(edit, codes[:, :-1])
    t = edit.input_ids.shape[1] - 1
    expected = model.source_hint(model.vq.embed(edit.source_codes.reshape(4, 16)))              # (4, 16, D)
    torch.testing.assert_close(seq.stack_hints[:, t:], expected, atol=0, rtol=0)
    assert torch.count_nonzero(seq.stack_hints[:, :t]) == 0, "nothing before the first code's position"
    # and source code i alone moves the logits from position i on
    changed = edit.source_codes.clone().reshape(4, 16)
    changed[:, 9] = (changed[:, 9] + 1) % 64
    moved = Condition(edit.input_ids, edit.null_ids, edit.attention_mask, changed.reshape(edit.source_codes.shape),
                      edit.pixel_values, edit.image_grid_thw)
    hints_only = model.source_hints(moved, moved.input_ids == model.special.vision_pad) - \
        model.source_hints(edit, edit.input_ids == model.special.vision_pad)
    assert torch.count_nonzero(hints_only.abs().sum(-1)[:, torch.arange(16) != 9]) == 0
    assert bool((hints_only[:, 9].abs().sum(-1) > 0).all())

    # training on a batch without edits still calls the map (zero hints, zero gradient): under FSDP every rank must
    # run the same collectives whatever its micro-batch holds
    model.train()
    model.zero_grad()
    t2i_only = Condition.from_rows([t2i_row(model.base.tokenizer, model.special, "a red cube")] * 2,
                                   model.special.end_of_text)
    loss = model(t2i_only, codes[:2], drop_prompt=torch.zeros(2, dtype=torch.bool)).loss
    loss.backward()
    assert model.source_hint.weight.grad is not None and torch.count_nonzero(model.source_hint.weight.grad) == 0
    torch.testing.assert_close(loss, plain(t2i_only, codes[:2], drop_prompt=torch.zeros(2, dtype=torch.bool)).loss,
                               atol=0, rtol=0)


# -----------------------------------------------------------------------------
# Training


def test_training_step_changes_trained_parts_only(make_star):
    model = make_star().train()
    tok, sp = model.base.tokenizer, model.special
    cond = Condition.from_rows([t2i_row(tok, sp, "a red cube"), t2i_row(tok, sp, "remove the ball")], sp.end_of_text)
    codes = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    frozen = {k: v.clone() for k, v in list(model.base.state_dict().items()) + [
        ("vq." + k, v) for k, v in model.vq.state_dict().items()]}
    trained = {k: v.clone() for k, v in model.trainable_state_dict().items()}

    out = model(cond, codes, drop_prompt=torch.tensor([False, True]))
    assert out.logits.shape == (2, 16, 64) and torch.isfinite(out.loss)
    out.loss.backward()
    named = dict(model.named_parameters())
    for key in ("adapter.layers.0.weight", "head.proj.weight", "stacks.0.decoder.layers.0.self_attn.q_proj.weight",
                "stacks.0.decoder.layers.1.mlp.down_proj.weight", "stacks.0.decoder.norm.weight"):
        assert named[key].grad is not None and named[key].grad.abs().sum() > 0, f"{key} gets a gradient"
    assert all(p.grad is None for p in model.base.parameters()), "no gradient is stored on the base"
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()

    now = {k: v for k, v in list(model.base.state_dict().items()) + [
        ("vq." + k, v) for k, v in model.vq.state_dict().items()]}
    assert all(torch.equal(now[k], v) for k, v in frozen.items()), "every base and VQ tensor is bit-identical"
    after = model.trainable_state_dict()
    for key, before in trained.items():
        grad = named[key].grad
        assert (not torch.equal(after[key], before)) == bool(grad.abs().sum() > 0), f"{key} moves iff it has a grad"
    changed = {k.split(".")[0] for k in trained if not torch.equal(after[k], trained[k])}
    assert changed == {"stacks", "adapter", "head"}


def test_training_loss_is_code_cross_entropy_of_the_inference_sequence(make_star):
    model = make_star()
    tok, sp = model.base.tokenizer, model.special
    cond = Condition.from_rows([t2i_row(tok, sp, "a red cube"), t2i_row(tok, sp, "two green triangles")],
                               sp.end_of_text)
    codes = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        kept = model(cond, codes, drop_prompt=torch.tensor([False, False]))
        dropped = model(cond, codes, drop_prompt=torch.tensor([True, True]))
    cached, _ = step_logits(model, cond, codes)
    torch.testing.assert_close(kept.logits, cached, atol=ATOL, rtol=0)
    ce = torch.nn.functional.cross_entropy(cached.flatten(0, 1), codes.flatten())
    torch.testing.assert_close(kept.loss, ce, atol=ATOL, rtol=0)
    null_cond = Condition(cond.null_ids, cond.null_ids, cond.attention_mask)
    torch.testing.assert_close(dropped.logits, step_logits(model, null_cond, codes)[0], atol=ATOL, rtol=0)

    model.config.cfg_dropout = 0.5
    torch.manual_seed(0)
    draws = torch.stack([model.train()(cond, codes).dropped for _ in range(20)])
    assert 0 < draws.float().mean() < 1, "training mode drops prompts with probability cfg_dropout"
    assert not model.eval()(cond, codes).dropped.any(), "eval mode never drops"


# -----------------------------------------------------------------------------
# Tiny base folder and sampling functions


SMALL_BASE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                  vision_hidden_size=32, vision_intermediate_size=64, vision_depth=1, vision_heads=2, patch_size=8,
                  merge_size=2, image_size=32, seed=0)
"""Sizes of the small bases the build_tiny_base tests write (32-px images, 4 ViT tokens)."""


def test_tiny_base_is_an_ordinary_qwen_folder(tiny_base_dir):
    from transformers import AutoConfig, AutoTokenizer

    config, tok = AutoConfig.from_pretrained(tiny_base_dir), AutoTokenizer.from_pretrained(tiny_base_dir)
    assert config.model_type == "qwen2_5_vl" and config.text_config.hidden_size == 64
    ids = tok.get_vocab()
    for name in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                 "<|fim_pad|>", "<|endoftext|>"):
        assert name in ids and tok.convert_ids_to_tokens(ids[name]) == name
    assert (config.image_token_id, config.vision_start_token_id, config.vision_end_token_id) == (
        ids["<|image_pad|>"], ids["<|vision_start|>"], ids["<|vision_end|>"])
    assert len(tok) <= config.text_config.vocab_size
    text = "two green triangles, 3 of them!\n  ok"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text, "byte-level BPE round-trips any text"


def test_tiny_base_embedding_std_sets_only_the_token_embeddings(tmp_path):
    from safetensors.torch import load_file

    from star.tiny_base import build_tiny_base

    plain = load_file(str(build_tiny_base(tmp_path / "a", ["a red star", "two blue squares"], **SMALL_BASE)
                          / "model.safetensors"))
    wide = load_file(str(build_tiny_base(tmp_path / "b", ["a red star", "two blue squares"], embedding_std=0.5,
                                         **SMALL_BASE) / "model.safetensors"))
    key = next(k for k in wide if k.endswith("embed_tokens.weight"))
    assert abs(plain[key].float().std().item() - 0.02) < 0.005 and abs(wide[key].float().std().item() - 0.5) < 0.05
    assert all(torch.equal(plain[k], wide[k]) for k in plain if k != key), "nothing else changes"


def test_tiny_base_mrope_section_reaches_the_config_and_bad_ones_fail_early(tmp_path):
    from transformers import AutoConfig

    from star.tiny_base import build_tiny_base

    corpus = ["a red star", "two blue squares"]
    # SMALL_BASE's head_dim 16: 8 rotary frequencies
    default = AutoConfig.from_pretrained(build_tiny_base(tmp_path / "a", corpus, **SMALL_BASE)).text_config
    chosen = AutoConfig.from_pretrained(build_tiny_base(tmp_path / "b", corpus, mrope_section=[1, 2, 5], rope_theta=1e3,
                                                        **SMALL_BASE)).text_config
    assert default.rope_parameters["mrope_section"] == [2, 3, 3]          # Qwen's 16:24:24, rounded
    assert chosen.rope_parameters["mrope_section"] == [1, 2, 5] and chosen.rope_parameters["rope_theta"] == 1e3
    with pytest.raises(ValueError, match="mrope_section"):
        build_tiny_base(tmp_path / "c", corpus, mrope_section=[2, 2, 2], **SMALL_BASE)
    assert not (tmp_path / "c").exists(), "rejected before anything is written"


def test_tiny_base_match_vision_norm_scales_image_tokens_to_word_size(tmp_path):
    import json

    from safetensors.torch import load_file
    from transformers import AutoImageProcessor
    from PIL import Image

    from star.base import get_family
    from star.tiny_base import build_tiny_base
    from star.views import vit_inputs

    sizes = dict(SMALL_BASE, embedding_std=0.5)
    corpus = ["a red star", "two blue squares"]
    plain_dir = build_tiny_base(tmp_path / "a", corpus, **sizes)
    matched_dir = build_tiny_base(tmp_path / "b", corpus, match_vision_norm=True, **sizes)
    plain, matched = (load_file(str(d / "model.safetensors")) for d in (plain_dir, matched_dir))
    assert [k for k in plain if not torch.equal(plain[k], matched[k])] == ["visual.merger.mlp.2.weight"]

    image = Image.new("RGB", (32, 32), (230, 230, 230))
    image.paste((200, 30, 30), (8, 8, 24, 24))                   # a red square on a light background
    norms = []
    for folder in (plain_dir, matched_dir):
        hf = get_family("qwen2_5_vl").model_class().from_pretrained(folder, dtype=torch.float32).eval()
        pixels, grid, _ = vit_inputs(AutoImageProcessor.from_pretrained(folder), image, None, None)
        with torch.no_grad():
            tokens = hf.model.get_image_features(pixels, grid).pooler_output[0]
        norms.append((tokens.norm(dim=-1).median().item(),
                      hf.get_input_embeddings().weight.norm(dim=-1).median().item()))
    (image_plain, word), (image_matched, _) = norms
    assert image_plain < word / 5, "a random ViT's tokens are far smaller than words of std 0.5"
    assert abs(image_matched / word - 1) < 0.25, (image_matched, word)
    scales = [json.loads((d / "star_tiny_base.json").read_text())["vision_output_scale"]
              for d in (plain_dir, matched_dir)]
    assert scales[0] == 1.0 and scales[1] > 5, scales


def test_sampling_filters_and_temperature():
    from star.sampling import apply_cfg, filter_top_k, filter_top_p, sample

    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [[False, True, False, True]]
    # probs ≈ [.64, .09, .24, .03]: top-p 0.7 keeps the best two (0.64 < 0.7), top-p 0.5 keeps one.
    assert torch.isinf(filter_top_p(logits, 0.7)).tolist() == [[False, True, False, True]]
    assert torch.isinf(filter_top_p(logits, 0.5)).tolist() == [[False, True, True, True]]
    torch.testing.assert_close(apply_cfg(torch.ones(1, 4), torch.zeros(1, 4), 3.0), torch.full((1, 4), 3.0))
    assert sample(logits, temperature=0.0).tolist() == [0]
    for temperature in (0.5, 2.0):
        draws = sample(logits.expand(20000, -1), temperature=temperature, generator=torch.Generator().manual_seed(0))
        freq = torch.bincount(draws, minlength=4).float() / len(draws)
        torch.testing.assert_close(freq, (logits[0] / temperature).softmax(-1), atol=0.015, rtol=0)
