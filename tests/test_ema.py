"""TrainConfig.ema_decay: the trainer keeps an EMA of the trainable weights, checkpoints it, resumes it exactly and
exports it instead of the raw weights (toy stage, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from star.training.config import apply_overrides
from star.training.ema import EMA
from star.training.toy import ToyStage
from star.training.trainer import train



def config(out: Path, **overrides):
    base = {"out_dir": str(out), "steps": 8, "batch_size": 8, "checkpoint_every": 0, "progress": False,
            "device": "cpu", "optim.warmup_steps": 2, "optim.decay_steps": 12, "ema_decay": 0.9}
    base.update(overrides)
    return apply_overrides(ToyStage().default_config(), [f"{k}={json.dumps(v)}" for k, v in base.items()])


class Snapshots(ToyStage):
    """Records the trainable weights at every loss call (= the weights after each optimizer step so far)."""

    def __init__(self):
        self.seen = []

    def loss(self, model, batch):
        self.seen.append({k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad})
        return super().loss(model, batch)


def test_ema_is_exported_and_equals_the_average_of_the_trajectory(tmp_path):
    spy = Snapshots()
    train(config(tmp_path / "long", steps=9), spy)              # seen[t] = weights after t updates, t = 0..8
    train(config(tmp_path / "run", steps=8), ToyStage())        # the same first 8 updates (decay_steps fixed)
    exported = load_file(str(tmp_path / "run" / "export" / "trainable.safetensors"))
    ema = EMA.__new__(EMA)
    ema.decay = 0.9
    expected = {k: v.clone() for k, v in spy.seen[0].items()}
    for t in range(8):
        w = 1.0 - ema.decay_at(t)
        for k in expected:
            expected[k] = expected[k] + w * (spy.seen[t + 1][k] - expected[k])
    for k, v in expected.items():
        torch.testing.assert_close(exported[k], v, rtol=1e-5, atol=1e-6)
        assert not torch.equal(exported[k], spy.seen[8][k]), f"{k}: the export is the average, not the raw weights"
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(1000) == 0.9


def test_ema_resumes_exactly_and_is_refused_when_absent(tmp_path):
    train(config(tmp_path / "straight", steps=8), ToyStage())
    train(config(tmp_path / "split", steps=4, export=False), ToyStage())
    train(config(tmp_path / "split", steps=8, resume=True), ToyStage())
    a = load_file(str(tmp_path / "straight" / "export" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "split" / "export" / "trainable.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run exports the same EMA bit for bit"

    train(config(tmp_path / "plain", steps=2, ema_decay=0.0, export=False), ToyStage())
    with pytest.raises(ValueError, match="no EMA weights"):
        train(config(tmp_path / "plain", steps=4, resume=True), ToyStage())


def test_snapshots_hold_the_ema_mid_run_and_change_nothing_else(tmp_path):
    from star.training.runlog import read_log

    train(config(tmp_path / "snap", steps=8, snapshot_every=4), ToyStage())
    train(config(tmp_path / "short", steps=4), ToyStage())      # the same first 4 updates (decay_steps fixed)
    train(config(tmp_path / "plain", steps=8), ToyStage())
    snaps = sorted(p.name for p in (tmp_path / "snap" / "snapshots").iterdir())
    assert snaps == ["step_00000004"], "one snapshot mid-run; the last step is the export"
    mid = load_file(str(tmp_path / "snap" / "snapshots" / snaps[0] / "trainable.safetensors"))
    short = load_file(str(tmp_path / "short" / "export" / "trainable.safetensors"))
    assert all(torch.equal(mid[k], short[k]) for k in short), "the snapshot is the EMA after 4 updates"
    loss = lambda run: [r["loss"] for r in read_log(tmp_path / run / "log.jsonl")]  # noqa: E731
    assert loss("snap") == loss("plain"), "swapping the averages in and out must not touch the training weights"
    a = load_file(str(tmp_path / "snap" / "export" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "plain" / "export" / "trainable.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
