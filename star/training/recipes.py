"""Training recipes: the whole STAR pipeline as data, and the runner that executes one end to end.

A recipe is a Python function `recipe(out) -> Recipe`; `Recipe.stages` is the ordered list of
`(stage, TrainConfig, data spec, name)` entries (`RecipeStage`; a stage may appear twice under two names, e.g. a
mostly-text understanding entry after the one with images), and the recipe also names what the stages start from
(the base, the VQ) and the ShapeWorld datasets they read. `run_recipe` then does, in order, skipping whatever is
already done (`--resume`):

    OUT/base-init/      the untrained tiny base (star.tiny_base, tokenizer trained on ShapeWorld text)   [shapes*]
    OUT/data/<name>/    ShapeWorld star-records datasets (the `star shapes dataset` generators), pre-tokenised
                        with the recipe's VQ where the stages want codes (`star tokenize`)
    OUT/understanding/  stage run (checkpoints, log.jsonl, loss.png, export/)  ─▶ published as OUT/base/
                        (a later understanding entry, OUT/understanding-text/, starts from it and publishes last)
    OUT/vq-train/       the vq stage run, only when no trained VQ is given      ─▶ published as OUT/vq/
    OUT/generation/     stage run; OUT/editing/ continues from its export
    OUT/model/          the final STAR folder: config.json (base = "../base", vq = "../vq") + model.safetensors;
                        `STARPipeline.from_pretrained(OUT/model)` / `star generate --model OUT/model` load it

The VQ stage's run folder is OUT/vq-train/ rather than OUT/vq/ because OUT/vq/ is the tokenizer folder the model
references. A stage counts as done when OUT/<run>/DONE exists (written after its export was published); the running
stage resumes from its own newest checkpoint. Recipes:

    shapes        the shipped ShapeWorld model, sized for <= 150 min on 2 CPU cores (docs/training.md explains)
    shapes-quick  the same pipeline with tiny budgets (a few minutes; used by the tests)
    star-3b/-7b   paper-scale configs for GPU clusters (Qwen2.5-VL base from a folder, STAR-VQ); documented, not run
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from star.io import atomic_write, replace_dir
from star.training.config import TrainConfig, apply_overrides, from_dict, to_dict

DONE = "DONE"


# -----------------------------------------------------------------------------
# What a recipe is


@dataclass(kw_only=True)
class TinyBaseSpec:
    """Sizes of the tiny ShapeWorld base (star.tiny_base.build_tiny_base keyword arguments)."""

    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 6
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_hidden_size: int = 128
    vision_intermediate_size: int = 384
    vision_depth: int = 4
    vision_heads: int = 2
    patch_size: int = 16
    merge_size: int = 1
    image_size: int = 128
    rope_theta: float = 1_000_000.0
    mrope_section: list[int] | None = None
    """Rotary frequencies per M-RoPE axis (time, height, width), highest first; None = Qwen's 16:24:24 proportion."""
    initializer_range: float = 0.02
    embedding_std: float | None = 0.5
    """Token-embedding std (None = initializer_range). At 0.02 the trained base's hidden states of two colour words
    end up 0.999 cosine-similar, which starves the stack of the prompt (docs/training.md)."""
    match_vision_norm: bool = False
    """Scale the random ViT's output so image tokens enter the language model as large as words (at embedding_std
    0.5 they are otherwise ~20x smaller)."""
    seed: int = 0


@dataclass(kw_only=True)
class DatasetSpec:
    """A ShapeWorld dataset the recipe writes when absent (what `star shapes dataset` writes, per kind)."""

    kinds: dict[str, int]
    """Records per kind (t2i, edit, vqa, caption, text_qa)."""
    seed: int = 0
    """Generator seed (kind k uses default_rng([seed, k]), as `star shapes dataset`)."""
    resolution: int = 128
    """Image side."""
    wise_reasoning: int = 0
    """Extra text_qa records teaching implicit reasoning: ShapeWISE train-split knowledge prompt -> the plain
    prompt that answers it (star.shapes.text.wise_answer_prompt), meta.task = "wise_reasoning"."""
    phrase_order: str = "reading"
    """t2i: a two-object prompt names its objects in the image's reading order, or as "drawn" (`star shapes
    dataset --phrase-order`)."""
    white_frac: float = 0.0
    """t2i: share of records drawn on extract's white backdrop (`star shapes dataset --white-frac`)."""
    varied_frac: float = 0.0
    """t2i: share of captioned scenes with the sizes, outlines and turns edits draw (`--varied-frac`)."""
    edit_types: dict[str, float] | None = None
    """edit: weight per edit type (`star shapes dataset --edit-types`; None = ImgEdit's proportions)."""
    tokenize: bool = False
    """Pre-tokenise its t2i / edit images with the recipe's VQ (`star tokenize`) before the stages read it."""

    def __post_init__(self):
        from star.data.records import KINDS
        from star.shapes.cli_data import check_t2i_fracs
        from star.shapes.edits import type_counts

        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"dataset kinds {unknown} unknown; kinds: {list(KINDS)}")
        counts = {"records per kind": self.kinds.values(), "wise_reasoning": [self.wise_reasoning]}
        for what, values in counts.items():
            if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in values):
                raise ValueError(f"{what}: whole numbers >= 0 expected, got {list(values)}")
        if self.edit_types is not None:
            type_counts(0, self.edit_types)  # names and weights checked, with the error naming them
        self.white_frac, self.varied_frac = float(self.white_frac), float(self.varied_frac)
        check_t2i_fracs(self.white_frac, self.varied_frac)


class RecipeStage(NamedTuple):
    """One entry of a recipe: (stage, TrainConfig, data spec = names of the recipe datasets it reads, entry name,
    reference minutes).

    The entry's name (`key`: `name`, else the stage) names its run folder, its `--set NAME.key=value` and `--only
    NAME`; it defaults to the stage, so only a stage that appears twice needs one. `minutes` is the entry's measured
    wall time on the machine the recipe was sized on: under a time budget the entries share the time in these
    proportions (by steps when an entry has none)."""

    stage: str
    config: TrainConfig
    data: tuple[str, ...]
    name: str = ""
    minutes: float = 0.0

    @property
    def key(self) -> str:
        return self.name or self.stage


@dataclass(kw_only=True)
class Recipe:
    name: str
    out: str
    base: TinyBaseSpec | str
    """A tiny base to build (and train in the understanding stage), or the folder of a released base (used as is)."""
    vq: str
    """'shipped' (star/assets/vq-shapes, or the vq stage when it is absent), 'train' (always the vq stage), or the
    path of a trained VQ folder / upstream VQ-Model.pt."""
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    stages: list[RecipeStage] = field(default_factory=list)
    notes: str = ""

    def __iter__(self) -> Iterator[RecipeStage]:
        return iter(self.stages)

    def stage(self, name: str) -> RecipeStage:
        for s in self.stages:
            if s.key == name:
                return s
        raise KeyError(f"recipe {self.name!r} has no stage {name!r}; stages: {[s.key for s in self.stages]}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "out": self.out,
                "base": dataclasses.asdict(self.base) if isinstance(self.base, TinyBaseSpec) else self.base,
                "vq": self.vq, "datasets": {k: dataclasses.asdict(v) for k, v in self.datasets.items()},
                "stages": [{"stage": s.stage, "name": s.key, "data": list(s.data), "minutes": s.minutes,
                            "config": to_dict(s.config)} for s in self.stages]}


def run_dir(out: Path, name: str) -> Path:
    """The run folder of a recipe entry inside a recipe's OUT (the vq stage runs in OUT/vq-train: OUT/vq is its
    product)."""
    return out / ("vq-train" if name == "vq" else name)


def _config(stage: str, out: Path, run: str | None = None, **fields) -> TrainConfig:
    """A stage's default config with recipe fields (nested dicts for optim / stage_options) on top; `run` is the
    entry's name when it is not the stage's (use `_named`)."""
    from star.training.stages import get_stage

    base = to_dict(get_stage(stage).default_config())
    optim = {**base["optim"], **fields.pop("optim", {})}
    options = {**base["stage_options"], **fields.pop("stage_options", {})}
    return from_dict(TrainConfig, {**base, **fields, "optim": optim, "stage_options": options,
                                   "out_dir": str(run_dir(out, run or stage))})


def _named(name: str, stage: str, out: Path, data: tuple[str, ...], minutes: float = 0.0, **fields) -> RecipeStage:
    """An entry whose name is not its stage's: the name is both its run folder and its key."""
    return RecipeStage(stage, _config(stage, out, run=name, **fields), data, name=name, minutes=minutes)


# -----------------------------------------------------------------------------
# The recipes


BASE_LAYER = 2
"""The shapes recipe's stack reads base layer 2; the second understanding entry trains only the layers from there up."""
WHITE_FRAC, VARIED_FRAC = 0.7, 0.3
"""The editing stage's second t2i dataset ("t2i-edits"): scenes on extract's white backdrop and scenes of the sizes,
outlines and turns edits draw (star.shapes.cli_data), which GenEval-style prompts never show."""
EDIT_SCENES_WEIGHT = 0.6
"""Its share of the editing stage's t2i samples (the GenEval-style t2i dataset has the rest)."""


def _t2i_with_edit_scenes(o: Path) -> list[dict]:
    """The editing stage's t2i sources: the generation stage's prompts and the scenes only edits draw."""
    return [{"path": str(o / "data" / "t2i"), "weight": 1 - EDIT_SCENES_WEIGHT},
            {"path": str(o / "data" / "t2i-edits"), "weight": EDIT_SCENES_WEIGHT}]


def shapes(out: str = "runs/shapes") -> Recipe:
    """The shipped ShapeWorld model (<= 150 min on 2 CPU cores; sizes justified in docs/training.md).

    Its stages at the rates `runs/full11` (understanding) and `runs/r16` (generation, editing) measured on the 2-core
    machine sum to ~147 min (docs/training.md; each entry's `minutes`); at one thread beside another job about twice
    as slow. On a 2-core Zen 3 without bf16 instructions the same steps take ~263 min: `--time-budget 150`
    (run_recipe's time_budget_min) shortens the stages to fit, in the proportions of their `minutes`. The stack
    stages run under bf16 autocast on a CPU that multiplies bf16 natively (`cpu_has_bf16`; fp32 elsewhere): x1.48
    per editing step, x1.14 per generation step, losses as fp32's; the understanding entries stay fp32 (not measured
    in bf16). The base's ViT is random and stays frozen, its output scaled to the
    words' size (`match_vision_norm`): trained at lr 2e-3 it erased shapes, and at its initial size the language
    model hardly used it. The first understanding entry runs at lr 5e-4, the fastest setting for the in-context
    lookup ShapeVQA needs, for 1,500 steps (ShapeVQA 0.48 / 0.58 / 0.64 after 300 / 600 / 900 steps of a 900-step
    schedule in `runs/s10e`, 0.75 after these 1,500 in `runs/full11`); it also keeps the colour words apart, which
    made the generation stage learn ~3x sooner.
    The second understanding entry
    (`understanding-text`, 1,000 steps at lr 1e-3) trains the base's layers from BASE_LAYER up only, so what the stack
    reads (embeddings, the layers below, ViT) is the image entry's, bit for bit: it teaches the facts and implicit
    reasoning (40 % of its rows) and goes on with ShapeVQA (60 %), which lifts ShapeVQA from 0.75 to 0.91 (a quarter
    ShapeVQA at lr 2e-3 kept it at 0.75; `runs/u12a`).
    Generation runs 2,400 steps (`runs/full11`'s ShapeGenEval curve is flat from there: 0.932 / 0.931 / 0.932 at
    2,400 / 2,800 / 3,200); its two-object prompts name the objects in the image's reading order (DatasetSpec
    .phrase_order), so the raster-order generator binds a colour by its place in the prompt. The stack reads base
    layer 2 (`base_layer`), which makes a generation step ~1.45x cheaper. The adapter adds a learned embedding of each
    code's grid cell (`cell_embedding`): with 1-D positions alone the stack hardly knows a code's column (left/right
    was drawn at chance) and learnt colour binding ~2x later. Editing uses source-aligned code positions
    (`edit_code_positions="source"`), with which 900 steps at lr 1e-3 edit better and keep text-to-image
    (docs/training.md); it runs 900 steps on half edits, half T2I (at lr 1e-3 on a quarter T2I the first few hundred
    steps broke the placement the cell table had taught, position 0.87 -> 0.58); half of its T2I samples carry the
    implicit-reasoning suffix (`reasoning_suffix`), which the generator otherwise never sees. Its 12,000 edits are
    seen ~1.2 times (going from 4,000 to 24,000 edits left ShapeImgEdit where it was, `runs/shapes5`; 24,000 cost 5
    more minutes to write and tokenise). Editing is undertrained at 900 steps (kept objects are copied better up to
    2,100, ShapeImgEdit 1.94 -> 2.49 in `runs/e13b`); bf16 pays for 1,800 steps in the time fp32 took for ~1,150,
    which lifts ShapeImgEdit from 2.39 (900 steps, `runs/c14c`) to 2.58 (`runs/r16`, the shipped model; second
    decoder); lr 1e-3 (min 2e-4) rather than 5e-4 (at 900 steps: 1.97 -> 2.30; 2e-3: 2.20). 0.3 of its samples
    (0.6 of its T2I) come from `t2i-edits`, 8,000 captioned scenes of what only edits draw (WHITE_FRAC on extract's
    white backdrop, the rest small/large, outline and turned objects; ~2 min to write and tokenise): GenEval-style
    prompts show only medium solid upright objects on backdrops other than white, so extract drew each class in one
    colour of its own; 600 steps with on-white scenes from the ninth shipped model lift ShapeImgEdit 2.58 -> 2.81
    (extract 2.19 -> 3.28; `runs/w19a`), 600 more with this mix 2.93 (`runs/w19c`, the shipped model; nineteenth
    session). Sampling defaults: EMA
    weights; T2I temperature 0.7, no top-k, CFG 1.5 (a sweep of the second full run); edits greedy at CFG 2, which
    helps once the editor copies objects (thirteenth session; docs/training.md), and CFG 1.25 once an edit has
    departed from the source (`guidance_after_change`, twentieth session). The vq stage runs only when the
    shipped tokenizer is missing (then add ~20 min: 2,500 steps with every cell's code fixed by the
    exact-tile dictionary, as the shipped tokenizer was trained).
    """
    from star.training.trainer import cpu_has_bf16

    o = Path(out)
    sampling = {"guidance_scale": 1.5, "top_k": 0, "top_p": 1.0, "temperature": 0.7}
    edit_sampling = {"guidance_scale": 2.0, "top_k": 0, "top_p": 1.0, "temperature": 0.0, "guidance_after_change": 1.25}
    stack_precision = "bf16" if cpu_has_bf16() else "auto"      # the stack stages; understanding stays fp32
    return Recipe(
        name="shapes", out=out,
        base=TinyBaseSpec(match_vision_norm=True),
        vq="shipped",
        datasets={
            "understanding": DatasetSpec(kinds={"vqa": 24_000, "caption": 3_000, "text_qa": 1_500}, seed=101,
                                         wise_reasoning=3_000),
            "t2i": DatasetSpec(kinds={"t2i": 40_000}, seed=102, tokenize=True),
            "edit": DatasetSpec(kinds={"edit": 12_000}, seed=103, tokenize=True),
            "t2i-edits": DatasetSpec(kinds={"t2i": 8_000}, seed=105, white_frac=WHITE_FRAC, varied_frac=VARIED_FRAC,
                                     tokenize=True),
            "vq": DatasetSpec(kinds={"t2i": 3_000, "edit": 1_000}, seed=104),
        },
        stages=[
            RecipeStage("understanding", _config(
                "understanding", o, steps=1_500, batch_size=32, checkpoint_every=100,
                optim=dict(lr=5e-4, min_lr=5e-5, warmup_steps=60, weight_decay=0.05),
                stage_options=dict(base=str(o / "base-init"), data=[str(o / "data" / "understanding")],
                                   max_turns=8, tasks={"vqa": 0.75, "caption": 0.1, "text_qa": 0.05, "wise": 0.07,
                                                       "caption_lm": 0.03}, train_vision=False)), ("understanding",),
                minutes=44),
            _named(
                "understanding-text", "understanding", o, ("understanding",), minutes=22, steps=1_000, batch_size=32,
                checkpoint_every=250, optim=dict(lr=1e-3, min_lr=1e-4, warmup_steps=60, weight_decay=0.05),
                stage_options=dict(base=str(o / "understanding" / "export"), data=[str(o / "data" / "understanding")],
                                   tasks={"vqa": 0.6, "text_qa": 0.15, "wise": 0.25}, freeze_layers=BASE_LAYER,
                                   train_vision=False)),
            RecipeStage("vq", _config(
                "vq", o, steps=2_500, batch_size=16, checkpoint_every=250,
                optim=dict(lr=2e-3, min_lr=2e-4, warmup_steps=100, weight_decay=0.0),
                stage_options=dict(data=str(o / "data" / "vq"), preset="shapes", dict_warmup=2_500,
                                   kmeans_images=4_000)), ("vq",), minutes=20),
            RecipeStage("generation", _config(
                "generation", o, steps=2_400, batch_size=32, checkpoint_every=200, snapshot_every=400, ema_decay=0.999,
                precision=stack_precision,
                optim=dict(lr=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.05),
                stage_options=dict(base=str(o / "base"), vq=str(o / "vq"), data=[str(o / "data" / "t2i")],
                                   stack_layers=4, adapter_depth=2, cell_embedding=True, train_adapter=True,
                                   cfg_dropout=0.1, base_layer=BASE_LAYER, sampling=sampling,
                                   edit_sampling=edit_sampling)),
                        ("t2i",), minutes=26),
            RecipeStage("editing", _config(
                "editing", o, steps=1_800, batch_size=32, checkpoint_every=50, snapshot_every=300, ema_decay=0.995,
                precision=stack_precision,
                optim=dict(lr=1e-3, min_lr=2e-4, warmup_steps=100, weight_decay=0.05),
                stage_options=dict(base=str(o / "base"), vq=str(o / "vq"), init=str(o / "generation" / "export"),
                                   data=[str(o / "data" / "edit"), *_t2i_with_edit_scenes(o)],
                                   kind_weights={"edit": 0.5, "t2i": 0.5}, train_adapter=False,
                                   edit_code_positions="source", cfg_dropout=0.1, reasoning_suffix=0.5,
                                   sampling=sampling, edit_sampling=edit_sampling)), ("edit", "t2i", "t2i-edits"),
                minutes=38),
        ],
        notes="sizes and measured rates: docs/training.md, 'The shapes recipe'",
    )


QUICK_VQ = dict(patch_size=1, ch=8, ch_mult=[1, 2, 2, 2], num_res_blocks=1, decoder_res_blocks=1, attn_heads=1,
                z_channels=8, norm_groups=4, codebook_size=64, code_dim=8, resolution=32)


def shapes_quick(out: str = "runs/shapes-quick") -> Recipe:
    """The shapes pipeline end to end on tiny budgets (a few minutes on 2 CPU cores). Trains its own tiny VQ
    (32 px -> 4x4 codes) so its time does not depend on the shipped tokenizer; not a useful model."""
    o = Path(out)
    sampling = {"guidance_scale": 3.0, "top_k": 1, "top_p": 1.0, "temperature": 1.0}
    edit_sampling = {"guidance_scale": 3.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
    quick_optim = dict(warmup_steps=5)
    return Recipe(
        name="shapes-quick", out=out,
        base=TinyBaseSpec(vocab_size=800, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
                          num_kv_heads=2, vision_hidden_size=32, vision_intermediate_size=64, vision_depth=2,
                          vision_heads=2, patch_size=8, merge_size=2, image_size=64),
        vq="train",
        datasets={
            "understanding": DatasetSpec(kinds={"vqa": 120, "caption": 30, "text_qa": 30}, seed=101,
                                         wise_reasoning=30, resolution=64),
            "t2i": DatasetSpec(kinds={"t2i": 120}, seed=102, resolution=64, tokenize=True),
            "edit": DatasetSpec(kinds={"edit": 60}, seed=103, resolution=64, tokenize=True),
            "t2i-edits": DatasetSpec(kinds={"t2i": 30}, seed=105, resolution=64, white_frac=WHITE_FRAC,
                                     varied_frac=VARIED_FRAC, tokenize=True),
            "vq": DatasetSpec(kinds={"t2i": 60}, seed=104, resolution=64),
        },
        stages=[
            RecipeStage("understanding", _config(
                "understanding", o, steps=12, batch_size=8, checkpoint_every=6, optim=quick_optim,
                stage_options=dict(base=str(o / "base-init"), data=[str(o / "data" / "understanding")],
                                   max_turns=4)), ("understanding",)),
            _named(
                "understanding-text", "understanding", o, ("understanding",), steps=6, batch_size=8,
                checkpoint_every=3, optim=quick_optim,
                stage_options=dict(base=str(o / "understanding" / "export"), data=[str(o / "data" / "understanding")],
                                   tasks={"text_qa": 0.3, "wise": 0.7}, freeze_layers=BASE_LAYER,
                                   train_vision=False)),
            RecipeStage("vq", _config(
                "vq", o, steps=12, batch_size=8, checkpoint_every=6, optim=dict(lr=1e-3, warmup_steps=2),
                stage_options=dict(data=str(o / "data" / "vq"), preset="shapes", overrides=QUICK_VQ)), ("vq",)),
            RecipeStage("generation", _config(
                "generation", o, steps=12, batch_size=8, checkpoint_every=6, ema_decay=0.99, optim=quick_optim,
                stage_options=dict(base=str(o / "base"), vq=str(o / "vq"), data=[str(o / "data" / "t2i")],
                                   stack_layers=2, base_layer=BASE_LAYER, cell_embedding=True, sampling=sampling,
                                   edit_sampling=edit_sampling)), ("t2i",)),
            RecipeStage("editing", _config(
                "editing", o, steps=8, batch_size=8, checkpoint_every=4, ema_decay=0.99, optim=quick_optim,
                stage_options=dict(base=str(o / "base"), vq=str(o / "vq"), init=str(o / "generation" / "export"),
                                   data=[str(o / "data" / "edit"), *_t2i_with_edit_scenes(o)],
                                   kind_weights={"edit": 0.75, "t2i": 0.25}, train_adapter=False,
                                   reasoning_suffix=0.5, sampling=sampling)), ("edit", "t2i", "t2i-edits")),
        ],
    )


def _paper(name: str, out: str, stack_layers: int, adapter_depth: int) -> Recipe:
    """STAR-3B / STAR-7B on a GPU cluster: released Qwen2.5-VL base (no understanding stage), upstream STAR-VQ.

    Data paths are placeholders under OUT/data/ (your own star-records datasets, pre-tokenised with
    `star tokenize --vq OUT/vq`); the base and VQ are `--set base=DIR --set vq=PATH` (an upstream VQ-Model.pt is
    converted once into the folder OUT/vq). Run each stage under torchrun (`star train --recipe star-7b --out OUT
    --dry-run` prints the commands). Steps, batch sizes and
    learning rates are our proposal (research/paper.md §7: the paper's are unknown), sized for a 64-GPU job.
    """
    o = Path(out)
    sampling = {"guidance_scale": 1.1, "top_k": 1000, "top_p": 0.8, "temperature": 1.0}   # upstream defaults
    vit = dict(edit_vit_min_tokens=16, edit_vit_max_tokens=576, understand_vit_max_tokens=1024)
    common = dict(precision="bf16", parallel="fsdp", activation_checkpointing=True, checkpoint_every=1_000,
                  log_every=10)
    return Recipe(
        name=name, out=out,
        base=str(o / "qwen2.5-vl"),
        vq=str(o / "VQ-Model.pt"),
        stages=[
            RecipeStage("generation", _config(
                "generation", o, steps=200_000, batch_size=1024, ema_decay=0.9999, **common,
                optim=dict(lr=1e-4, min_lr=1e-5, warmup_steps=2_000, weight_decay=0.05),
                stage_options=dict(base=str(o / "qwen2.5-vl"), vq=str(o / "vq"),
                                   data=[str(o / "data" / "t2i")], stack_layers=stack_layers,
                                   adapter_depth=adapter_depth, cfg_dropout=0.1, sampling=sampling, **vit)), ("t2i",)),
            RecipeStage("editing", _config(
                "editing", o, steps=50_000, batch_size=512, ema_decay=0.9999, **common,
                optim=dict(lr=5e-5, min_lr=5e-6, warmup_steps=1_000, weight_decay=0.05),
                stage_options=dict(base=str(o / "qwen2.5-vl"), vq=str(o / "vq"),
                                   init=str(o / "generation" / "export"),
                                   data=[str(o / "data" / "edit"), str(o / "data" / "t2i")],
                                   kind_weights={"edit": 0.7, "t2i": 0.3}, cfg_dropout=0.1, sampling=sampling,
                                   **vit)), ("edit", "t2i")),
        ],
        notes="understanding is a no-op for a released Qwen2.5-VL: the base folder is used as is",
    )


def star_3b(out: str = "runs/star-3b") -> Recipe:
    return _paper("star-3b", out, stack_layers=16, adapter_depth=2)


def star_7b(out: str = "runs/star-7b") -> Recipe:
    return _paper("star-7b", out, stack_layers=14, adapter_depth=4)


RECIPES: dict[str, Callable[[str], Recipe]] = {
    "shapes": shapes,
    "shapes-quick": shapes_quick,
    "star-3b": star_3b,
    "star-7b": star_7b,
}


def get_recipe(name: str, out: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; recipes: {sorted(RECIPES)}")
    return RECIPES[name](out)


# -----------------------------------------------------------------------------
# --set on a recipe


def apply_recipe_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """`STAGE.key=value` (a TrainConfig key of that stage, e.g. generation.steps=50, generation.optim.lr=1e-4,
    editing.stage_options.new_stack=true), `all.key=value` (every stage), `data.NAME.KIND=N` /
    `data.NAME.FIELD=value` (a DatasetSpec field, e.g. `data.edit.edit_types={"compose": 3, "add": 1}`),
    `base.FIELD=value` (tiny base spec, or base=DIR), `vq=shipped|train|PATH`."""
    from star.data.records import KINDS
    from star.training.config import _parse_value

    stages = list(recipe.stages)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        head, _, rest = key.strip().partition(".")
        value = _parse_value(text)
        if head in ("vq", "base") and not rest:
            # stages that referenced the old base / VQ (or, for a base folder, the published OUT/base) follow it
            previous = {str(getattr(recipe, head))} | ({str(Path(recipe.out) / "base")} if head == "base" else set())
            setattr(recipe, head, str(value))
            for i, s in enumerate(stages):
                if str(s.config.stage_options.get(head)) in previous and not (head == "vq" and value in (
                        "shipped", "train")):
                    setting = f"stage_options.{head}={json.dumps(str(value))}"
                    stages[i] = s._replace(config=apply_overrides(s.config, [setting]))
        elif head == "base":
            if not isinstance(recipe.base, TinyBaseSpec):
                raise KeyError(f"--set {key}: recipe {recipe.name!r} uses a base folder, not a tiny base spec")
            recipe.base = from_dict(TinyBaseSpec, {**dataclasses.asdict(recipe.base), rest: value}, "base.")
        elif head == "data":
            name, _, fld = rest.partition(".")
            if name not in recipe.datasets:
                raise KeyError(f"--set {key}: no dataset {name!r}; datasets: {sorted(recipe.datasets)}")
            spec = dataclasses.asdict(recipe.datasets[name])
            fields = [f.name for f in dataclasses.fields(DatasetSpec) if f.name != "kinds"]
            if fld in fields:
                spec[fld] = value
            elif fld in KINDS:
                spec["kinds"] = {**spec["kinds"], fld: value}
            else:
                raise KeyError(f"--set {key}: {fld!r} is neither a dataset field ({fields}) nor a record kind "
                               f"({list(KINDS)})")
            try:
                recipe.datasets[name] = DatasetSpec(**spec)
            except ValueError as exc:
                raise ValueError(f"--set {key}: {exc}") from None
        else:
            targets = [i for i, s in enumerate(stages) if head in ("all", s.key)]
            if not targets:
                raise KeyError(f"--set {key}: {head!r} is not a stage of recipe {recipe.name!r} "
                               f"({[s.key for s in stages]}), nor all / data / base / vq")
            for i in targets:
                config = apply_overrides(stages[i].config, [f"{rest}={text}"], label=f"{stages[i].key}.")
                stages[i] = stages[i]._replace(config=config)
    recipe.stages = stages
    return recipe


# -----------------------------------------------------------------------------
# Preparation: the tiny base, the datasets, the codes


def shapeworld_corpus(seed: int = 0, n: int = 400) -> list[str]:
    """Texts the tiny base's tokenizer is trained on: every word of star.shapes.text.text_vocabulary plus generated
    prompts, captions, VQA questions and answers, ShapeWISE prompts and answers, edit instructions, and the
    understanding stage's fixed instructions."""
    import numpy as np

    from star.shapes.edits import EDIT_TYPES, EditImpossible, random_edit
    from star.shapes.sample import random_scene
    from star.shapes.text import (
        caption, random_geneval_metadata, text_vocabulary, vqa_questions, wise_answer_prompt, wise_fact_qa,
        wise_prompts,
    )
    from star.training.stage_understanding import CAPTION_LM_PROMPT, CAPTION_PROMPT

    rng = np.random.default_rng(seed)
    texts = [" ".join(text_vocabulary()), CAPTION_PROMPT, CAPTION_LM_PROMPT]
    for _ in range(n):
        texts.append(random_geneval_metadata(rng, split="train")["prompt"])
        scene = random_scene(rng)
        texts.append(caption(scene))
        texts += [q["question"] + " " + q["answer"] for q in vqa_questions(scene, rng)]
    for i, edit_type in enumerate(EDIT_TYPES * (n // 20 + 1)):
        try:
            texts.append(random_edit(rng, edit_type).instruction)
        except EditImpossible:
            pass
    texts += [f["question"] + " " + f["answer"] for f in wise_fact_qa()]
    texts += [w["Prompt"] + " " + wise_answer_prompt(w) for w in wise_prompts(n=min(n, 200), split="train")]
    return texts


def _atomic_dir(final: Path, build: Callable[[Path], Any]) -> None:
    """Build a folder under a temp name and rename it into place (a crash leaves no half folder at `final`)."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    replace_dir(tmp, final)


def build_base(spec: TinyBaseSpec, out: Path, log: Callable[[str], None]) -> None:
    from star.tiny_base import build_tiny_base

    if (out / "config.json").is_file():
        return
    t0 = time.perf_counter()
    _atomic_dir(out, lambda tmp: build_tiny_base(tmp, shapeworld_corpus(spec.seed), **dataclasses.asdict(spec)))
    log(f"built the untrained tiny base {out} ({time.perf_counter() - t0:.0f}s)")


def wise_reasoning_records(n: int, seed: int) -> Iterator[dict]:
    """text_qa records: a train-split ShapeWISE knowledge prompt -> the plain prompt that answers it.

    The world has only so many distinct knowledge prompts (about 2,000 in the benchmark's category proportions), so
    larger n is drawn in rounds of ROUND distinct prompts from successive seeds; a prompt may recur across rounds."""
    from star.shapes.text import wise_answer_prompt, wise_prompts
    from star.training.stage_understanding import WISE_TASK

    for k, start in enumerate(range(0, n, WISE_ROUND)):
        for item in wise_prompts(n=min(WISE_ROUND, n - start), seed=seed + 7919 * k, split="train"):
            yield {"kind": "text_qa", "question": item["Prompt"], "answer": wise_answer_prompt(item),
                   "meta": {"task": WISE_TASK, "category": item["Category"]}}


WISE_ROUND = 1_500


def build_dataset(spec: DatasetSpec, out: Path, log: Callable[[str], None]) -> None:
    """Write the dataset when absent: per kind, the records `star shapes dataset --kind KIND --n N --seed S` writes."""
    import numpy as np

    from star.data.records import KINDS, RecordWriter
    from star.shapes import vocab
    from star.shapes.cli_data import generate_records

    if (out / "manifest.json").is_file():
        return
    t0 = time.perf_counter()
    meta = {"world": "shapeworld", "vocab": vocab.VOCAB_VERSION, "split": "train", "seed": spec.seed,
            "resolution": spec.resolution, "aligned": True, "kinds": spec.kinds,
            "wise_reasoning": spec.wise_reasoning, "phrase_order": spec.phrase_order,
            "white_frac": spec.white_frac, "varied_frac": spec.varied_frac, "edit_types": spec.edit_types,
            "written_by": "star.training.recipes"}
    with RecordWriter(out, meta=meta, overwrite=True) as writer:
        for kind, n in spec.kinds.items():
            rng = np.random.default_rng([spec.seed, list(KINDS).index(kind)])
            for record in generate_records(kind, n, rng, resolution=spec.resolution, phrase_order=spec.phrase_order,
                                           white_frac=spec.white_frac, varied_frac=spec.varied_frac,
                                           edit_types=spec.edit_types):
                writer.add(record)
        for record in wise_reasoning_records(spec.wise_reasoning, spec.seed):
            writer.add(record)
    log(f"wrote dataset {out}: {writer.counts} ({time.perf_counter() - t0:.0f}s)")


# -----------------------------------------------------------------------------
# The runner


def _copy_folder(src: Path, dst: Path) -> None:
    _atomic_dir(dst, lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))


def assemble_model(export: Path, out: Path) -> Path:
    """OUT/model: the trained parts of `export`; config.json references ../base and ../vq when the recipe
    published them there (the ShapeWorld recipes), else the absolute base / VQ paths the stages trained with."""
    from safetensors.torch import load_file

    from star.checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_folder
    from star.config import STARConfig

    config = STARConfig.from_json(export / CONFIG_NAME)
    base = "../base" if (out / "base" / "config.json").is_file() else str(Path(config.base).resolve())
    vq = "../vq" if (out / "vq" / "model.safetensors").is_file() else str(Path(config.vq).resolve())
    config = STARConfig.from_dict({**config.to_dict(), "base": base, "vq": vq})
    state = load_file(str(export / WEIGHTS_NAME))
    _atomic_dir(out / "model", lambda tmp: save_folder(config, state, tmp))
    return out / "model"


def _time_spent(run: Path) -> float:
    """Seconds a stage's interrupted run spent up to its newest checkpoint (0 for none): a trainer's time budget
    counts them, so a resumed stage's budget is what they took plus its share of this call's time."""
    from star.training import checkpointing

    newest = checkpointing.latest_checkpoint(run / "checkpoints")
    return float(checkpointing.read_trainer_state(newest).get("budget_spent_s", 0.0)) if newest else 0.0


def run_recipe(recipe: Recipe, *, resume: bool = False, only: Collection[str] | None = None,
               time_budget_min: float = 0.0, log: Callable[[str], None] = print) -> Path | None:
    """Run every stage of `recipe` in order (skipping completed ones when resuming); returns OUT/model.

    `only` restricts the run to the named stages (e.g. the understanding stage while a tokenizer trains elsewhere);
    the others are skipped and OUT/model is assembled only once a generation or editing stage has finished (else
    None is returned). Calling again with `resume=True` picks up the rest.

    `time_budget_min` (0 = none) is the wall time this call may take: the datasets are written first, then each
    stage still to train gets the time left in proportion to its reference `minutes` among those still to train,
    as its TrainConfig.time_budget_s (the trainer shortens its steps to fit). A budget as long as the recipe's
    reference time, on the machine it was sized on, keeps nearly every step (the trainer's 3 % margin aside)."""
    from star.training.stages import get_stage
    from star.training.tokenize import skip_note, tokenize_dataset
    from star.training.trainer import train

    check_only(recipe, only)
    out = Path(recipe.out)
    record = out / "recipe.json"
    if record.is_file() and not resume:
        raise ValueError(f"{out} already holds a recipe run ({record}); pass --resume to continue it, or choose "
                         f"another --out")
    out.mkdir(parents=True, exist_ok=True)
    if record.is_file():
        before = json.loads(record.read_text())
        if before != recipe.to_dict():
            log(f"warning: the recipe differs from the one {out} was started with; completed stages are kept")
    atomic_write(record, json.dumps(recipe.to_dict(), indent=2) + "\n")
    started = time.perf_counter()

    # the base the stages start from
    if isinstance(recipe.base, TinyBaseSpec):
        build_base(recipe.base, out / "base-init", log)
    else:
        if not (Path(recipe.base) / "config.json").is_file():
            raise FileNotFoundError(f"recipe {recipe.name!r}: base folder {recipe.base} has no config.json; pass "
                                    f"--set base=DIR (e.g. a local Qwen2.5-VL-7B-Instruct)")

    # the tokenizer: shipped, given, or trained by the vq stage (not needed when only the understanding stage runs)
    vq_dir = out / "vq"
    needs_vq = only is None or any(recipe.stage(name).stage != "understanding" for name in only)
    train_vq = recipe.vq == "train"
    if not needs_vq:
        pass
    elif recipe.vq == "shipped" and not (vq_dir / "model.safetensors").is_file():
        from star.vq import SHIPPED_SHAPES_DIR

        if (SHIPPED_SHAPES_DIR / "model.safetensors").is_file():
            _copy_folder(SHIPPED_SHAPES_DIR, vq_dir)
            log(f"vq: the shipped tokenizer {SHIPPED_SHAPES_DIR} -> {vq_dir}")
        else:
            train_vq = True
            log(f"vq: no shipped tokenizer at {SHIPPED_SHAPES_DIR}; the vq stage trains one")
    elif recipe.vq not in ("shipped", "train") and not (vq_dir / "model.safetensors").is_file():
        src = Path(recipe.vq)
        if src.is_dir():
            _copy_folder(src, vq_dir)
        elif src.is_file():                               # an upstream VQ-Model.pt: converted once into OUT/vq
            from star.vq import load_vq

            _atomic_dir(vq_dir, lambda tmp: load_vq(str(src)).save_pretrained(tmp))
            log(f"vq: converted {src} -> {vq_dir}")
        else:
            raise FileNotFoundError(f"recipe {recipe.name!r}: VQ {src} not found (--set vq=PATH)")

    def skipped(entry: RecipeStage) -> str | None:
        """Why this call does not train `entry` ("" = silently), or None when it does."""
        if entry.stage == "vq" and not train_vq:
            return ""
        if entry.stage == "understanding" and not isinstance(recipe.base, TinyBaseSpec):
            return ""                                     # a released base is used as is
        if (Path(entry.config.out_dir) / DONE).is_file():
            return f"done ({Path(entry.config.out_dir) / DONE}), skipped"
        if only is not None and entry.key not in only:
            return f"not in --only {list(only)}, left for a later run"
        return None

    def prepare(entry: RecipeStage, codes: bool = True) -> None:
        """Write the recipe datasets the entry reads, and their codes where it wants them (`codes`)."""
        for data in entry.data:
            spec = recipe.datasets.get(data)
            if spec is None:
                continue                                  # a user-provided dataset path
            build_dataset(spec, out / "data" / data, log)
            if spec.tokenize and codes:
                t0 = time.perf_counter()
                summary = tokenize_dataset(out / "data" / data, vq_dir, progress=False)
                log(f"tokenize {data}: {summary['status']}, {summary['images']} images{skip_note(summary)} "
                    f"({time.perf_counter() - t0:.0f}s)")

    todo = [entry for entry in recipe.stages if skipped(entry) is None]
    if time_budget_min:
        for entry in todo:                                # data first, so the stages share what is left
            prepare(entry, codes=(vq_dir / "model.safetensors").is_file())
        deadline = started + 60 * time_budget_min
        weights = [entry.minutes for entry in todo] if all(e.minutes for e in todo) else \
            [entry.config.steps for entry in todo]
    final_export = None
    for entry in recipe.stages:
        name, stage, config = entry.key, entry.stage, entry.config
        run = Path(config.out_dir)
        reason = skipped(entry)
        if reason is not None:
            if reason:
                log(f"{name}: {reason}")
            if stage in ("generation", "editing") and (run / DONE).is_file():
                final_export = run / "export"
            continue
        prepare(entry)
        if time_budget_min:
            k = todo.index(entry)
            left = deadline - time.perf_counter()
            share = max(left, 0.0) * weights[k] / sum(weights[k:])
            spent = _time_spent(run)
            log(f"{name}: {share / 60:.1f} of the {max(left, 0.0) / 60:.1f} min left"
                + (f", after the {spent / 60:.1f} min its interrupted run spent" if spent else "")
                + ("" if left > 0 else " (the budget is spent: it trains only the steps that time the rate)"))
            config = dataclasses.replace(config, time_budget_s=spent + max(share, 1e-3))
        log(f"{name}: training in {run}")
        t0 = time.perf_counter()
        train(dataclasses.replace(config, resume=True), get_stage(stage))
        export = run / "export"
        if stage == "understanding":
            _copy_folder(export, out / "base")
        elif stage == "vq":
            _copy_folder(export, out / "vq")
        else:
            final_export = export
        atomic_write(run / DONE, json.dumps({"stage": stage, "name": name,
                                             "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
        log(f"{name}: done in {time.perf_counter() - t0:.0f}s")
    if final_export is None and only is not None:
        log(f"recipe {recipe.name}: stages {list(only)} done; no generation/editing export yet, so no OUT/model")
        return None
    if final_export is None:
        raise RuntimeError(f"recipe {recipe.name!r} trained no generation or editing stage; nothing to assemble")
    model = assemble_model(final_export, out)
    log(f"recipe {recipe.name}: {model} ready ({time.perf_counter() - started:.0f}s this run)")
    return model


def check_only(recipe: Recipe, only: Collection[str] | None) -> None:
    """Refuse stage names (`--only`) the recipe does not have."""
    names = [s.key for s in recipe.stages]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f"recipe {recipe.name!r} has no stage {unknown[0]!r}; its stages are {names}")


def dry_run(recipe: Recipe, only: Collection[str] | None = None) -> list[str]:
    """Write OUT/configs/<entry>.json and return the commands that run each stage by hand (e.g. under torchrun);
    with `only`, the commands of those stages alone."""
    check_only(recipe, only)
    out = Path(recipe.out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    commands = []
    if recipe.vq not in ("shipped", "train") and Path(recipe.vq).suffix in (".pt", ".pth", ".bin"):
        convert = f"from star.vq import load_vq; load_vq('{recipe.vq}').save_pretrained('{out / 'vq'}')"
        commands.append(f'python -c "{convert}"')
    for data in sorted({d for entry in recipe.stages for d in entry.data}):
        if data not in recipe.datasets:
            commands.append(f"star tokenize --data {out / 'data' / data} --vq {out / 'vq'}")
    for entry in recipe.stages:
        if only and entry.key not in only:
            continue
        path = out / "configs" / f"{entry.key}.json"
        atomic_write(path, json.dumps(to_dict(entry.config), indent=2) + "\n")
        launcher = "torchrun --nproc_per_node 8 -m star.training.cli" if entry.config.parallel == "fsdp" \
            else "star train"
        commands.append(f"{launcher} {entry.stage} --config {path} --resume")
    return commands


__all__ = ["DatasetSpec", "RECIPES", "Recipe", "RecipeStage", "TinyBaseSpec", "apply_recipe_overrides",
           "get_recipe", "run_recipe", "shapes", "shapes_quick", "star_3b", "star_7b"]
