"""Training: one loop (`train`) for every stage, on one CPU process or under torchrun with FSDP2.

Module map, in the order `train` uses them:

    config.py         TrainConfig / OptimConfig: typed, validated, JSON round-trip, `--set key=value` overrides
    stages.py         the Stage protocol (what a stage declares and provides) and the STAGES registry
    parallel.py       processes and devices, data split over ranks, activation checkpointing, FSDP2 / DDP wrapping
    optim.py          AdamW parameter groups (no decay on 1-D params) and the warm-up + cosine schedule
    checkpointing.py  atomic trainable-only DCP checkpoints with RNG states; frozen-weight SHA-256 fingerprints
    runlog.py         JSONL log and loss-curve PNG
    ema.py            optional EMA of the trainable weights (TrainConfig.ema_decay), exported instead of the raw ones
    budget.py         the time budget (TrainConfig.time_budget_s): the steps that fit, re-planned as the pace changes
    trainer.py        train(config, stage): the loop
    cli.py            `star train STAGE ...` / `star train --recipe NAME ...`
    toy.py            a tiny stand-in stage (frozen MLP between a trainable adapter and head) for tests

The stages and their data:

    data.py                  record sources, the exactly resumable mixture (sample index -> record), image views
    tokenize.py              `star tokenize`: a dataset's images -> VQ codes (codes.safetensors + codes.json)
    stage_understanding.py   understanding: train the tiny base VLM (VQA, captions, facts, implicit reasoning)
    stage_vq.py              vq: the image tokenizer on the generic trainer
    stage_generation.py      generation (T2I) and editing (edit + T2I, optional progressive stacking)
    recipes.py               recipes (shapes, shapes-quick, star-3b, star-7b) and the end-to-end runner
"""

from star.training.config import OptimConfig, TrainConfig
from star.training.stages import STAGES, Stage, get_stage
from star.training.trainer import train

__all__ = ["OptimConfig", "STAGES", "Stage", "TrainConfig", "get_stage", "train"]
