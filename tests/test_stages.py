"""The real training stages (understanding, vq, generation, editing), their data, `star tokenize` and `star train`.

Tiny real modules on CPU: the conftest base (hidden 64, 4 layers) and VQ (16 px -> 4x4 codes), ShapeWorld datasets
of a few records at 32 px written by the recipe's dataset builder. Invariants: a stage declares exactly what trains;
one trainer step moves every trainable tensor and leaves every frozen one bit-identical; the understanding loss sees
only answer tokens; the generation loss sees only code positions and drops prompts as (seed, index) says; codes from
`star tokenize` equal VQModel.encode of the pipeline's input and another VQ's codes are refused; bad records are
skipped and counted in log.jsonl; streams restart exactly at any position.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from star.training.config import apply_overrides
from star.training.recipes import DatasetSpec, build_dataset
from star.training.runlog import read_log
from star.training.stages import get_stage
from star.training.trainer import train

TINY_VQ = dict(patch_size=1, ch=8, ch_mult=[1, 2, 2], num_res_blocks=1, decoder_res_blocks=1, attn_heads=1,
               z_channels=8, norm_groups=4, codebook_size=64, code_dim=8, resolution=16)



@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Every record kind, 32 px images, plus implicit-reasoning text_qa records."""
    out = tmp_path_factory.mktemp("stage_data") / "data"
    build_dataset(DatasetSpec(kinds={"t2i": 10, "edit": 6, "vqa": 12, "caption": 4, "text_qa": 4}, seed=5,
                              resolution=32, wise_reasoning=3), out, log=lambda m: None)
    return out


def stage_config(stage: str, out: Path, steps: int = 1, export: bool = True, **options):
    cfg = get_stage(stage).default_config()
    overrides = {"out_dir": str(out), "steps": steps, "batch_size": 4, "checkpoint_every": 0, "progress": False,
                 "device": "cpu", "optim.warmup_steps": 1, "ema_decay": 0.0, "export": export}
    overrides.update({f"stage_options.{k}": v for k, v in options.items()})
    return apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


class Spy:
    """Wraps a stage and keeps the model it built (the trainer sees the same declarations)."""

    def __init__(self, stage):
        self.inner, self.model = stage, None

    name = property(lambda self: self.inner.name)
    trainable = property(lambda self: self.inner.trainable)
    frozen = property(lambda self: self.inner.frozen)

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def build(self, config, device, dtype):
        self.model = self.inner.build(config, device, dtype)
        return self.model


@pytest.fixture(scope="module")
def gen_export(tmp_path_factory, tiny_base_dir, star_vq_dir, dataset) -> Path:
    """A generation stage export (2 steps) that editing continues from."""
    out = tmp_path_factory.mktemp("gen_export") / "run"
    train(stage_config("generation", out, steps=2, base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(dataset),
                       stack_layers=2), get_stage("generation"))
    return out / "export"


def stage_cases(tiny_base_dir, star_vq_dir, dataset, gen_export):
    gen = dict(base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(dataset), stack_layers=2)
    return {
        "understanding": (dict(base=str(tiny_base_dir), data=str(dataset)),
                          ("hf.model.visual", "hf.model.language_model", "hf.lm_head"), ()),
        "understanding-freeze-layers": (
            dict(base=str(tiny_base_dir), data=str(dataset), freeze_layers=1, train_vision=False),
            ("hf.model.language_model.layers.1", "hf.model.language_model.layers.2",
             "hf.model.language_model.layers.3", "hf.model.language_model.norm", "hf.lm_head"),
            ("hf.model.visual", "hf.model.language_model.embed_tokens", "hf.model.language_model.layers.0")),
        "vq": (dict(data=str(dataset), overrides=TINY_VQ),
               ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv"), ()),
        "vq-dictionary-warmup": (dict(data=str(dataset), overrides=TINY_VQ, dict_warmup=1, kmeans_images=8,
                                      kmeans_iters=2),
                                 ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv"), ()),
        "generation": (gen, ("stacks.0", "adapter", "head"), ("base", "vq")),
        "generation-frozen-adapter": ({**gen, "train_adapter": False}, ("stacks.0", "head"),
                                      ("base", "vq", "adapter")),
        "generation-code-vector-head": ({**gen, "head_code_vectors": True}, ("stacks.0", "adapter", "head"),
                                        ("base", "vq")),
        "editing": ({**gen, "init": str(gen_export)}, ("stacks.0", "adapter", "head"), ("base", "vq")),
        "editing-new-stack": ({**gen, "init": str(gen_export), "new_stack": True, "stack_layers": 1,
                               "train_adapter": False},
                              ("stacks.1", "head"), ("base", "vq", "stacks.0", "adapter")),
        "editing-source-hint": ({**gen, "init": str(gen_export), "edit_source_hint": True, "train_adapter": False},
                                ("stacks.0", "head", "source_hint"), ("base", "vq", "adapter")),
    }


@pytest.mark.parametrize("case", ["understanding", "understanding-freeze-layers", "vq", "vq-dictionary-warmup",
                                  "generation",
                                  "generation-frozen-adapter", "generation-code-vector-head", "editing",
                                  "editing-new-stack", "editing-source-hint"])
def test_stage_declares_what_trains_and_a_step_moves_exactly_that(case, tmp_path, tiny_base_dir, star_vq_dir,
                                                                   dataset, gen_export):
    options, trainable, frozen = stage_cases(tiny_base_dir, star_vq_dir, dataset, gen_export)[case]
    name = case.split("-")[0]
    config = stage_config(name, tmp_path / "run", steps=1, export=False, **options)
    spy = Spy(get_stage(name))
    train(config, spy)
    assert spy.trainable == trainable and spy.frozen == frozen
    torch.manual_seed(config.seed)
    fresh = get_stage(name).build(config, torch.device("cpu"), torch.float32)  # the same seeded build
    after = dict(spy.model.named_parameters())
    moved, kept = 0, 0
    for key, before in fresh.named_parameters():
        owner = [n for n in trainable + frozen if key.startswith(n + ".")]
        assert len(owner) == 1, f"{key} is not under exactly one declared module"
        if owner[0] in frozen:
            assert torch.equal(after[key], before) and not after[key].requires_grad, f"frozen {key} changed"
            kept += 1
        else:
            assert after[key].requires_grad and after[key].dtype == torch.float32
            moved += not torch.equal(after[key], before)
    n_trainable = sum(1 for k, _ in fresh.named_parameters() if any(k.startswith(t + ".") for t in trainable))
    # every trainable tensor with a gradient moves; token-embedding rows etc. always get one here, so: all of them
    assert moved == n_trainable, f"{n_trainable - moved} trainable tensors did not move"
    assert kept == sum(1 for k, _ in fresh.named_parameters()) - n_trainable
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert log[0]["tokens_per_s"] > 0 and "data_warnings" in log[0]


# -----------------------------------------------------------------------------
# Understanding: sequences and the loss mask


def test_understanding_sequences_match_the_pipeline_and_the_loss_sees_only_answers(tmp_path, tiny_base_dir, dataset):
    from star.chat import understand_ids
    from star.pipeline import STARPipeline
    from star.training.data import load_rgb
    from star.views import vit_inputs
    from star.training.stage_understanding import IGNORE, UnderstandingStage, encode_conversation

    stage = UnderstandingStage()
    config = stage_config("understanding", tmp_path, base=str(tiny_base_dir), data=str(dataset), max_turns=3)
    stream = stage.batches(config, 0, 1, 0)
    tok, sp = stream.tokenizer, stream.special

    # the multi-turn text encoding is the chat template of the whole conversation
    turns = [("what colour is a stop sign?", "red"), ("how many days are there in a weekend?", "two")]
    ids, labels = encode_conversation(tok, sp, turns, None)
    messages = [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    template = tok.encode(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
    assert ids == template[:len(ids)] and template[len(ids):] == tok.encode("\n", add_special_tokens=False)
    assert [t for t, lab in zip(ids, labels) if lab != IGNORE] == (
        tok.encode("red", add_special_tokens=False) + [sp.im_end] + tok.encode("two", add_special_tokens=False)
        + [sp.im_end])

    # an image conversation's first turn is exactly the pipeline's understanding prompt and ViT input
    found = None
    for i in range(40):
        task, image, conv = stream.conversation(i)
        if task == "vqa":
            found = (image, conv)
            break
    image, conv = found
    pil = load_rgb(image)
    fake = types.SimpleNamespace(image_processor=stream.image_processor)
    pv_pipe, grid_pipe, n_pipe = STARPipeline._vit_inputs(fake, pil, None, None)
    pv, grid, n = vit_inputs(stream.image_processor, pil, None, None)
    assert torch.equal(pv, pv_pipe) and torch.equal(grid, grid_pipe) and n == n_pipe
    ids, labels = encode_conversation(tok, sp, conv, n)
    prompt = understand_ids(tok, sp, conv[0][0], n)
    assert ids[:len(prompt)] == prompt and all(lab == IGNORE for lab in labels[:len(prompt)])

    # the loss is the CE over the answer tokens only, in a real batch: image rows and text rows are two parts, each
    # left-padded to its own length
    batch = next(b for b in stream if len(b.parts) == 2)
    image_part, text_part = batch.parts
    assert image_part.pixel_values is not None and text_part.pixel_values is None
    assert text_part.input_ids.shape[1] < image_part.input_ids.shape[1]
    assert not (text_part.input_ids == sp.image_pad).any()
    model = stage.build(config, torch.device("cpu"), torch.float32).eval()
    logits, targets = [], []
    for part in batch.parts:
        for row in range(part.input_ids.shape[0]):
            kept = part.labels[row][part.labels[row] != IGNORE]
            text = tok.decode(kept)
            assert text.endswith("<|im_end|>") and "user" not in text and "<|image_pad|>" not in text
        with torch.no_grad():
            out = model.hf(input_ids=part.input_ids, attention_mask=part.attention_mask,
                           pixel_values=part.pixel_values, image_grid_thw=part.image_grid_thw,
                           mm_token_type_ids=(part.input_ids == sp.image_pad).int())
        mask = part.labels[:, 1:] != IGNORE
        logits.append(out.logits[:, :-1].float()[mask])
        targets.append(part.labels[:, 1:][mask])
    loss, metrics = stage.loss(model, batch)
    manual = F.cross_entropy(torch.cat(logits), torch.cat(targets))
    torch.testing.assert_close(loss, manual, rtol=1e-5, atol=1e-6)
    n = sum(len(t) for t in targets)
    assert metrics["answer_tokens"] == n < metrics["tokens"] / 4

    # with several processes every micro-batch is one part (each rank runs one forward, as FSDP needs), images and
    # text rows together
    rank0 = stage.batches(config, 0, 2, 0)
    for _ in range(3):
        assert len(next(rank0).parts) == 1
    per_rank = [stage.batches(config, r, 2, 0) for r in range(2)]
    first = [next(s) for s in per_rank]
    assert all(p.pixel_values is None or p.image_grid_thw.shape[0] == sum(t in ("vqa", "caption") for t in b.tasks)
               for b in first for p in b.parts)

    # a micro-batch without images still calls the trainable ViT (so ranks stay in step), with zero gradient
    model.train()
    loss, _ = stage.loss(model, types.SimpleNamespace(parts=[text_part], tasks=["text_qa"]))
    loss.backward()
    grads = [p.grad for p in model.hf.model.visual.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    with torch.no_grad():
        torch.testing.assert_close(loss, stage.loss(model, types.SimpleNamespace(parts=[text_part],
                                                                                 tasks=["text_qa"]))[0])


def test_scene_qa_asks_the_vqa_questions_a_caption_answers_about_the_caption(tmp_path, tiny_base_dir, dataset):
    from star.shapes.scene import Scene
    from star.training.data import RecordIndex
    from star.shapes.text import caption
    from star.training.stage_understanding import SCENE_QA_FAMILIES, UnderstandingStage

    config = stage_config("understanding", tmp_path, base=str(tiny_base_dir), data=str(dataset),
                          tasks={"scene_qa": 1.0})
    stream = UnderstandingStage().batches(config, 0, 1, 0)
    vqa = list(RecordIndex(dataset, ["vqa"]).records)
    expected = sorted(f"{caption(Scene.from_dict(r['meta']['scene']))}. {r['question']}|{r['answer']}"
                      for r in vqa if r["meta"]["family"] in SCENE_QA_FAMILIES)
    assert {r["meta"]["family"] for r in vqa} - set(SCENE_QA_FAMILIES), "the data has relation questions to leave out"
    got = sorted(f"{q}|{a}" for image, turns in stream.units[0] for q, a in turns if image is None)
    assert stream.tasks == ["scene_qa"] and got == expected
    batch = next(stream)
    assert len(batch.parts) == 1 and batch.parts[0].pixel_values is None and set(batch.tasks) == {"scene_qa"}


# -----------------------------------------------------------------------------
# Generation: the loss, CFG dropout, the stream


def test_generation_loss_is_on_code_positions_with_seeded_prompt_dropout(tmp_path, tiny_base_dir, star_vq_dir,
                                                                         dataset):
    from star.model import Condition
    from star.training.stage_generation import GenerationStage, encode_images

    stage = GenerationStage("generation")
    config = stage_config("generation", tmp_path, base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(dataset),
                          stack_layers=2, cfg_dropout=0.5)
    model = stage.build(config, torch.device("cpu"), torch.float32).train()
    stream = stage.batches(config, 0, 1, 0)
    drops = [stream.sample(i)[3] for i in range(200)]
    assert drops == [stage.batches(config, 0, 1, 0).sample(i)[3] for i in range(200)], "dropout is (seed, index)"
    assert 70 < sum(drops) < 130, "dropout rate ~ cfg_dropout"

    batch = next(stream)
    batch.drop = torch.tensor([True, False, True, False])
    loss, metrics = stage.loss(model, batch)
    codes = encode_images(model.vq, batch.targets, torch.device("cpu"))                   # (4, 16)
    cond = Condition.from_rows(batch.rows, model.special.end_of_text)
    used = cond.drop_prompts(batch.drop)
    assert torch.equal(used.input_ids[0], cond.null_ids[0]) and torch.equal(used.input_ids[1], cond.input_ids[1])
    with torch.no_grad():
        hidden = model.hidden_states(model.embed(used, codes[:, :-1]))
        logits = model.logits(hidden)[:, -codes.shape[1]:]                                  # <|vision_start|> + codes
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), codes.flatten()), rtol=1e-5, atol=1e-6)
    assert metrics["image_tokens"] == codes.numel() and metrics["dropped"] == 0.5

    # a dropped row's prompt is invisible: two different prompts, both dropped, give the same loss
    from star.chat import t2i_row

    a = t2i_row(stream.tokenizer, stream.special, "a red cube left of a blue ball")
    b = t2i_row(stream.tokenizer, stream.special, "a blue ball left of a red cube")
    assert len(a.ids) == len(b.ids) and a.ids != b.ids
    one = dict(targets=batch.targets[:1], drop=torch.tensor([True]), sources=[], pixel_values=None,
               image_grid_thw=None, kinds=["t2i"])
    la, _ = stage.loss(model, type(batch)(rows=[a], **one))
    lb, _ = stage.loss(model, type(batch)(rows=[b], **one))
    assert torch.equal(la, lb)


def test_generation_stage_base_layer_branches_the_stack_off_the_base(tmp_path, tiny_base_dir, star_vq_dir, dataset):
    from star.training.stage_generation import GenerationStage

    stage = GenerationStage("generation")
    config = stage_config("generation", tmp_path, base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(dataset),
                          stack_layers=2, base_layer=2)
    model = stage.build(config, torch.device("cpu"), torch.float32)
    assert model.config.base_layer == 2 and model.config.stacks[0].source_layers == (2, 4)
    base_layers = model.base.language_model.layers
    for i, layer in enumerate(model.stacks[0].decoder.layers):
        assert torch.equal(layer.mlp.down_proj.weight, base_layers[2 + i].mlp.down_proj.weight)
    random = stage.build(stage_config("generation", tmp_path / "r", base=str(tiny_base_dir), vq=str(star_vq_dir),
                                      data=str(dataset), stack_layers=4, base_layer=3, stack_init="random"),
                         torch.device("cpu"), torch.float32)
    assert random.config.stacks[0].source_layers is None, "a random stack copies nothing, so any depth fits"


def same_batch(a, b) -> bool:
    """Deep equality of batches: every dataclass field, list item and tensor (bit for bit)."""
    import dataclasses

    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(same_batch(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_batch(x, y) for x, y in zip(a, b))
    return a == b


def test_streams_restart_exactly_at_any_position(tmp_path, tiny_base_dir, star_vq_dir, dataset):
    from star.training.data import Mixture

    for name, options in (("generation", dict(base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(dataset))),
                          ("editing", dict(base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(dataset))),
                          ("understanding", dict(base=str(tiny_base_dir), data=str(dataset)))):
        stage = get_stage(name)
        config = stage_config(name, tmp_path, **options)
        straight = stage.batches(config, 0, 1, 0)
        for _ in range(3):
            next(straight)
        fourth, resumed = next(straight), next(stage.batches(config, 0, 1, 3 * config.batch_size))
        assert same_batch(fourth, resumed), f"{name}: the batch differs on resume"

    mix = Mixture([7, 3], [0.75, 0.25], seed=1, cycle=4)
    picks = [mix.locate(i) for i in range(40)]
    assert sum(k == 0 for k, _ in picks) == 30, "exact shares per cycle"
    first_epoch = [j for k, j in picks if k == 0][:7]
    assert sorted(first_epoch) == list(range(7)), "each epoch visits every record once"
    assert picks == [Mixture([7, 3], [0.75, 0.25], seed=1, cycle=4).locate(i) for i in range(40)]
    for bad in (float("nan"), float("inf"), 0.0):               # nan/inf would never fill a cycle: refused
        with pytest.raises(ValueError, match="finite"):
            Mixture([7, 3], [1.0, bad], seed=1)


def test_editing_batches_carry_both_image_views_and_mix_t2i(tmp_path, tiny_base_dir, star_vq_dir, dataset):
    stage = get_stage("editing")
    config = stage_config("editing", tmp_path, base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(dataset),
                          kind_weights={"edit": 0.5, "t2i": 0.5})
    stream = stage.batches(config, 0, 1, 0)
    kinds = [stream.sample(i)[0] for i in range(20)]
    assert kinds.count("edit") == 10
    kind, row, target, drop, source, vit, feed = next(s for s in map(stream.sample, range(20)) if s[0] == "edit")
    assert feed is None, "clean teacher forcing unless edit_code_noise is set"
    assert source.shape == target.shape == (3, 16, 16), "not tokenised: both images as VQ-resolution pixels"
    assert row.ids.count(stream.special.vision_pad) == 16 and row.ids.count(stream.special.image_pad) == vit[2]
    assert row.null_ids.count(stream.special.vision_pad) == 16, "the null row keeps the image blocks"

    # reasoning_suffix: that share of T2I samples is the row implicit reasoning builds from the same prompt
    from star.chat import reasoning_row, t2i_row

    suffixed = stage.batches(stage_config("editing", tmp_path, base=str(tiny_base_dir), vq=str(star_vq_dir),
                                          data=str(dataset), kind_weights={"edit": 0.5, "t2i": 0.5},
                                          reasoning_suffix=0.5), 0, 1, 0)
    def text(i: int) -> str:
        k, j = stream.mixture.locate(i)
        return stream.sources[k].index.records[stream.sources[k].keep[j]]["text"]

    t2i = [i for i in range(200) if stream.sample(i)[0] == "t2i"]
    rows = [suffixed.sample(i)[1].ids for i in t2i]
    with_suffix = [ids == reasoning_row(stream.tokenizer, stream.special, text(i), text(i)).ids
                   for ids, i in zip(rows, t2i)]
    assert all(ids == t2i_row(stream.tokenizer, stream.special, text(i)).ids
               for ids, i, w in zip(rows, t2i, with_suffix) if not w), "the rest stay plain"
    assert 30 < sum(with_suffix) < 70, f"about half of {len(t2i)} T2I samples carry the suffix"
    with pytest.raises(ValueError, match="reasoning_suffix"):
        stage.batches(stage_config("editing", tmp_path, base=str(tiny_base_dir), vq=str(star_vq_dir),
                                   data=str(dataset), reasoning_suffix=1.5), 0, 1, 0)


def test_edit_code_noise_feeds_other_cells_of_the_target_and_keeps_the_loss_on_clean_codes(tmp_path, tiny_base_dir,
                                                                                            star_vq_dir, dataset):
    from star.model import Condition
    from star.training.stage_generation import GenerationStage, encode_images

    stage = GenerationStage("editing")
    config = stage_config("editing", tmp_path, base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(dataset),
                          kind_weights={"edit": 0.5, "t2i": 0.5}, edit_code_noise=0.5, stack_layers=2)
    stream = stage.batches(config, 0, 1, 0)
    samples = [stream.sample(i) for i in range(40)]
    feeds = [s[6] for s in samples if s[0] == "edit"]
    assert all(s[6] is None for s in samples if s[0] == "t2i"), "only edit samples are corrupted"
    assert all(f.shape == (15,) and int(f.min()) >= 0 and int(f.max()) < 16 for f in feeds), "cells of a 4x4 target"
    moved = torch.stack([f != torch.arange(15) for f in feeds]).float().mean()
    assert 0.3 < float(moved) < 0.6, f"about edit_code_noise of the inputs point elsewhere, got {float(moved):.2f}"
    again = stage.batches(config, 0, 1, 0)
    assert all(torch.equal(a, again.sample(i)[6]) for i, a in enumerate(s[6] for s in samples) if a is not None), \
        "the corruption is (seed, index), so a resumed run feeds the same codes"

    model = stage.build(config, torch.device("cpu"), torch.float32).eval()
    batch = next(s for s in (next(stream) for _ in range(10)) if any(f is not None for f in s.feeds))
    batch.drop = torch.zeros(len(batch.rows), dtype=torch.bool)
    with torch.no_grad():
        loss, metrics = stage.loss(model, batch)
    codes = encode_images(model.vq, batch.targets, torch.device("cpu"))                   # (b, 16)
    sources = encode_images(model.vq, batch.sources, torch.device("cpu"))
    cond = Condition.from_rows(batch.rows, model.special.end_of_text, source_codes=sources,
                               pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw)
    fed = torch.stack([codes[r, :-1] if f is None else codes[r, f] for r, f in enumerate(batch.feeds)])
    with torch.no_grad():
        logits = model.logits(model.hidden_states(model.embed(cond, fed)))[:, -16:]
        clean = model(cond, codes, drop_prompt=batch.drop).loss
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), codes.flatten()), rtol=1e-5, atol=1e-6)
    assert metrics["fed_corrupted"] == pytest.approx(float((fed != codes[:, :-1]).float().mean()))
    assert metrics["fed_corrupted"] > 0 and not torch.equal(loss, clean), "some fed codes changed, so the loss did"
    with torch.no_grad():
        same = model(cond, codes, drop_prompt=batch.drop, inputs=codes[:, :-1]).loss
    assert torch.equal(same, clean), "feeding the clean codes is plain teacher forcing"
    with pytest.raises(ValueError, match="inputs must be"):
        model(cond, codes, drop_prompt=batch.drop, inputs=codes)
    with pytest.raises(ValueError, match="edit_code_noise"):
        stage.options(stage_config("editing", tmp_path, base=str(tiny_base_dir), data=str(dataset),
                                   edit_code_noise=1.0))


# -----------------------------------------------------------------------------
# star tokenize


def test_tokenize_writes_codes_equal_to_encode_and_refuses_another_vq(tmp_path, dataset, star_vq_dir):
    import shutil

    from star.cli import main
    from star.pipeline import STARPipeline
    from star.training.data import load_rgb
    from star.training.tokenize import load_codes, tokenize_dataset, vq_fingerprint
    from star.vq import VQConfig, VQModel

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    assert main(["tokenize", "--data", str(data), "--vq", str(star_vq_dir), "--no-progress"]) == 0
    vq = VQModel.from_pretrained(star_vq_dir)
    table = load_codes(data, vq_fingerprint(star_vq_dir))
    assert len(table.rows) > 10 and table.grid == (4, 4)
    fake = types.SimpleNamespace(model=types.SimpleNamespace(vq=vq), device=torch.device("cpu"))
    for rel, row in list(table.rows.items())[:6]:
        expected = STARPipeline._encode_vq(fake, [load_rgb(str(data / rel))])          # (1, 16): the pipeline's
        assert torch.equal(table.codes[row].flatten().long(), expected[0]), rel
    assert tokenize_dataset(data, star_vq_dir, progress=False)["status"] == "up to date"
    index = json.loads((data / "codes.json").read_text())       # written before VQConfig gained a defaulted field
    del index["vq"]["config"]["local_decoder"]
    index["vq"]["config_sha256"] = "0" * 64
    (data / "codes.json").write_text(json.dumps(index))
    assert tokenize_dataset(data, star_vq_dir, progress=False)["status"] == "up to date"

    def variant(name: str, prefix: str, **config) -> Path:       # star_vq_dir with one part's weights changed
        from safetensors.torch import load_file

        state = load_file(str(star_vq_dir / "model.safetensors"))
        key = next(k for k in sorted(state) if k.startswith(prefix) and state[k].is_floating_point())
        state[key] = state[key] + 0.5
        folder = tmp_path / name
        VQModel(VQConfig(**{**vq.config.to_dict(), **config})).save_pretrained(folder)
        model = VQModel.from_pretrained(folder)
        model.load_state_dict(state)
        model.save_pretrained(folder)
        return folder

    retrained_decoder = variant("decoder_vq", "decoder.", local_decoder=not vq.config.local_decoder)
    assert load_codes(data, vq_fingerprint(retrained_decoder)) is not None, "a new decoder gives the same codes"
    assert tokenize_dataset(data, retrained_decoder, progress=False)["status"] == "up to date"
    for part in ("encoder.", "quantize."):
        with pytest.raises(ValueError, match="another tokenizer"):
            load_codes(data, vq_fingerprint(variant(part.strip("."), part)))

    torch.manual_seed(1)
    other = tmp_path / "other_vq"
    VQModel(VQConfig(**TINY_VQ)).save_pretrained(other)
    with pytest.raises(ValueError, match="another tokenizer"):
        load_codes(data, vq_fingerprint(other))
    with pytest.raises(ValueError, match="--overwrite"):
        tokenize_dataset(data, other, progress=False)
    assert tokenize_dataset(data, other, overwrite=True, progress=False)["status"] == "written"
    assert load_codes(data, vq_fingerprint(other)) is not None


def test_tokenize_cli_refuses_no_kinds_and_an_unknown_device(tmp_path, dataset, star_vq_dir, capsys):
    from star.cli import main

    assert main(["tokenize", "--data", str(dataset), "--kinds", " , ", "--no-progress"]) == 2
    assert "--kinds names no record kind" in capsys.readouterr().err
    assert main(["tokenize", "--data", str(dataset), "--vq", str(star_vq_dir), "--device", "nodev",
                 "--no-progress"]) == 2
    assert "device 'nodev' is not a torch device" in capsys.readouterr().err
    # records the reader skipped (a missing image, empty texts) are named on the summary line, not only in codes.json
    bad = corrupt(dataset, tmp_path / "bad")
    assert main(["tokenize", "--data", str(bad), "--vq", str(star_vq_dir), "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert "skipped 1 images (corrupt_image=1); skipped 3 records (missing_file=1, empty_text=2)" in line, line


# -----------------------------------------------------------------------------
# Bad data


def corrupt(dataset: Path, out: Path) -> Path:
    """A copy of `dataset` plus one corrupt image, one missing file and empty texts, in a new shard."""
    import shutil

    from star.data.records import build_manifest

    shutil.copytree(dataset, out)
    good = json.loads((out / "shard-00000.jsonl").read_text().splitlines()[0])["image"]
    (out / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    bad = [
        {"kind": "t2i", "image": "images/broken.png", "text": "a photo of a red circle"},
        {"kind": "edit", "source": "images/broken.png", "target": good, "text": "remove the circle",
         "edit_type": "remove"},
        {"kind": "t2i", "image": "images/missing.png", "text": "a photo of a blue star"},
        {"kind": "t2i", "image": good, "text": "   "},
        {"kind": "caption", "image": good, "text": ""},
        {"kind": "vqa", "image": "images/broken.png", "question": "how many stars are there?", "answer": "one"},
    ]
    (out / "shard-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    build_manifest(out)
    return out


def test_bad_records_are_skipped_and_counted_in_the_log(tmp_path, tiny_base_dir, star_vq_dir, dataset):
    from star.training.tokenize import tokenize_dataset

    data = corrupt(dataset, tmp_path / "bad")
    gen = dict(base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(data), stack_layers=1)
    train(stage_config("generation", tmp_path / "gen", steps=2, export=False, **gen), get_stage("generation"))
    warnings = read_log(tmp_path / "gen" / "log.jsonl")[-1]["data_warnings"]
    # the stage reads t2i records: their corrupt image and missing file; empty texts are found in any record
    assert warnings == {"corrupt_image": 1, "missing_file": 1, "empty_text": 2}, warnings

    train(stage_config("understanding", tmp_path / "und", steps=2, export=False, base=str(tiny_base_dir),
                       data=str(data)), get_stage("understanding"))
    warnings = read_log(tmp_path / "und" / "log.jsonl")[-1]["data_warnings"]
    assert warnings == {"corrupt_image": 1, "empty_text": 2}, warnings              # the vqa record's image

    summary = tokenize_dataset(data, star_vq_dir, progress=False)                 # corrupt images: counted there
    assert summary["skipped"] == {"corrupt_image": 1} and summary["reader_skipped"]["missing_file"] == 1
    train(stage_config("editing", tmp_path / "edit", steps=2, export=False, **gen), get_stage("editing"))
    warnings = read_log(tmp_path / "edit" / "log.jsonl")[-1]["data_warnings"]
    assert warnings == {"corrupt_image": 2, "missing_file": 1, "empty_text": 2}, warnings  # from the codes index


# -----------------------------------------------------------------------------
# The command line


def test_star_train_command_line(tmp_path, capsys):
    from star.cli import main

    assert main(["train", "--list"]) == 0
    assert "generation" in capsys.readouterr().out
    assert main(["train", "generation", "--data", "d1", "--data", "d2", "--steps", "7", "--out", str(tmp_path),
                 "--set", "stage_options.stack_layers=3", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["stage"] == "generation" and printed["steps"] == 7
    assert printed["stage_options"]["data"] == ["d1", "d2"] and printed["stage_options"]["stack_layers"] == 3
    assert main(["train", "generation", "--batch-size", "4", "--out", str(tmp_path)]) == 2   # a vq_train flag
    assert "--set" in capsys.readouterr().err
    assert main(["train", "--recipe", "star-7b", "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert "load_vq" in commands[0], "the upstream VQ-Model.pt is converted into OUT/vq first"
    assert [c.split()[2:4] for c in commands if c.startswith("star tokenize")] == [
        ["--data", str(tmp_path / "r" / "data" / d)] for d in ("edit", "t2i")]
    runs = [c for c in commands if c.startswith("torchrun")]
    assert [c.split()[5] for c in runs] == ["generation", "editing"]
    config = json.loads((tmp_path / "r" / "configs" / "generation.json").read_text())
    assert config["stage_options"]["stack_layers"] == 14 and config["parallel"] == "fsdp"
    assert main(["train", "--recipe", "star-7b", "--out", str(tmp_path / "r"), "--dry-run", "--only", "editing"]) == 0
    assert [c.split()[5] for c in capsys.readouterr().out.splitlines() if c.startswith("torchrun")] == ["editing"]
    assert main(["train", "--recipe", "star-7b", "--out", str(tmp_path / "r"), "--dry-run", "--only", "nope"]) == 2
    assert "error: recipe 'star-7b' has no stage 'nope'" in capsys.readouterr().err
    assert main(["train", "--recipe", "shapes", "--out", str(tmp_path / "s"), "--set", "generation.nope=3",
                 "--print-config"]) == 2
    assert "error: --set generation.nope: unknown key 'nope'" in capsys.readouterr().err
    assert main(["train", "--recipe", "shapes", "--out", str(tmp_path / "s"), "--set", "generation.steps=5",
                 "--set", "data.t2i.t2i=99", "--print-config"]) == 0
    recipe = json.loads(capsys.readouterr().out)
    gen = next(s for s in recipe["stages"] if s["stage"] == "generation")
    assert gen["config"]["steps"] == 5 and recipe["datasets"]["t2i"]["kinds"]["t2i"] == 99
    assert main(["train", "--recipe", "shapes", "--out", str(tmp_path / "s"), "--set", "data.t2i-edits.white_frac=0.5",
                 "--set", 'data.edit.edit_types={"compose": 3, "add": 1}', "--print-config"]) == 0
    datasets = json.loads(capsys.readouterr().out)["datasets"]
    assert datasets["t2i-edits"]["white_frac"] == 0.5 and datasets["t2i-edits"]["kinds"] == {"t2i": 8_000}
    assert datasets["edit"]["edit_types"] == {"compose": 3, "add": 1}
    for setting, error in [("data.t2i.white_fraction=0.5", "'white_fraction' is neither a dataset field"),
                           ('data.edit.edit_types={"paint": 1}', "--set data.edit.edit_types: edit type weights"),
                           ("data.t2i.nope=3", "nor a record kind"),
                           ("data.t2i-edits.varied_frac=0.5", "with a sum <= 1, got 0.7 and 0.5"),
                           ("data.t2i.t2i=many", "records per kind: whole numbers >= 0 expected, got ['many']")]:
        assert main(["train", "--recipe", "shapes", "--out", str(tmp_path / "s"), "--set", setting,
                     "--print-config"]) == 2
        assert error in capsys.readouterr().err, setting


# -----------------------------------------------------------------------------
# torchrun


@pytest.mark.slow
def test_generation_under_torchrun_fsdp_matches_one_process(tmp_path, tiny_base_dir, star_vq_dir, dataset):
    """2 ranks (gloo, FSDP2 on the stack's decoder layers, the adapter and the head) x 2 samples vs 1 rank x 4: the
    same losses and the same exported model; the stream's skip counts are logged once, not once per rank."""
    import os
    import signal
    import subprocess
    import sys

    options = dict(base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(corrupt(dataset, tmp_path / "bad")),
                   stack_layers=2)
    one = tmp_path / "one"
    train(stage_config("generation", one, steps=3, **options), get_stage("generation"))
    two = tmp_path / "two"
    sets = [f"stage_options.{k}={v}" for k, v in options.items()] + [
        "batch_size=4", "device=cpu", "progress=false", "checkpoint_every=0", "optim.warmup_steps=1", "ema_decay=0.0",
        "parallel=fsdp"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "star.training.cli", "generation", "--out", str(two), "--steps", "3"]
    cmd += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, output[-3000:]
    a, b = read_log(one / "log.jsonl"), read_log(two / "log.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["data_warnings"] == ra["data_warnings"] == {"corrupt_image": 1, "missing_file": 1, "empty_text": 2}
    from safetensors.torch import load_file

    wa, wb = load_file(str(one / "export" / "model.safetensors")), load_file(str(two / "export" / "model.safetensors"))
    # Sharded reductions sum gradients in another order. Adam normalises each element's step, so an element whose
    # gradient is ~0 may step the other way (one lr-sized step, ~1e-5 here) while every other element agrees. So:
    # (attention key biases have an exactly-zero true gradient, so theirs is pure rounding noise). Over all trained
    # tensors together, at most 0.1% of the elements may differ by more than 1e-6, and none by more than 1e-4.
    diffs = torch.cat([(wb[k].float() - wa[k].float()).abs().flatten() for k in wa])
    assert diffs.max() <= 1e-4, diffs.max()
    assert (diffs > 1e-6).float().mean() <= 1e-3, (int((diffs > 1e-6).sum()), diffs.numel())


def test_resume_warns_when_the_data_changed_since_the_checkpoint(tmp_path, tiny_base_dir, star_vq_dir, dataset,
                                                                 capsys):
    import shutil

    from star.data.records import build_manifest

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    options = dict(base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(data), stack_layers=2)
    train(apply_overrides(stage_config("generation", tmp_path / "run", steps=2, export=False, **options),
                          ["checkpoint_every=1"]), get_stage("generation"))
    resumed = apply_overrides(stage_config("generation", tmp_path / "run", steps=3, export=False, **options),
                              ["resume=true"])
    shard = data / "shard-00000.jsonl"
    shard.write_text("".join(shard.read_text().splitlines(keepends=True)[1:]))   # one record fewer
    build_manifest(data)
    capsys.readouterr()
    train(resumed, get_stage("generation"))
    assert "warning: the data changed since step_00000002" in capsys.readouterr().out


def test_activation_checkpointing_also_recomputes_the_base_when_the_adapter_trains(tmp_path, tiny_base_dir,
                                                                                   star_vq_dir, dataset, capsys):
    import re

    from star.base import FrozenBase

    options = dict(base=str(tiny_base_dir), vq=str(star_vq_dir), data=str(dataset), stack_layers=2)
    train(stage_config("generation", tmp_path / "plain", steps=2, export=False, **options), get_stage("generation"))
    config = apply_overrides(stage_config("generation", tmp_path / "ac", steps=2, export=False, **options),
                             ["activation_checkpointing=true"])
    capsys.readouterr()
    train(config, get_stage("generation"))
    blocks = int(re.search(r"activation checkpointing: (\d+) blocks", capsys.readouterr().out).group(1))
    assert blocks == 2 + 1 + 1 + FrozenBase.from_pretrained(tiny_base_dir).num_layers   # stack, adapter, head, base
    assert [r["loss"] for r in read_log(tmp_path / "ac" / "log.jsonl")] == \
        [r["loss"] for r in read_log(tmp_path / "plain" / "log.jsonl")]


def test_vq_stage_dictionary_warmup_hands_over_to_plain_vq_training(tmp_path, dataset):
    from star.training.stage_vq import VQOptions, dictionary_of

    options = dict(data=str(dataset), overrides=TINY_VQ, dict_warmup=2, kmeans_images=8, kmeans_iters=2)
    config = apply_overrides(stage_config("vq", tmp_path / "run", steps=3, export=False, **options),
                             ["log_every=1"])
    train(config, get_stage("vq"))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
           if '"loss"' in line]
    assert [("target_acc" in m) for m in log] == [True, True, False], "targets for the warm-up steps only"
    opts = VQOptions(**options)
    assert torch.equal(dictionary_of(opts, seed=0), dictionary_of(opts, seed=0)), "the same on every rank"
