"""The `understanding` stage: train a base vision-language model itself (the tiny ShapeWorld base only).

STAR never trains its base after this stage: generation and editing freeze it, so understanding stays exactly what
this stage leaves (research/paper.md §2.2). For a released Qwen2.5-VL there is nothing to do here: the paper-scale
recipes skip the stage and use the released folder as the base.

Tasks (each a chat conversation, loss on the assistant's answer tokens and their closing `<|im_end|>` only):

    vqa         image + up to `max_turns` ShapeVQA questions about it, one per turn   (vqa records, grouped by image)
    caption     image + "describe the image." -> caption                              (caption records)
    text_qa     ShapeWISE facts as text questions -> one-word answers                 (text_qa records)
    wise        implicit reasoning: a ShapeWISE knowledge prompt -> the plain prompt that answers it
                (text_qa records with meta.task = "wise_reasoning"; star.shapes.text.wise_answer_prompt)
    caption_lm  caption language modelling: "describe a scene." -> a caption, no image (caption records' text)
    scene_qa    a ShapeVQA question about a scene given as its caption instead of its image, no image:
                "{caption}. {question}" -> answer (vqa records with meta.scene; families a caption answers)

The first turn is token for token the prompt the pipeline builds for `understand` (chat.understand_ids, the same ViT
preprocessing), so what is trained is what is asked at inference. Later turns follow the base's chat template.

Data flow: records ─▶ conversations (image?, [(question, answer), ...]) ─▶ ids + labels (-100 outside answers) ─▶
two parts per micro-batch, the image rows and the text rows, each left-padded to its own length (a 30-token fact
question is not padded to a 300-token image conversation; with several processes all rows form one part, so every
rank runs the same number of forwards, which FSDP's per-forward all-gathers need) ─▶ HF forward per part (ViT
features scattered into <|image_pad|>) ─▶ logits ─▶ CE over the labelled positions of all parts.
Export: a complete HF base folder (weights, tokenizer, chat template, image processor) for FrozenBase.from_pretrained.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from star.training.config import OptimConfig, TrainConfig, from_dict
from star.training.data import (
    Mixture,
    RecordIndex,
    Warnings,
    load_rgb,
    merge_counts,
    parse_sources,
    sample_rng,
)
from star.training.parallel import micro_batch_ranges
from star.views import vit_inputs

CAPTION_PROMPT = "describe the image."
CAPTION_LM_PROMPT = "describe a scene."
WISE_TASK = "wise_reasoning"            # meta.task of text_qa records that teach implicit reasoning
TASKS = ("vqa", "caption", "text_qa", "wise", "caption_lm", "scene_qa")
SCENE_QA_FAMILIES = ("count", "color", "shape", "exist")   # a caption states these; not every relation
IGNORE = -100


@dataclass(kw_only=True)
class UnderstandingOptions:
    base: str = ""
    """Folder of the base to train (e.g. a star.tiny_base.build_tiny_base folder)."""
    data: Any = None
    """Dataset(s) with vqa / caption / text_qa records: a path, a list, or [{path, kinds, weight}]."""
    tasks: dict[str, float] = field(default_factory=lambda: {"vqa": 0.6, "caption": 0.15, "text_qa": 0.1,
                                                             "wise": 0.1, "caption_lm": 0.05})
    """Share of each task in the stream (tasks without records are dropped)."""
    max_turns: int = 8
    """Most questions about one image in one vqa conversation."""
    train_vision: bool = True
    """Train the ViT too (False: only the language model and its head)."""
    freeze_layers: int = 0
    """Keep the token embeddings and the first N language-model layers frozen. With train_vision=False too, all that
    a STAR stack reading base layer N (`STARConfig.base_layer`) sees stays bit-identical, so a later understanding
    entry can teach the base's upper layers (e.g. implicit reasoning) without changing its text-to-image input."""
    vit_max_tokens: int | None = None
    """ViT tokens per image (None = the image processor's budget); must equal the STAR model's
    understand_vit_max_tokens for the understanding prompt to match."""
    check_images: bool = True
    """Decode every image once when indexing (skips corrupt files up front)."""

    def __post_init__(self):
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"stage_options.tasks: unknown tasks {sorted(unknown)}; tasks are {TASKS}")
        if self.max_turns < 1:
            raise ValueError(f"stage_options.max_turns must be >= 1, got {self.max_turns}")
        if self.freeze_layers < 0:
            raise ValueError(f"stage_options.freeze_layers must be >= 0, got {self.freeze_layers}")


# -----------------------------------------------------------------------------
# Conversations -> token ids and labels


def scene_caption(meta: dict) -> str | None:
    """The ShapeWorld caption of a record's meta.scene (None without one): the text form of its image."""
    if "scene" not in meta:
        return None
    from star.shapes.scene import Scene
    from star.shapes.text import caption

    return caption(Scene.from_dict(meta["scene"]))


def encode_conversation(tokenizer, special, turns: list[tuple[str, str]], num_vit: int | None
                        ) -> tuple[list[int], list[int]]:
    """(ids, labels) of a conversation; labels are the answer ids (+ <|im_end|>) and IGNORE elsewhere.

    Turn 1 is chat.understand_ids (the pipeline's understanding prompt, with `num_vit` <|image_pad|> tokens when
    there is an image); turn k > 1 continues in the chat template: `\\n<|im_start|>user\\n{q}<|im_end|>\\n
    <|im_start|>assistant\\n`.
    """
    from star.chat import understand_ids

    ids: list[int] = []
    labels: list[int] = []
    for k, (question, answer) in enumerate(turns):
        if k == 0:
            prompt = understand_ids(tokenizer, special, question, num_vit)
        else:
            prompt = tokenizer.encode(f"\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
                                      add_special_tokens=False)
        reply = tokenizer.encode(answer, add_special_tokens=False) + [special.im_end]
        ids += prompt + reply
        labels += [IGNORE] * len(prompt) + reply
    return ids, labels


@dataclass
class UPart:
    """Rows padded together: a micro-batch's conversations with an image, or those without one."""

    input_ids: Tensor              # (b, T) left-padded
    attention_mask: Tensor         # (b, T)
    labels: Tensor                 # (b, T) IGNORE outside answers
    pixel_values: Tensor | None    # ViT patches of the rows with an image, in row order (None if none has one)
    image_grid_thw: Tensor | None


@dataclass
class UBatch:
    parts: list[UPart]             # the image part and/or the text part, never empty
    tasks: list[str]


class UnderstandingStream:
    """Conversations built from records, mixed over tasks; deterministic in (seed, sample index)."""

    def __init__(self, config: TrainConfig, opts: UnderstandingOptions, rank: int, world_size: int,
                 start_position: int):
        from transformers import AutoImageProcessor, AutoTokenizer

        from star.chat import SpecialTokens

        self.opts, self.seed = opts, config.seed
        self.pad_apart = world_size == 1          # image rows and text rows as two parts (module docstring)
        self.ranges = micro_batch_ranges(config, rank, world_size, start_position)
        self.tokenizer = AutoTokenizer.from_pretrained(opts.base)
        self.special = SpecialTokens.from_tokenizer(self.tokenizer)
        self.image_processor = AutoImageProcessor.from_pretrained(opts.base)
        self.warn = Warnings()
        units: dict[str, list] = {t: [] for t in TASKS}
        skipped: dict[str, int] = {}
        for src in parse_sources(opts.data):
            kinds = [k for k in (src.kinds or ("vqa", "caption", "text_qa")) if k in ("vqa", "caption", "text_qa")]
            if not kinds:
                continue
            index = RecordIndex(src.path, kinds, check_images=opts.check_images)
            skipped = merge_counts(skipped, index.stats.skipped)
            groups: dict[str, list] = {}
            captions: dict[str, str | None] = {}
            for rec in index.records:
                if rec["kind"] == "vqa":
                    groups.setdefault(rec["image"], []).append((rec["question"], rec["answer"]))
                    meta = rec.get("meta") or {}
                    if rec["image"] not in captions:
                        captions[rec["image"]] = scene_caption(meta)
                    if captions[rec["image"]] is not None and meta.get("family") in SCENE_QA_FAMILIES:
                        units["scene_qa"].append((None, [(f"{captions[rec['image']]}. {rec['question']}",
                                                          rec["answer"])]))
                elif rec["kind"] == "caption":
                    units["caption"].append((rec["image"], [(CAPTION_PROMPT, rec["text"])]))
                    units["caption_lm"].append((None, [(CAPTION_LM_PROMPT, rec["text"])]))
                else:
                    task = "wise" if (rec.get("meta") or {}).get("task") == WISE_TASK else "text_qa"
                    units[task].append((None, [(rec["question"], rec["answer"])]))
            units["vqa"] += list(groups.items())
        active = [t for t in TASKS if opts.tasks.get(t, 0) > 0 and units[t]]
        if not active:
            raise ValueError(f"stage 'understanding': no usable records for tasks {opts.tasks} in {opts.data} "
                             f"(skipped: {skipped or 'none'})")
        self.tasks = active
        self.units = [units[t] for t in active]
        self.mixture = Mixture([len(u) for u in self.units], [opts.tasks[t] for t in active], config.seed)
        if rank == 0:
            self.warn.update(skipped)

    @property
    def warnings(self) -> dict[str, int]:
        return dict(self.warn.counts)

    def __iter__(self) -> Iterator[UBatch]:
        return self

    def conversation(self, i: int) -> tuple[str, str | None, list[tuple[str, str]]]:
        """(task, image path or None, turns) of global sample i; vqa turns are a seeded subset in seeded order."""
        k, j = self.mixture.locate(i)
        image, turns = self.units[k][j]
        if len(turns) > 1:
            rng = sample_rng(self.seed, i, 2)
            order = rng.permutation(len(turns))[: self.opts.max_turns]
            turns = [turns[o] for o in order]
        return self.tasks[k], image, turns

    def __next__(self) -> UBatch:
        from star.data.records import ImageReadError

        rows: dict[bool, list] = {True: [], False: []}      # part (has an image) -> [(ids, labels, pixels, grid)]
        tasks = []
        for i in next(self.ranges):
            task, image, turns = self.conversation(i)
            vit = None
            if image is not None:
                try:
                    vit = vit_inputs(self.image_processor, load_rgb(image), None, self.opts.vit_max_tokens)
                except FileNotFoundError:
                    self.warn.add("missing_file")
                    continue
                except ImageReadError:
                    self.warn.add("corrupt_image")
                    continue
            ids, lab = encode_conversation(self.tokenizer, self.special, turns, None if vit is None else vit[2])
            rows[vit is not None or not self.pad_apart].append((ids, lab) + (vit[:2] if vit else (None, None)))
            tasks.append(task)
        if not tasks:
            raise RuntimeError(f"every sample of a micro-batch was unusable (data_warnings: {self.warnings})")
        return UBatch([self._part(group) for group in (rows[True], rows[False]) if group], tasks)

    def _part(self, rows: list[tuple]) -> UPart:
        from star.model import left_pad

        seqs, labels, pixels, grids = zip(*rows)
        ids, mask = left_pad(list(seqs), self.special.end_of_text)
        lab, _ = left_pad(list(labels), IGNORE)
        pixels, grids = [p for p in pixels if p is not None], [g for g in grids if g is not None]
        return UPart(ids, mask, lab, torch.cat(pixels) if pixels else None, torch.cat(grids) if grids else None)


# -----------------------------------------------------------------------------
# Model


class UnderstandingModel(nn.Module):
    """The HF VLM being trained (`hf`), with the loss inside `forward` (so DDP sees one call)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, parts: list[UPart]) -> tuple[Tensor, Tensor, Tensor]:
        """-> (mean CE over the labelled positions of all parts, number labelled, number predicted correctly)."""
        image_token_id = self.hf.config.image_token_id
        total, labelled, correct = 0.0, 0, 0
        for part in parts:
            out = self.hf(input_ids=part.input_ids, attention_mask=part.attention_mask,
                          pixel_values=part.pixel_values, image_grid_thw=part.image_grid_thw,
                          mm_token_type_ids=(part.input_ids == image_token_id).int())
            logits = out.logits[:, :-1].float()                      # (b, T-1, V): position t predicts t+1
            target = part.labels[:, 1:]                              # (b, T-1)
            total = total + F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE,
                                            reduction="sum")
            supervised = target != IGNORE
            labelled = labelled + supervised.sum()
            correct = correct + ((logits.argmax(-1) == target) & supervised).sum()
        if all(part.pixel_values is None for part in parts) and self._vision_trains():
            total = total + 0.0 * self._blank_image_features().sum()
        return total / labelled, labelled, correct

    def _vision_trains(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.hf.model.visual.parameters())

    def _blank_image_features(self) -> Tensor:
        """The ViT on one blank image of a single merged token: a micro-batch without images still calls a trainable
        ViT (times zero: no gradient), so that every rank runs its FSDP/DDP collectives whatever its batch holds."""
        cfg = self.hf.config.vision_config
        m = cfg.spatial_merge_size
        device = self.hf.lm_head.weight.device
        pixels = torch.zeros(m * m, cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2, device=device)
        grid = torch.tensor([[1, m, m]], device=device)
        return self.hf.model.visual(pixels, grid_thw=grid).pooler_output              # (1, D)


class UnderstandingStage:
    name = "understanding"
    trainable: tuple[str, ...] = ("hf.model.visual", "hf.model.language_model", "hf.lm_head")
    frozen: tuple[str, ...] = ()

    def default_config(self) -> TrainConfig:
        return TrainConfig(
            out_dir="runs/understanding",
            steps=1000,
            batch_size=32,
            checkpoint_every=250,
            optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=50, weight_decay=0.05, betas=(0.9, 0.95)),
        )

    def options(self, config: TrainConfig) -> UnderstandingOptions:
        opts = from_dict(UnderstandingOptions, config.stage_options, "stage_options.")
        if not opts.base:
            raise ValueError("stage 'understanding' needs stage_options.base: the base folder to train (for the "
                             "ShapeWorld base, one made by star.tiny_base.build_tiny_base; `star train --recipe "
                             "shapes` builds it)")
        return opts

    def build(self, config: TrainConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
        from star.base import get_family

        opts = self.options(config)
        self._base = opts.base
        model_type = json.loads((Path(opts.base) / "config.json").read_text()).get("model_type")
        hf = get_family(model_type).model_class().from_pretrained(opts.base, dtype=torch.float32)
        lm = "hf.model.language_model"
        if opts.freeze_layers == 0:
            language = [lm]
        else:
            layers = len(hf.model.language_model.layers)
            if opts.freeze_layers > layers:
                raise ValueError(f"stage_options.freeze_layers={opts.freeze_layers}, but the base has {layers} layers")
            language = [f"{lm}.layers.{k}" for k in range(opts.freeze_layers, layers)] + [f"{lm}.norm"]
        below = [f"{lm}.embed_tokens"] + [f"{lm}.layers.{k}" for k in range(opts.freeze_layers)] \
            if opts.freeze_layers else []
        vision = ["hf.model.visual"]
        self.trainable = tuple((vision if opts.train_vision else []) + language + ["hf.lm_head"])
        self.frozen = tuple((vision if not opts.train_vision else []) + below)
        hf.requires_grad_(True)
        for name in self.frozen:
            hf.get_submodule(name.removeprefix("hf.")).requires_grad_(False).to(dtype)
        return UnderstandingModel(hf).to(device)

    def batches(self, config: TrainConfig, rank: int, world_size: int, start_position: int) -> UnderstandingStream:
        return UnderstandingStream(config, self.options(config), rank, world_size, start_position)

    def loss(self, model: nn.Module, batch: UBatch) -> tuple[Tensor, dict[str, float]]:
        device = next(p for p in model.parameters()).device
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        parts = [UPart(*(move(getattr(part, f.name)) for f in dataclasses.fields(UPart))) for part in batch.parts]
        loss, n, correct = model(parts)
        return loss, {
            "tokens": float(sum(part.attention_mask.sum() for part in batch.parts)),
            "answer_tokens": float(n),
            "answer_accuracy": float(correct) / max(float(n), 1.0),
            "image_share": sum(t in ("vqa", "caption") for t in batch.tasks) / len(batch.tasks),
        }

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """A complete base folder: the init folder's tokenizer / processor / chat template + the trained weights."""
        base = Path(self._base) if getattr(self, "_base", None) else None
        out_dir = Path(out_dir)
        if base is not None and base.resolve() != out_dir.resolve():
            if out_dir.exists():
                shutil.rmtree(out_dir)
            shutil.copytree(base, out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.hf.save_pretrained(out_dir)
        (out_dir / "stage.json").write_text(json.dumps({"stage": self.name, "trained_from": str(base)}, indent=2))
