"""The `generation` and `editing` stages: train the stacked AR module, the pixel adapter and the pixel head on image
codes, with the base and the VQ frozen (research/paper.md §2.3, §7; DESIGN.md §1).

    generation  T2I pairs (`t2i` records). Build: frozen base + frozen VQ + a stack copied from the base's top layers
                + a fresh adapter and head (or continue from a STAR folder with `init`).
    editing     the same stage on an edit + T2I mixture (`edit` and `t2i` records, `kind_weights`), continuing from the
                generation export (`init`); `new_stack=True` stacks a further module on top (STAR.add_stack, progressive
                stacking) and freezes the earlier one.

Data flow of one sample (the sequences are star.chat's, the same the pipeline builds at inference):

    t2i record   text ─▶ chat.t2i_row ─▶ Row (prompt, null row)        image ─▶ codes (pre-tokenised, or VQ-encoded)
    edit record  text + source image ─▶ chat.edit_row (VQ view codes + ViT view) ─▶ Row     target image ─▶ codes
    rows + codes ─▶ model.Condition ─▶ STAR.forward: CE on the code positions only; rows drawn for dropout use their
                 CFG null row (`<|fim_pad|>` prompt), decided by (seed, sample index), so a resumed run drops the same

What trains: the top stack, the head and (with `train_adapter`) the adapter. While the adapter trains its gradient
flows back through the frozen base (the base runs inside autograd); with the adapter frozen the base runs without a
graph (STAR.hidden_states decides; research/performance.md §4-5: about 2x cheaper here, see scripts/bench_train.py).

Images come from `codes.safetensors` next to a dataset (`star tokenize`) when present, else they are decoded and
encoded with the frozen VQ inside `loss`. Bad records (corrupt image, missing file, empty text, ...) are skipped and
counted in the stream's `warnings`, which the trainer writes to log.jsonl.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from star.config import STACK_INITS
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
from star.views import vit_inputs, vq_pixels

KINDS_OF = {"generation": ("t2i",), "editing": ("edit", "t2i")}


@dataclass(kw_only=True)
class GenerationOptions:
    base: str = ""
    """Frozen base folder (HF Qwen2.5-VL layout; the ShapeWorld base from the understanding stage)."""
    vq: str | None = None
    """Frozen VQ: a folder or an upstream VQ-Model.pt; None = the shipped ShapeWorld tokenizer."""
    data: Any = None
    """Dataset(s): a path, a list of paths, or [{path, kinds, weight}] (star-records, docs/data_format.md)."""
    kind_weights: dict[str, float] = field(default_factory=dict)
    """Share of each record kind in the stream, e.g. {"edit": 0.7, "t2i": 0.3}; empty = equal shares."""
    init: str | None = None
    """STAR folder to continue from (its stacks, adapter, head); None = a new stack copied from the base."""
    stack_layers: int = 4
    """Layers of a new stacked AR module, copied from the base's top layers (upstream: 16 on 3B, 14 on 7B)."""
    stack_init: str = "copy"
    """How a new stack starts: "copy" (the base's top layers and final norm, upstream), "random", or "identity"
    ("copy" with the layers' output projections at zero; with new_stack the module starts as the identity on the
    earlier one, StackedARConfig.init)."""
    base_layer: int | None = None
    """Base layer whose output a new stack reads (STARConfig.base_layer); None = the top, after the final norm
    (upstream). With k, "copy" takes the base's layers k+1..k+stack_layers: the stack starts as the base's own
    continuation from layer k."""
    adapter_depth: int = 2
    """Linear layers of a new pixel adapter (upstream: 2 on 3B, 4 on 7B)."""
    cell_embedding: bool = False
    """Give a new pixel adapter a learned embedding of each code's grid cell (AdapterConfig.grid_cells), so the stack
    knows a code's column, which 1-D positions hide from a small model (not upstream)."""
    head_code_vectors: bool = False
    """Give a new pixel head no free row per code: score each code through its VQ code vector (HeadConfig.code_dim),
    so codes no training image produced (held-out colour-class pairs) are not only ever pushed down (not upstream)."""
    new_stack: bool = False
    """Progressive stacking: put a further stack (stack_layers, copied from the base's top) on the init model and
    freeze the earlier stacks."""
    train_adapter: bool = True
    """Train the pixel adapter (gradients then pass back through the frozen base); False runs the base graph-free."""
    cfg_dropout: float = 0.1
    """Probability that a sample's prompt is replaced by its CFG null row (drawn from the seed and sample index)."""
    reasoning_suffix: float = 0.0
    """Share of T2I samples trained on the row implicit reasoning builds (the prompt + chat.REASONING_SUFFIX, as
    STARPipeline writes it around the base's answer), so the generator reads such rows as it reads plain prompts."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """Default sampling written into the exported model's config (STARConfig.sampling fields)."""
    edit_sampling: dict[str, Any] = field(default_factory=dict)
    """Default sampling of editing written into the config (STARConfig.edit_sampling; empty = keep `sampling`)."""
    max_prompt_tokens: int = 512
    """Longest prompt (chat template included); longer samples are skipped and counted."""
    edit_code_positions: str = "continue"
    """Positions of an edit's target codes (STARConfig.edit_code_positions): "continue" (upstream) or "source"."""
    edit_source_hint: bool = False
    """Give the stack, at the position predicting each target code, the source's code in that cell through a new
    zero-initialised map (STARConfig.edit_source_hint; trains with the stack). An init model without one gets a new
    one (its absence is reported)."""
    edit_code_noise: float = 0.0
    """Share of an edit sample's fed target codes replaced by the code of another cell of the same target (drawn per
    sample from the seed): teacher forcing on a context with the errors free-running makes, so that what a cell
    holds must be read from the instruction and the source, not only continued from the cells before it. The loss
    stays on the clean codes; nothing changes at inference."""
    edit_vit_min_tokens: int | None = None
    """Editing: fewest ViT tokens of the source image (STARConfig.edit_vit_min_tokens)."""
    edit_vit_max_tokens: int | None = None
    """Editing: most ViT tokens of the source image (STARConfig.edit_vit_max_tokens)."""
    understand_vit_max_tokens: int | None = None
    """Written into the exported config (understanding ViT budget; the base's own setting)."""
    check_images: bool = True
    """Decode every image once when indexing (skips corrupt files up front); ignored for pre-tokenised datasets."""

    def __post_init__(self):
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"stage_options.cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if not 0.0 <= self.edit_code_noise < 1.0:
            raise ValueError(f"stage_options.edit_code_noise must be in [0, 1), got {self.edit_code_noise}")
        if not 0.0 <= self.reasoning_suffix <= 1.0:
            raise ValueError(f"stage_options.reasoning_suffix must be in [0, 1], got {self.reasoning_suffix}")
        for name in ("stack_layers", "adapter_depth", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"stage_options.{name} must be >= 1, got {getattr(self, name)}")
        if self.stack_init not in STACK_INITS:
            raise ValueError(f"stage_options.stack_init must be one of {STACK_INITS}, got {self.stack_init!r}")
        if self.new_stack and not self.init:
            raise ValueError("stage_options.new_stack=true stacks a module on an existing model: set "
                             "stage_options.init to a STAR folder (e.g. the generation stage's export)")
        for k, w in self.kind_weights.items():
            if k not in ("t2i", "edit") or w < 0:
                raise ValueError(f"stage_options.kind_weights: kinds are t2i / edit with weights >= 0, got {k}={w}")


# -----------------------------------------------------------------------------
# The VQ the stream needs to know about (resolution, grid) without building it


def vq_config_of(spec: str | None):
    """VQConfig of a VQ spec (folder, upstream .pt, preset name, or None = shipped), read without loading weights."""
    from star.vq import PRESETS, SHIPPED_SHAPES_DIR, VQConfig, preset

    if spec is None or str(spec).lower() in ("none", "shipped"):
        path = SHIPPED_SHAPES_DIR
    elif str(spec) in PRESETS:
        return preset(str(spec))
    else:
        path = Path(spec)
    if path.is_dir():
        return VQConfig.from_dict(json.loads((path / "config.json").read_text()))
    return preset("star-vq")          # an upstream VQ-Model.pt


def vq_folder(spec: str | None) -> str:
    """The path a STAR config records for a VQ spec (None = the shipped tokenizer's folder)."""
    from star.vq import SHIPPED_SHAPES_DIR

    if spec is None or str(spec).lower() in ("none", "shipped"):
        return str(SHIPPED_SHAPES_DIR)
    return str(Path(spec).resolve()) if Path(spec).exists() else str(spec)


# -----------------------------------------------------------------------------
# Batches


@dataclass
class GenBatch:
    """One micro-batch. Targets and edit sources are either codes (N,) int64 or pixels (3, R, R) per sample."""

    rows: list                   # chat.Row per sample
    targets: list[Tensor]        # per sample: codes (N,) or pixels (3, R, R)
    drop: Tensor                 # (b,) bool: train this sample on its CFG null row
    sources: list[Tensor]        # per edit sample, in row order: codes (M,) or pixels (3, R, R)
    pixel_values: Tensor | None  # ViT patches of the edit sources, in row order
    image_grid_thw: Tensor | None
    kinds: list[str]
    feeds: list[Tensor | None] = field(default_factory=list)   # per sample: (N - 1,) cells of the target to feed
    noisy: bool = False          # edit_code_noise is on (the log then has fed_corrupted on every rank and step)


@dataclass
class _Source:
    kind: str
    index: RecordIndex
    codes: Any                   # tokenize.CodeTable or None
    keep: list[int]              # record indices usable (images tokenised, or check passed)


class GenerationStream:
    """This rank's micro-batches from a global sample position (see star.training.data for the determinism)."""

    def __init__(self, stage_name: str, config: TrainConfig, opts: GenerationOptions, rank: int, world_size: int,
                 start_position: int):
        from transformers import AutoImageProcessor, AutoTokenizer

        from star.chat import SpecialTokens
        from star.training.tokenize import load_codes, vq_fingerprint

        self.opts, self.seed, self.kinds = opts, config.seed, KINDS_OF[stage_name]
        self.ranges = micro_batch_ranges(config, rank, world_size, start_position)
        self.tokenizer = AutoTokenizer.from_pretrained(opts.base)
        self.special = SpecialTokens.from_tokenizer(self.tokenizer)
        self.image_processor = AutoImageProcessor.from_pretrained(opts.base) if "edit" in self.kinds else None
        vq_cfg = vq_config_of(opts.vq)
        self.side, self.grid = vq_cfg.resolution, vq_cfg.resolution // vq_cfg.downsample
        self.warn = Warnings()
        index_warnings: dict[str, int] = {}
        fingerprint = None
        sources: list[_Source] = []
        weights: list[float] = []
        for src in parse_sources(opts.data):
            kinds = [k for k in (src.kinds or self.kinds) if k in self.kinds]
            if not kinds:
                continue
            if fingerprint is None and _has_codes(src.path):
                fingerprint = vq_fingerprint(opts.vq)
            table = load_codes(src.path, fingerprint) if _has_codes(src.path) else None
            if table is not None and table.grid != (self.grid, self.grid):
                raise ValueError(f"{src.path}: codes have grid {table.grid}, the VQ makes {self.grid}x{self.grid}")
            index = RecordIndex(src.path, kinds, check_images=opts.check_images and table is None)
            index_warnings = merge_counts(index_warnings, index.stats.skipped)
            unreadable = set(json.loads((Path(index.folder) / "codes.json").read_text()).get("unreadable", [])) \
                if table is not None else set()
            for kind in kinds:
                keep = []
                for j, rec in enumerate(index.records):
                    if rec["kind"] != kind:
                        continue
                    if table is not None:
                        rels = [index.rel(rec[f]) for f in _image_fields(kind)]
                        missing = [r for r in rels if table.get(r) is None]
                        if missing:
                            reason = "corrupt_image" if any(m in unreadable for m in missing) else "not_tokenized"
                            index_warnings[reason] = index_warnings.get(reason, 0) + 1
                            continue
                    keep.append(j)
                if keep:
                    sources.append(_Source(kind, index, table, keep))
                    share = opts.kind_weights.get(kind, 1.0) if opts.kind_weights else 1.0
                    weights.append(src.weight * share)
        sources_weights = [(s, w) for s, w in zip(sources, weights) if w > 0]
        if not sources_weights:
            raise ValueError(f"stage {stage_name!r}: no usable {'/'.join(self.kinds)} records in {opts.data} "
                             f"(skipped: {index_warnings or 'none'})")
        self.sources = [s for s, _ in sources_weights]
        self.mixture = Mixture([len(s.keep) for s in self.sources], [w for _, w in sources_weights], config.seed)
        if rank == 0:                           # index-time counts once (the trainer sums warnings over ranks)
            self.warn.update(index_warnings)

    @property
    def warnings(self) -> dict[str, int]:
        return dict(self.warn.counts)

    def __iter__(self) -> Iterator[GenBatch]:
        return self

    def _image(self, src: _Source, path: str) -> Tensor:
        if src.codes is not None:
            return src.codes.get(src.index.rel(path)).flatten()                      # (N,) int64
        return vq_pixels(load_rgb(path), self.side)                                  # (3, R, R)

    def sample(self, i: int) -> tuple | None:
        """(kind, row, target, drop, source, vit, feed) of global sample i, or None (skipped, counted)."""
        from star.chat import edit_row, reasoning_row, t2i_row
        from star.data.records import ImageReadError

        k, j = self.mixture.locate(i)
        src = self.sources[k]
        rec = src.index.records[src.keep[j]]
        drop = bool(sample_rng(self.seed, i, 1).random() < self.opts.cfg_dropout)
        try:
            if src.kind == "t2i":
                row = t2i_row(self.tokenizer, self.special, rec["text"])
                if sample_rng(self.seed, i, 3).random() < self.opts.reasoning_suffix:
                    row = reasoning_row(self.tokenizer, self.special, rec["text"], rec["text"])
                source, vit = None, None
                target = self._image(src, rec["image"])
            else:
                source_image = load_rgb(rec["source"])
                vit = vit_inputs(self.image_processor, source_image, self.opts.edit_vit_min_tokens,
                                 self.opts.edit_vit_max_tokens)
                source = (src.codes.get(src.index.rel(rec["source"])).flatten() if src.codes is not None
                          else vq_pixels(source_image, self.side))
                row = edit_row(self.tokenizer, self.special, rec["text"], self.grid * self.grid, vit[2])
                target = self._image(src, rec["target"])
        except FileNotFoundError:
            self.warn.add("missing_file")
            return None
        except ImageReadError:
            self.warn.add("corrupt_image")
            return None
        except ValueError:                       # chat.check_prompt: empty or whitespace-only text
            self.warn.add("empty_text")
            return None
        text_tokens = sum(1 for t in row.ids if t not in (self.special.vision_pad, self.special.image_pad))
        if text_tokens > self.opts.max_prompt_tokens:
            self.warn.add("prompt_too_long")
            return None
        return src.kind, row, target, drop, source, vit, self._feed(i) if src.kind == "edit" else None

    def _feed(self, i: int) -> Tensor | None:
        """(N - 1,) the target cell whose code is fed at each input position (edit_code_noise), or None (clean)."""
        if not self.opts.edit_code_noise:
            return None
        rng, n = sample_rng(self.seed, i, 4), self.grid * self.grid
        feed = np.arange(n - 1)
        noisy = rng.random(n - 1) < self.opts.edit_code_noise
        feed[noisy] = rng.integers(0, n, int(noisy.sum()))
        return torch.from_numpy(feed)

    def __next__(self) -> GenBatch:
        indices = next(self.ranges)
        samples = [s for s in (self.sample(i) for i in indices) if s is not None]
        if not samples:
            raise RuntimeError(f"every sample of the micro-batch {indices} was unusable (see data_warnings: "
                               f"{self.warnings}); check the dataset")
        edits = [s for s in samples if s[0] == "edit"]
        return GenBatch(
            rows=[s[1] for s in samples],
            targets=[s[2] for s in samples],
            drop=torch.tensor([s[3] for s in samples], dtype=torch.bool),
            sources=[s[4] for s in edits],
            pixel_values=torch.cat([s[5][0] for s in edits]) if edits else None,
            image_grid_thw=torch.cat([s[5][1] for s in edits]) if edits else None,
            kinds=[s[0] for s in samples],
            feeds=[s[6] for s in samples],
            noisy=self.opts.edit_code_noise > 0,
        )


def _has_codes(path: str) -> bool:
    from star.training.tokenize import INDEX_FILE

    p = Path(path)
    return ((p if p.is_dir() else p.parent) / INDEX_FILE).is_file()


def _image_fields(kind: str) -> tuple[str, ...]:
    return ("image",) if kind == "t2i" else ("source", "target")


# -----------------------------------------------------------------------------
# The stage


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model


def encode_images(vq: nn.Module, items: list[Tensor], device: torch.device) -> Tensor:
    """Per-sample codes (N,) or pixels (3, R, R) -> (b, N) codes; pixels go through the frozen VQ in one batch."""
    out: list[Tensor | None] = [t.to(device) if not t.is_floating_point() else None for t in items]
    pixel_rows = [i for i, t in enumerate(items) if t.is_floating_point()]
    if pixel_rows:
        dtype = next(vq.parameters()).dtype
        pixels = torch.stack([items[i] for i in pixel_rows]).to(device, dtype)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):         # fp32 codes, as `star tokenize`'s
            codes = vq.encode(pixels).flatten(1)                                     # (p, N)
        for r, i in enumerate(pixel_rows):
            out[i] = codes[r]
    return torch.stack(out)


def fed_codes(targets: Tensor, feeds: list[Tensor | None]) -> Tensor | None:
    """(b, N) target codes + per-sample feeds -> (b, N - 1) codes to feed (clean where a feed is None), or None when
    every row is clean."""
    if all(f is None for f in feeds):
        return None
    clean = torch.arange(targets.shape[1] - 1)
    index = torch.stack([clean if f is None else f for f in feeds]).to(targets.device)   # (b, N - 1)
    return targets.gather(1, index)


class GenerationStage:
    """`generation` (T2I) and `editing` (edit + T2I): one stage class, the task mixture and the init differ."""

    def __init__(self, name: str = "generation"):
        if name not in KINDS_OF:
            raise ValueError(f"GenerationStage name must be one of {sorted(KINDS_OF)}, got {name!r}")
        self.name = name
        # Declared for the default build (one stack, adapter trains); `build` refines it from the options.
        self.trainable: tuple[str, ...] = ("stacks.0", "adapter", "head")
        self.frozen: tuple[str, ...] = ("base", "vq")
        self.recompute: tuple[str, ...] = ()        # frozen modules gradients flow through (set by build)

    def default_config(self) -> TrainConfig:
        options = {"kind_weights": {"edit": 0.7, "t2i": 0.3}} if self.name == "editing" else {}
        return TrainConfig(
            out_dir=f"runs/{self.name}",
            steps=2000,
            batch_size=32,
            checkpoint_every=250,
            ema_decay=0.999,
            stage_options=options,
            optim=OptimConfig(lr=5e-4, min_lr=5e-5, warmup_steps=100, weight_decay=0.05, betas=(0.9, 0.95)),
        )

    def options(self, config: TrainConfig) -> GenerationOptions:
        opts = from_dict(GenerationOptions, config.stage_options, "stage_options.")
        if not opts.base:
            raise ValueError(f"stage {self.name!r} needs stage_options.base (the frozen base folder, e.g. the "
                             f"understanding stage's export)")
        return opts

    def declare(self, n_stacks: int, train_adapter: bool, source_hint: bool = False) -> None:
        top = f"stacks.{n_stacks - 1}"
        self.trainable = (top, "adapter", "head") if train_adapter else (top, "head")
        self.trainable += ("source_hint",) if source_hint else ()
        self.frozen = ("base", "vq", *(f"stacks.{i}" for i in range(n_stacks - 1)),
                       *(() if train_adapter else ("adapter",)))

    def build(self, config: TrainConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
        from safetensors.torch import load_file

        from star.base import FrozenBase
        from star.checkpoint import load_trainable
        from star.config import AdapterConfig, HeadConfig, SamplingConfig, StackedARConfig, STARConfig
        from star.model import STAR
        from star.vq import load_vq

        opts = self.options(config)
        if self.name == "editing" and not opts.init:
            print("note: editing without stage_options.init trains a new stack, adapter and head from scratch")
        base = FrozenBase.from_pretrained(opts.base, device=device, dtype=dtype)
        vq = load_vq(opts.vq, device=device)
        paths = dict(base=str(Path(opts.base).resolve()), vq=vq_folder(opts.vq))
        settings = dict(cfg_dropout=opts.cfg_dropout, max_prompt_tokens=opts.max_prompt_tokens,
                        edit_code_positions=opts.edit_code_positions,
                        **({"edit_source_hint": True} if opts.edit_source_hint else {}),
                        edit_vit_min_tokens=opts.edit_vit_min_tokens, edit_vit_max_tokens=opts.edit_vit_max_tokens,
                        understand_vit_max_tokens=opts.understand_vit_max_tokens)
        if opts.init:
            init = Path(opts.init)
            merged = {**STARConfig.from_json(init / "config.json").to_dict(), **paths, **settings}
            if opts.edit_sampling:                            # on top of the init's edit defaults (or its sampling)
                merged["edit_sampling"] = {**(merged["edit_sampling"] or merged["sampling"]), **opts.edit_sampling}
            if opts.sampling:
                merged["sampling"] = {**merged["sampling"], **opts.sampling}
            star_config = STARConfig.from_dict(merged)
            if opts.cell_embedding and not star_config.adapter.grid_cells:
                raise ValueError(f"stage_options.cell_embedding=true, but the init model {init} has an adapter "
                                 f"without one; it applies to a new adapter (train the generation stage with it)")
            if opts.head_code_vectors and not star_config.head.code_dim:
                raise ValueError(f"stage_options.head_code_vectors=true, but the init model {init} has a head with a "
                                 f"row per code; it applies to a new head (train the generation stage with it)")
        else:
            d = base.hidden_size
            star_config = STARConfig(
                **paths, **settings, family=base.family.model_type, hidden_size=d,
                base_layer=opts.base_layer,
                stacks=[StackedARConfig(num_layers=opts.stack_layers, init=opts.stack_init, source_layers=(
                    None if opts.base_layer is None or opts.stack_init == "random"
                    else (opts.base_layer, opts.base_layer + opts.stack_layers)))],
                adapter=AdapterConfig(code_dim=vq.config.code_dim, hidden_size=d, depth=opts.adapter_depth,
                                      grid_cells=(vq.config.resolution // vq.config.downsample) ** 2
                                      if opts.cell_embedding else 0),
                head=HeadConfig(hidden_size=d, codebook_size=vq.config.codebook_size,
                                code_dim=vq.config.code_dim if opts.head_code_vectors else 0),
                sampling=SamplingConfig(**opts.sampling) if opts.sampling else SamplingConfig(),
                edit_sampling=SamplingConfig(**opts.edit_sampling) if opts.edit_sampling else None)
        model = STAR(star_config, base, vq)
        if opts.init:
            state = load_file(str(Path(opts.init) / "model.safetensors"))
            if model.source_hint is not None and "source_hint.weight" not in state:
                print(f"note: {opts.init} has no source_hint; edit_source_hint starts from a new zero map")
                state["source_hint.weight"] = model.source_hint.weight.detach().clone()
            load_trainable(model, state, str(opts.init))
        if opts.new_stack:
            model.add_stack(StackedARConfig(num_layers=opts.stack_layers, init=opts.stack_init))
        n = len(model.stacks)
        self.declare(n, opts.train_adapter, model.source_hint is not None)
        language_model = next(name for name, m in model.named_modules() if m is model.base.language_model)
        self.recompute = (language_model, *(f"stacks.{i}" for i in range(n - 1))) if opts.train_adapter else ()
        for name in self.trainable:                 # trainable weights are fp32 master weights (autocast does bf16)
            model.get_submodule(name).float().requires_grad_(True)
        for name in self.frozen:
            if name.startswith(("stacks.", "adapter")):
                model.get_submodule(name).requires_grad_(False)
        return model.to(device)

    def batches(self, config: TrainConfig, rank: int, world_size: int, start_position: int) -> GenerationStream:
        return GenerationStream(self.name, config, self.options(config), rank, world_size, start_position)

    def loss(self, model: nn.Module, batch: GenBatch) -> tuple[Tensor, dict[str, float]]:
        from star.model import Condition

        core = _unwrap(model)
        device = next(core.head.parameters()).device
        targets = encode_images(core.vq, batch.targets, device)                     # (b, N)
        sources = encode_images(core.vq, batch.sources, device) if batch.sources else None   # (e, M)
        cond = Condition.from_rows(batch.rows, core.special.end_of_text, source_codes=sources,
                                   pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw, device=device)
        inputs = fed_codes(targets, batch.feeds)                                     # (b, N - 1) or None
        out = model(cond, targets, drop_prompt=batch.drop.to(device), inputs=inputs)
        with torch.no_grad():
            accuracy = (out.logits.argmax(-1) == targets).float().mean().item()
            corrupted = 0.0 if inputs is None else (inputs != targets[:, :-1]).float().mean().item()
        prompt_tokens = int(cond.attention_mask.sum())
        return out.loss, {
            "tokens": float(prompt_tokens + targets.numel()),
            "image_tokens": float(targets.numel()),
            "code_accuracy": accuracy,
            "dropped": float(batch.drop.float().mean()),
            "edit_share": sum(k == "edit" for k in batch.kinds) / len(batch.kinds),
            **({"fed_corrupted": corrupted} if batch.noisy else {}),
        }

    def export(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
        (Path(out_dir) / "stage.json").write_text(json.dumps(
            {"stage": self.name, "trainable": list(self.trainable), "frozen": list(self.frozen)}, indent=2))
