"""Training: one loop (`train`) for every stage, on one CPU process or under torchrun with FSDP2.

Module map, in the order `train` uses them:

    config.py         TrainConfig / OptimConfig: typed, validated, JSON round-trip, `--set key=value` overrides
    stages.py         the Stage protocol (what a stage declares and provides) and the STAGES registry
    parallel.py       processes and devices, data split over ranks, activation checkpointing, FSDP2 / DDP wrapping
    optim.py          AdamW parameter groups (no decay on 1-D params) and the warm-up + cosine schedule
    checkpointing.py  atomic trainable-only DCP checkpoints with RNG states; frozen-weight SHA-256 fingerprints
    runlog.py         JSONL log and loss-curve PNG
    trainer.py        train(config, stage): the loop
    cli.py            `star train --stage NAME ...`
    toy.py            a tiny stand-in stage (frozen MLP between a trainable adapter and head) for tests
"""

from star.training.config import OptimConfig, TrainConfig
from star.training.stages import STAGES, Stage, get_stage
from star.training.trainer import train

__all__ = ["OptimConfig", "STAGES", "Stage", "TrainConfig", "get_stage", "train"]
