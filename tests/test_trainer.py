"""The generic trainer on the toy stage (frozen MLP between a trainable adapter and head, synthetic data).

Invariants: a step moves exactly the trainable parameters; frozen weights are fingerprinted and checked; a run killed
with SIGKILL and resumed reproduces the uninterrupted losses; two torchrun processes (gloo, FSDP2) reproduce one
process; accumulation, the schedule and the non-finite guard behave as documented; the run leaves its log and plot.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from star.training import checkpointing
from star.training.config import OptimConfig, TrainConfig, apply_overrides
from star.training.optim import lr_at, param_groups
from star.training.runlog import read_log
from star.training.toy import ToyStage
from star.training.budget import (BUDGET_MARGIN, budget_rate, overruns_budget, recent_pace, steps_within_budget,
                                  with_steps)
from star.training.trainer import train

REPO = Path(__file__).resolve().parents[1]



def toy_config(out: Path, **overrides) -> TrainConfig:
    """The toy recipe, made small and quiet; `overrides` are --set style pairs (`stage_options.dropout=0.1`)."""
    base = {"out_dir": str(out), "steps": 8, "batch_size": 8, "checkpoint_every": 0, "progress": False,
            "device": "cpu", "optim.warmup_steps": 2}
    base.update(overrides)
    return apply_overrides(ToyStage().default_config(), [f"{k}={json.dumps(v)}" for k, v in base.items()])


def losses(out: Path) -> dict[int, float | None]:
    return {r["step"]: r["loss"] for r in read_log(out / "log.jsonl")}


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


class SpyStage(ToyStage):
    """ToyStage that keeps the model it built and a snapshot of the trainable weights at every loss call."""

    def __init__(self, corrupt_base_at_call: int | None = None):
        self.model, self.snapshots, self.corrupt_base_at_call = None, [], corrupt_base_at_call

    def build(self, config, device, dtype):
        self.model = super().build(config, device, dtype)
        return self.model

    def loss(self, model, batch):
        self.snapshots.append({k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad})
        if self.corrupt_base_at_call == len(self.snapshots):
            with torch.no_grad():
                model.base[0].weight[0, 0] += 1.0  # a bug that writes to a frozen tensor
        return super().loss(model, batch)


# -----------------------------------------------------------------------------
# Freezing


def test_step_moves_trainable_params_and_leaves_frozen_bit_identical(tmp_path):
    stage = SpyStage()
    train(toy_config(tmp_path, steps=1, export=False), stage)
    torch.manual_seed(0)
    fresh = ToyStage().build(toy_config(tmp_path), torch.device("cpu"), torch.float32)  # the same seeded build
    after = dict(stage.model.named_parameters())
    for name, p in fresh.named_parameters():
        if name.startswith("base."):
            assert torch.equal(after[name], p) and not after[name].requires_grad, f"frozen {name} changed"
        else:
            assert not torch.equal(after[name], p), f"trainable {name} did not move"
    assert stage.snapshots[0]["head.out.weight"].equal(fresh.head.out.weight)  # the spy saw the initial weights


def test_frozen_hash_verification_catches_a_changed_tensor(tmp_path):
    torch.manual_seed(0)
    model = ToyStage().build(toy_config(tmp_path), torch.device("cpu"), torch.float32)
    hashes = checkpointing.frozen_hashes(model, ("base",))
    assert set(hashes) == {"base.0.weight", "base.0.bias", "base.2.weight", "base.2.bias"}
    checkpointing.verify_frozen(model, ("base",), hashes, when="unchanged")  # passes
    with torch.no_grad():
        w = model.base[2].weight
        w.view(-1)[7] = torch.nextafter(w.view(-1)[7], torch.tensor(math.inf))  # one ulp
    with pytest.raises(RuntimeError, match=r"frozen weights changed .*base\.2\.weight"):
        checkpointing.verify_frozen(model, ("base",), hashes, when="after one ulp")
    # and inside a run: the checkpoint after the corruption refuses to save
    with pytest.raises(RuntimeError, match="frozen weights changed"):
        train(toy_config(tmp_path / "run", steps=4, checkpoint_every=2, export=False), SpyStage(corrupt_base_at_call=3))
    assert [p.name for p in checkpointing.list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_00000002"]


def test_declaration_is_enforced(tmp_path):
    class Unfrozen(ToyStage):
        def build(self, config, device, dtype):
            return super().build(config, device, dtype).requires_grad_(True)

    with pytest.raises(ValueError, match=r"base\.0\.weight.*declared frozen"):
        train(toy_config(tmp_path), Unfrozen())


# -----------------------------------------------------------------------------
# Resume


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    # dropout on and 2-step accumulation, so RNG states and the data position must both be restored exactly
    sets = {"steps": 12, "checkpoint_every": 3, "grad_accum": 2, "stage_options.dropout": 0.1}
    reference = tmp_path / "reference"
    train(toy_config(reference, **sets), ToyStage())
    sets["stage_options.step_delay"] = 0.1  # slows the killed run (not the math) so the kill lands part-way

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "star.training.cli", "--stage", "toy", "--out", str(run), "--set", "device=cpu",
           "--set", "progress=false", "--set", "batch_size=8", "--set", "optim.warmup_steps=2"]
    cmd += [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while not (run / "checkpoints" / "step_00000006" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "the subprocess never wrote checkpoint 6"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert checkpointing.latest_checkpoint(run / "checkpoints").name in ("step_00000006", "step_00000009")
    (run / "checkpoints" / "step_00000012.tmp").mkdir()  # debris of a save interrupted mid-way: must be ignored

    train(toy_config(run, resume=True, **sets), ToyStage())
    expected, got = losses(reference), losses(run)
    steps = [r["step"] for r in read_log(run / "log.jsonl")]
    assert steps == list(range(1, 13)), "each step logged once (the killed run's records after the checkpoint go)"
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-6, (step, got[step], expected[step])
    assert not (run / "checkpoints" / "step_00000012.tmp").exists()
    a = load_file(reference / "export" / "trainable.safetensors")
    b = load_file(run / "export" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    train(toy_config(tmp_path, steps=2, export=False), ToyStage())
    with pytest.raises(ValueError, match="--resume"):
        train(toy_config(tmp_path, steps=2, export=False), ToyStage())


def test_resume_without_the_rng_file_says_why_it_reseeds(tmp_path, capsys):
    train(toy_config(tmp_path, steps=2, export=False), ToyStage())
    (tmp_path / "checkpoints" / "step_00000002" / "rng_rank0.pt").unlink()
    capsys.readouterr()
    train(toy_config(tmp_path, steps=3, export=False, resume=True), ToyStage())
    out = capsys.readouterr().out
    assert "note: checkpoint has no rng_rank0.pt; RNG streams are reseeded" in out and "written by" not in out, out


# -----------------------------------------------------------------------------
# Two processes


def torchrun_toy(out: Path, parallel: str, *sets: str) -> None:
    """2 CPU processes (gloo) running the toy stage for 20 steps, global batch 16 = 2 ranks x 2 micro-steps x 4."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "star.training.cli", "--stage", "toy", "--out", str(out), "--steps", "20"]
    for item in ("device=cpu", "progress=false", "batch_size=16", "grad_accum=2", "checkpoint_every=10",
                 "optim.warmup_steps=2", f"parallel={parallel}", *sets):
        cmd += ["--set", item]
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def assert_same_run(one: Path, two: Path, steps=range(1, 21), rel=1e-5) -> None:
    expected, got = losses(one), losses(two)
    assert [r["step"] for r in read_log(two / "log.jsonl")] == list(range(1, 21))
    for step in steps:
        assert abs(got[step] - expected[step]) <= rel * abs(expected[step]), (step, got[step], expected[step])
    a, b = load_file(one / "export" / "trainable.safetensors"), load_file(two / "export" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=rel, atol=1e-6) for k in a)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    """The reference: 1 process, 1 micro-step of 16 samples, 20 steps."""
    out = tmp_path_factory.mktemp("one")
    train(toy_config(out, steps=20, batch_size=16, checkpoint_every=10), ToyStage())
    return out


def test_torchrun_two_processes_fsdp_match_one_process(tmp_path, one_process_run):
    """2 ranks x 2 accumulation micro-steps x 4 samples (gloo, FSDP2 on adapter and head) vs 1 rank x 16 samples:
    the same losses to 1e-5 relative over 20 steps (measured ~3e-7: only reduction order differs), the same exported
    weights. The sharded step-10 checkpoint then resumes in one process (DCP reshards it) and matches again."""
    two = tmp_path / "two"
    torchrun_toy(two, "fsdp")
    assert_same_run(one_process_run, two)

    ckpt = two / "checkpoints" / "step_00000010"
    assert checkpointing.read_trainer_state(ckpt)["world_size"] == 2
    assert len(list((ckpt / "state").glob("*.distcp"))) == 2  # one shard file per rank
    shutil.rmtree(two / "checkpoints" / "step_00000020")
    train(toy_config(two, steps=20, batch_size=16, checkpoint_every=10, resume=True), ToyStage())
    assert_same_run(one_process_run, two, steps=range(11, 21))


@pytest.mark.slow
def test_torchrun_two_processes_ddp_match_one_process(tmp_path, one_process_run):
    """The same comparison with DDP (no_sync on the first micro-step)."""
    torchrun_toy(tmp_path / "ddp", "ddp")
    assert_same_run(one_process_run, tmp_path / "ddp")


# -----------------------------------------------------------------------------
# Optimizer, accumulation, guard


def test_warmup_then_cosine_to_min_lr():
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=4)
    got = [lr_at(s, cfg, decay_steps=12) for s in range(14)]
    assert got[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up, reaching lr on the last warm-up step
    assert got[4] == 1.0  # cosine starts at lr ...
    assert math.isclose(got[8], 0.1 + 0.9 * 0.5)  # ... is halfway down halfway through ...
    assert math.isclose(got[12], 0.1) and got[13] == 0.1  # ... and stays at min_lr after decay_steps
    assert all(a >= b for a, b in zip(got[3:], got[4:]))  # monotone after warm-up


def test_time_budget_arithmetic():
    cfg = TrainConfig(steps=1000, time_budget_s=100.0, optim=OptimConfig(warmup_steps=20, decay_steps=800))
    # 20 steps timed, the later 10 at a median of 0.5 s, 12 s spent: 20 + 88 * 0.97 / 0.5 = 190 steps fit
    assert budget_rate([3.0] * 9 + [0.5] * 11) == 0.5                     # the slow first steps do not count
    assert steps_within_budget(cfg, 20, 12.0, 0.5) == 20 + int(88 * BUDGET_MARGIN / 0.5)
    assert steps_within_budget(cfg, 20, 12.0, 0.01) == 1000               # never more than planned
    assert steps_within_budget(cfg, 20, 150.0, 0.5) == 20                 # over budget already: stop where it is
    short = with_steps(cfg, 250)
    assert short.steps == 250 and short.optim.decay_steps == 200         # the schedule keeps its shape
    assert with_steps(TrainConfig(steps=1000), 250).optim.decay_steps is None   # decays over the 250 steps
    assert not overruns_budget(short, 100, 40.0, 0.4)                    # 40 + 150 * 0.4 = 100: just fits
    # the running pace: the slower of the last 10 steps' median and the wall clock over the last 50 steps
    ends = [float(t) for t in range(61)]                                  # 1 s per step on the wall clock ...
    assert recent_pace([0.5] * 60, ends) == 1.0                          # ... of which checkpoints took half
    assert recent_pace([0.5] * 50 + [3.0] * 10, ends) == 3.0             # a slowdown shows within a few steps
    assert overruns_budget(short, 100, 40.0, 0.41)


class CrashStage(ToyStage):
    """ToyStage whose loss raises at one call: a run that dies part-way."""

    def __init__(self, crash_at_call: int):
        self.calls, self.crash_at_call = 0, crash_at_call

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.crash_at_call:
            raise RuntimeError("simulated crash")
        return super().loss(model, batch)


def test_time_budget_shortens_the_run_and_a_resume_keeps_it(tmp_path):
    # 1,000 planned steps of >= 0.1 s cannot fit 60 s: after timing the 4 warm-up steps the trainer shortens the run;
    # it checkpoints at step 5 and dies in step 10, before its first check of the pace (which needs 10 timed steps)
    sets = {"steps": 1000, "time_budget_s": 60.0, "checkpoint_every": 5, "optim.warmup_steps": 4,
            "stage_options.step_delay": 0.1}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(toy_config(tmp_path, **sets), CrashStage(crash_at_call=10))
    fit = json.loads((tmp_path / "config.json").read_text())["steps"]
    assert 10 < fit <= 4 + int(60.0 * BUDGET_MARGIN / 0.1) < 1000
    state = checkpointing.read_trainer_state(checkpointing.latest_checkpoint(tmp_path / "checkpoints"))
    assert state["step"] == 5 and state["budget_steps"] == fit and state["budget_spent_s"] >= 5 * 0.1

    # resumed without the delay, the whole plan would fit now; the run keeps the length it decided
    sets.update({"stage_options.step_delay": 0.0, "checkpoint_every": 0})
    summary = train(toy_config(tmp_path, resume=True, **sets), ToyStage())
    assert summary["step"] == fit and summary["planned_steps"] == 1000
    records = read_log(tmp_path / "log.jsonl")
    assert [r["step"] for r in records] == list(range(1, fit + 1))
    optim = OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=4, weight_decay=0.01)
    assert all(math.isclose(r["lr"], lr_at(r["step"] - 1, optim, fit)) for r in records), \
        "one schedule, warm-up to cosine over the shortened run, on both sides of the crash"
    assert records[-1]["lr"] < 0.25 * 3e-3 < lr_at(fit - 1, optim, 1000), "near min_lr at the end, not mid-way"
    final = checkpointing.read_trainer_state(checkpointing.latest_checkpoint(tmp_path / "checkpoints"))
    assert final["budget_spent_s"] > state["budget_spent_s"], "the time spent runs on across the resume"


class SlowdownStage(ToyStage):
    """ToyStage whose loss sleeps `fast` seconds per call up to call `at`, then `slow`: a machine that slows later."""

    def __init__(self, fast: float, slow: float, at: int):
        self.calls, self.fast, self.slow, self.at = 0, fast, slow, at

    def loss(self, model, batch):
        self.calls += 1
        time.sleep(self.fast if self.calls <= self.at else self.slow)
        return super().loss(model, batch)


def test_time_budget_shortens_the_run_again_when_the_machine_slows_down(tmp_path, capsys):
    # timed at ~0.01 s/step over the 4 warm-up steps, a few hundred steps fit 6 s; from step 40 on each step takes
    # 0.05 s, at which that plan would end far past the budget: the trainer sees the pace change and ends in time
    sets = {"steps": 2000, "time_budget_s": 6.0, "optim.warmup_steps": 4}
    summary = train(toy_config(tmp_path, **sets), SlowdownStage(fast=0.01, slow=0.05, at=40))
    first_plan = int(re.search(r"(\d+) of 2000 steps fit", capsys.readouterr().out).group(1))
    assert 40 < summary["step"] < 0.6 * first_plan, "shortened again after the slowdown, not stopped at once"
    records = read_log(tmp_path / "log.jsonl")
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == summary["step"] == records[-1]["step"]
    assert records[-1]["time_s"] <= 6.0 + 0.5, "the run ends within its budget (half a second for this machine)"
    optim = OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=4, weight_decay=0.01)
    assert math.isclose(records[-1]["lr"], lr_at(summary["step"] - 1, optim, summary["step"])), \
        "the cosine ends at the new end"
    state = checkpointing.read_trainer_state(checkpointing.latest_checkpoint(tmp_path / "checkpoints"))
    assert state["budget_steps"] == summary["step"] and 0 < state["budget_spent_s"] <= 6.0 + 1.0


def test_time_budget_that_fits_changes_nothing(tmp_path):
    plain = train(toy_config(tmp_path / "plain"), ToyStage())
    budget = train(toy_config(tmp_path / "budget", time_budget_s=600.0), ToyStage())
    assert plain["step"] == budget["step"] == 8
    assert losses(tmp_path / "plain") == losses(tmp_path / "budget")


def test_bf16_autocast_trains_on_cpu_with_fp32_master_weights(tmp_path):
    fp32, bf16 = SpyStage(), SpyStage()
    train(toy_config(tmp_path / "fp32", precision="fp32", export=False), fp32)
    train(toy_config(tmp_path / "bf16", precision="bf16", export=False), bf16)
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert a.keys() == b.keys() and all(math.isfinite(v) for v in b.values())
    assert a != b, "bf16 autocast did the math in bf16"
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=0.05), step
    trained = [p for p in bf16.model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained), "trainable weights stay fp32 (AdamW's masters)"
    moved = [not torch.equal(x, y) for x, y in zip(bf16.snapshots[0].values(), bf16.snapshots[-1].values())]
    assert all(moved), "every trainable tensor was updated"


def test_no_weight_decay_on_norms_biases_and_1d_params(tmp_path):
    torch.manual_seed(0)
    model = ToyStage().build(toy_config(tmp_path), torch.device("cpu"), torch.float32)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} >= {"head.norm.weight", "head.norm.bias", "adapter.bias"}
    assert not any(names[id(p)].startswith("base.") for g in (decay, no_decay) for p in g["params"])


def test_grad_accumulation_equals_the_larger_batch(tmp_path):
    """batch 8 as 2 micro-steps of 4 == batch 8 in one micro-step (same samples, mean of equal-size means)."""
    train(toy_config(tmp_path / "accum", grad_accum=2, steps=6), ToyStage())
    train(toy_config(tmp_path / "whole", grad_accum=1, steps=6), ToyStage())
    a, b = losses(tmp_path / "accum"), losses(tmp_path / "whole")
    assert all(abs(a[s] - b[s]) <= 1e-6 for s in b), (a, b)
    wa = load_file(tmp_path / "accum" / "export" / "trainable.safetensors")
    wb = load_file(tmp_path / "whole" / "export" / "trainable.safetensors")
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6) for k in wa)


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path):
    sets = {"steps": 4, "export": False, "stage_options.dropout": 0.2}
    train(toy_config(tmp_path / "ac", activation_checkpointing=True, **sets), ToyStage())
    train(toy_config(tmp_path / "plain", **sets), ToyStage())
    assert losses(tmp_path / "ac") == losses(tmp_path / "plain")  # recompute replays the same dropout masks


def test_nonfinite_steps_are_skipped_counted_and_bounded(tmp_path):
    # batch 8: samples 16..23 form step 3; one NaN input there poisons that step's loss and gradients
    stage = SpyStage()
    summary = train(toy_config(tmp_path / "one", steps=5, **{"stage_options.nonfinite_samples": [18]}), stage)
    log = {r["step"]: r for r in read_log(tmp_path / "one" / "log.jsonl")}
    assert [log[s]["skipped_step"] for s in range(1, 6)] == [False, False, True, False, False]
    assert log[3]["loss"] is None and log[3]["grad_norm"] is None  # non-finite values are logged as null
    assert [log[s]["skipped"] for s in range(1, 6)] == [0, 0, 1, 1, 1] and summary["skipped"] == 1
    assert log[5]["data_warnings"] == {"nonfinite_inputs": 1}
    before, after = stage.snapshots[2], stage.snapshots[3]  # weights entering step 3 and step 4
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step must not touch the weights"
    assert all(math.isfinite(v) for s in (4, 5) for v in (log[s]["loss"], log[s]["grad_norm"]))

    # a resumed run keeps counting from the checkpoint's totals (the NaN sample was drawn before the checkpoint)
    sets = {"checkpoint_every": 3, "stage_options.nonfinite_samples": [18]}
    train(toy_config(tmp_path / "resumed", steps=3, **sets), ToyStage())
    train(toy_config(tmp_path / "resumed", steps=5, resume=True, **sets), ToyStage())
    assert [r["data_warnings"] for r in read_log(tmp_path / "resumed" / "log.jsonl")] == \
        [log[s]["data_warnings"] for s in range(1, 6)]

    with pytest.raises(RuntimeError, match="3 consecutive steps"):
        train(toy_config(tmp_path / "many", steps=6, max_consecutive_nonfinite=3,
                         **{"stage_options.nonfinite_samples": [8, 16, 24]}), ToyStage())


# -----------------------------------------------------------------------------
# Artifacts and config


def test_run_leaves_config_log_plot_and_export(tmp_path):
    summary = train(toy_config(tmp_path, steps=3, checkpoint_every=2, keep_checkpoints=1), ToyStage())
    records = read_log(tmp_path / "log.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "skipped", "accuracy", "data_warnings"):
        assert key in records[-1], key
    assert records[-1]["tokens_per_s"] > 0 and summary["loss"] == records[-1]["loss"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "config.json").read_text())["stage"] == "toy"
    assert [p.name for p in checkpointing.list_checkpoints(tmp_path / "checkpoints")] == ["step_00000003"]
    exported = load_file(tmp_path / "export" / "trainable.safetensors")
    assert exported and not any(k.startswith("base.") for k in exported)  # frozen parts are never duplicated
    from torch.distributed.checkpoint import FileSystemReader

    stored = FileSystemReader(tmp_path / "checkpoints" / "step_00000003" / "state").read_metadata().state_dict_metadata
    model_keys = {k.removeprefix("model.") for k in stored if k.startswith("model.")}
    assert model_keys == set(exported)  # the checkpoint holds the trainable parameters, the base only as hashes
    assert any(k.startswith("optim.state.head.out.weight.exp_avg") for k in stored)


def test_cli_config_and_device_errors_are_one_clear_line(tmp_path, capsys):
    from star.cli import main

    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    for config, message in [(tmp_path / "bad.json", "bad.json: not valid JSON"), ("{steps: 3}", "not valid JSON"),
                            (tmp_path / "list.json", "expected a JSON object of config fields, got list")]:
        assert main(["train", "toy", "--config", str(config), "--print-config"]) == 2
        assert message in capsys.readouterr().err, config
    assert main(["train", "toy", "--out", str(tmp_path / "run"), "--set", "device=nodev"]) == 2
    assert "device 'nodev' is not a torch device" in capsys.readouterr().err


def test_config_overrides_are_typed_and_validated():
    sets = ["optim.lr=1e-4", "steps=5", "stage_options.hidden=64", "optim.betas=[0.8,0.9]"]
    cfg = apply_overrides(TrainConfig(), sets)
    assert cfg.optim.lr == 1e-4 and cfg.steps == 5 and cfg.stage_options == {"hidden": 64}
    assert cfg.optim.betas == (0.8, 0.9)
    with pytest.raises(KeyError, match="known"):
        apply_overrides(TrainConfig(), ["optim.lrr=1"])
    with pytest.raises(ValueError, match="steps: expected int"):
        apply_overrides(TrainConfig(), ["steps=ten"])
    with pytest.raises(ValueError, match="^optim.lr: expected float"):
        apply_overrides(TrainConfig(), ["optim.lr=fast"])
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(batch_size=10, grad_accum=4)
    with pytest.raises(ValueError, match="collective_timeout_min must be > 0"):
        TrainConfig(collective_timeout_min=0)
    with pytest.raises(ValueError, match="world_size=3"):
        TrainConfig(batch_size=8).micro_batch_size(3)
