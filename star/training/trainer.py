"""The one training loop every STAR stage runs on: `train(config, stage)`.

Reads top to bottom: processes and devices -> resume point -> model (frozen parts checked and fingerprinted) ->
parallelism -> optimizer and state -> data -> loop (accumulate, clip, guard, step, log, checkpoint) -> export.
The same code runs as one CPU process and under torchrun on many GPUs; what differs lives in `parallel.py`.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from star.io import replace_dir
from star.training import checkpointing, parallel
from star.training.budget import TimeBudget, with_steps
from star.training.config import TrainConfig, to_dict
from star.training.ema import EMA
from star.training.optim import build_optimizer, lr_at, set_lr
from star.training.runlog import RunLog, plot_loss_curve, read_log
from star.training.stages import Stage


# Settings that may change between a run and its resume without changing the math (beyond float rounding).
_RESUME_FREE = {
    "out_dir", "resume", "progress", "log_every", "checkpoint_every", "keep_checkpoints", "export", "snapshot_every",
    "parallel", "device", "activation_checkpointing", "grad_accum", "max_consecutive_nonfinite", "time_budget_s",
    "collective_timeout_min",
}

def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): bf16 autocast then trains faster than fp32
    (x1.48 per step on the shapes recipe's editing stage, 2 EPYC cores); elsewhere it is emulated and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def compute_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    """bf16 autocast on CUDA by default, fp32 elsewhere; "bf16" asks for it on a CPU too (see cpu_has_bf16)."""
    if config.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if config.precision == "bf16" else torch.float32


def check_declaration(model: nn.Module, stage: Stage) -> dict[str, int]:
    """Every parameter sits under exactly one declared module, with requires_grad matching the declaration.

    Returns parameter counts per declared module."""
    names = list(stage.trainable) + list(stage.frozen)
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"stage {stage.name!r} declares module {name!r}, which the built model lacks") from exc
    nested = [(a, b) for a in names for b in names if a == b and names.count(a) > 1 or b.startswith(a + ".")]
    if nested:
        raise ValueError(f"stage {stage.name!r}: declared modules {nested[0]} overlap; declare disjoint modules once")
    counts = {name: 0 for name in names}
    for key, p in model.named_parameters():
        owner = [n for n in names if key.startswith(n + ".")]
        if not owner:
            raise ValueError(
                f"parameter {key!r} is in neither trainable {stage.trainable} nor frozen {stage.frozen} modules of "
                f"stage {stage.name!r}; add its module to one of them"
            )
        trains = owner[0] in stage.trainable
        if p.requires_grad != trains:
            raise ValueError(
                f"parameter {key!r} has requires_grad={p.requires_grad} but its module {owner[0]!r} is declared "
                f"{'trainable' if trains else 'frozen'}; stage.build must freeze exactly the frozen modules"
            )
        if trains and p.dtype != torch.float32:
            raise ValueError(
                f"trainable parameter {key!r} is {p.dtype}; keep trainable weights in float32 (AdamW master weights) "
                "and let autocast / FSDP mixed precision do the low-precision math"
            )
        counts[owner[0]] += p.numel()
    return counts


def _print0(env: parallel.Dist, *args) -> None:
    if env.is_main:
        print(*args, flush=True)


def train(config: TrainConfig, stage: Stage) -> dict[str, Any]:
    """Train `stage` as `config` says; returns a summary (final step, last loss, skipped steps, paths)."""
    env = parallel.setup(config)
    try:
        summary = _train(config, stage, env)
    except BaseException:
        parallel.teardown(env, clean=False)
        raise
    parallel.teardown(env)
    return summary


def _train(config: TrainConfig, stage: Stage, env: parallel.Dist) -> dict[str, Any]:
    run_start = time.perf_counter()
    planned = config                             # before a time budget shortens the run

    # -----------------------------------------------------------------------------
    # Processes, devices, precision
    out = Path(config.out_dir)
    ckpt_root = out / "checkpoints"
    mode = parallel.resolve_parallel(config, env)
    dtype = compute_dtype(config, env.device)
    micro = config.micro_batch_size(env.world_size)

    def autocast():
        return torch.autocast(env.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    _print0(
        env,
        f"stage {stage.name!r}: {env.world_size} process(es) on {env.device.type}, parallel={mode}, "
        f"precision={dtype}, global batch {config.batch_size} = {env.world_size} ranks x {config.grad_accum} "
        f"accumulation x {micro} samples",
    )

    # -----------------------------------------------------------------------------
    # Resume point: the newest complete checkpoint, or a fresh run in a folder without checkpoints
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        checkpointing.clean_partial(ckpt_root)
    parallel.barrier(env)
    resume_from = parallel.broadcast_object(env, checkpointing.latest_checkpoint(ckpt_root) if env.is_main else None)
    if resume_from is not None and not config.resume:
        raise ValueError(
            f"{ckpt_root} already holds checkpoints (newest: {resume_from.name}); pass --resume (resume=True) to "
            "continue that run, or choose another out_dir"
        )
    if config.resume and resume_from is None:
        _print0(env, f"resume: no checkpoint in {ckpt_root}, starting fresh")

    # -----------------------------------------------------------------------------
    # Model: built identically on every rank, frozen parts frozen by the stage, checked and fingerprinted here
    checkpointing.seed_everything(config.seed)
    model = stage.build(config, env.device, dtype)
    counts = check_declaration(model, stage)
    trainable_count = sum(counts[n] for n in stage.trainable)
    total_count = sum(p.numel() for p in model.parameters())
    share = 100 * trainable_count / max(total_count, 1)
    _print0(env, f"trainable params: {trainable_count:,} / {total_count:,} ({share:.2f}%)")
    for name in stage.trainable + stage.frozen:
        _print0(env, f"  {'train ' if name in stage.trainable else 'frozen'} {name}: {counts[name]:,}")
    frozen_sha = checkpointing.frozen_hashes(model, stage.frozen)

    # -----------------------------------------------------------------------------
    # Parallelism: activation checkpointing, then FSDP2 / DDP on the trainable parts
    if config.activation_checkpointing:
        n = parallel.apply_activation_checkpointing(model, stage.trainable + tuple(getattr(stage, "recompute", ())))
        _print0(env, f"activation checkpointing: {n} blocks")
    wrapped = parallel.wrap(model, stage.trainable, mode, env, dtype)

    # -----------------------------------------------------------------------------
    # Optimizer and state (fresh, or restored from the checkpoint)
    optimizer = build_optimizer(model, config.optim)  # after wrapping: FSDP2 replaced the parameters by shards
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    step, position, skipped, consecutive = 0, 0, 0, 0  # position: samples of the global stream consumed
    warnings_before = None                             # data-warning totals of the checkpoint resumed from
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    extra = {"ema": ema.shadow} if ema is not None else None
    if resume_from is not None:
        if ema is not None and "ema_updates" not in checkpointing.read_trainer_state(resume_from):
            raise ValueError(f"{resume_from} has no EMA weights (the run started with ema_decay=0); resume with "
                             "ema_decay=0 or start a new run")
        state = checkpointing.load(resume_from, model, optimizer, stage.frozen, env, extra=extra)
        if ema is not None:
            ema.updates = state["ema_updates"]
        if state.get("budget_steps") is not None:                # a time budget fixed the run's length already
            config = with_steps(planned, state["budget_steps"])
            if state["budget_steps"] != planned.steps:
                _print0(env, f"the run's time budget fixed it at {state['budget_steps']} steps (of {planned.steps} "
                             f"configured); the resume keeps them")
        if state["stage"] != stage.name:
            raise ValueError(f"{resume_from} was written by stage {state['stage']!r}, not {stage.name!r}")
        if state["frozen_sha256"] != frozen_sha:
            raise RuntimeError(
                f"the frozen weights built now differ from those recorded in {resume_from}: the base model (or its "
                "folder) changed since the run started; resuming would train against a different base"
            )
        changed = {k for k, v in to_dict(config).items() if state["config"].get(k) != v} - _RESUME_FREE
        if changed:
            _print0(env, f"warning: resuming with changed {sorted(changed)}: losses will differ from an unbroken run")
        step, position = state["step"], state["position"]
        skipped, consecutive = state["skipped"], state["consecutive_nonfinite"]
        warnings_before = state.get("data_warnings")
        _print0(env, f"resumed from {resume_from} at step {step}")
    else:
        state = None
        checkpointing.seed_everything(config.seed + env.rank)  # per-rank streams (dropout) from here on

    def write_config() -> None:
        """OUT/config.json: the resolved config as the run trains it (rewritten when a time budget shortens it)."""
        if env.is_main:
            checkpointing.write_json_atomic(out / "config.json", {"stage": stage.name, **to_dict(config)})

    write_config()
    log = RunLog(out / "log.jsonl", enabled=env.is_main, keep_until=step if resume_from is not None else None)

    budget = TimeBudget(config, step=step, resumed=state, process_start=run_start)
    if budget.active and budget.spent_before is None:
        _print0(env, f"{resume_from} does not record the time its run spent: the time budget keeps the "
                     f"{config.steps} steps decided and is not checked again")

    def save_checkpoint() -> None:
        checkpointing.verify_frozen(model, stage.frozen, frozen_sha, when=f"checkpoint at step {step}")
        trainer_state = {
            "step": step,
            "position": position,
            "skipped": skipped,
            "consecutive_nonfinite": consecutive,
            "world_size": env.world_size,
            "stage": stage.name,
            "frozen_sha256": frozen_sha,
            "config": to_dict(config),
            **({"ema_updates": ema.updates} if ema is not None else {}),
            **budget.checkpoint_state(config.steps),
            **({"data_warnings": warning_totals()} if counts_warnings else {}),
            **({"data_sizes": data_sizes} if data_sizes is not None else {}),
        }
        checkpointing.save(ckpt_root, step, model, optimizer, stage.frozen, trainer_state, env, config.keep_checkpoints,
                           extra=extra)
        if env.is_main:
            plot_loss_curve(read_log(log.path), out / "loss.png", title=f"{stage.name}: {out.name}")

    def export_weights(path: Path) -> None:
        """stage.export of the model as it is now, from a plain unsharded module on rank 0 (a collective under
        FSDP2), written under a temp name and renamed into place."""
        tmp = path.with_name(path.name + ".tmp")
        if mode == "fsdp":
            full = checkpointing.full_trainable_state(model, stage.frozen)  # collective; tensors on rank 0 only
            if env.is_main:
                rng = checkpointing.rng_state()  # a mid-run snapshot must not move the run's random streams
                checkpointing.seed_everything(config.seed)
                plain = stage.build(config, torch.device("cpu"), dtype)
                checkpointing.set_rng_state(rng)
                result = plain.load_state_dict(full, strict=False)
                missing = [k for k in result.missing_keys if not checkpointing.is_under(k, stage.frozen)]
                if missing or result.unexpected_keys:
                    raise KeyError(f"export: missing={missing[:5]} unexpected={result.unexpected_keys[:5]}")
                checkpointing.verify_frozen(plain, stage.frozen, frozen_sha, when="export rebuild")
        else:
            plain = model
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            stage.export(plain, tmp)
            replace_dir(tmp, path)
        parallel.barrier(env)

    # -----------------------------------------------------------------------------
    # Data: this rank's micro-batches, from the position the checkpoint recorded
    stream = stage.batches(config, env.rank, env.world_size, position)
    data_sizes = getattr(getattr(stream, "mixture", None), "sizes", None)     # records per source, if it mixes
    if state is not None and data_sizes is not None and state.get("data_sizes") not in (None, data_sizes):
        _print0(env, f"warning: the data changed since {resume_from.name}: records per source "
                     f"{state['data_sizes']} then, {data_sizes} now; the resumed run does not continue the same "
                     f"sample stream (restore the data for an exact resume)")

    # Data-warning counts run on across a resume: the checkpoint's totals plus what this process counted since its
    # stream was built (what building it counted, e.g. records skipped when indexing, is in both already)
    counts_warnings = getattr(stream, "warnings", None) is not None
    warnings_at_start = _gather_warnings(env, stream.warnings) if counts_warnings else {}
    if warnings_before is None:
        warnings_before = warnings_at_start

    def warning_totals() -> dict[str, int]:
        now = _gather_warnings(env, stream.warnings)
        return {k: warnings_before.get(k, 0) + now.get(k, 0) - warnings_at_start.get(k, 0)
                for k in sorted({*warnings_before, *now})}

    # -----------------------------------------------------------------------------
    # Loop
    model.train()
    for name in stage.frozen:
        model.get_submodule(name).eval()  # frozen means frozen: no dropout, no running-stat updates
    bar = None
    if env.is_main and config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=step, desc=stage.name, dynamic_ncols=True)
    start_time, last_record = time.perf_counter(), None
    budget.start_loop()
    while step < config.steps:
        lr = lr_at(step, config.optim, config.total_decay_steps())
        set_lr(optimizer, lr)
        t0 = time.perf_counter()

        # forward/backward over the accumulation micro-steps (DDP synchronises gradients on the last one only)
        loss_sum, tokens, metric_sums = torch.zeros((), device=env.device), 0.0, {}
        for a in range(config.grad_accum):
            batch = next(stream)
            with parallel.gradient_sync(wrapped, mode, sync=a == config.grad_accum - 1):
                with autocast():
                    loss, metrics = stage.loss(wrapped, batch)
                (loss / config.grad_accum).backward()
            loss_sum += loss.detach().float()  # no host sync per micro-step
            tokens += float(metrics.get("tokens", 0.0))
            for k, v in metrics.items():
                if k != "tokens":
                    metric_sums[k] = metric_sums.get(k, 0.0) + float(v)

        # gradient norm (global, also under FSDP), clipping, and the non-finite guard: all ranks decide alike
        norm = torch.nn.utils.clip_grad_norm_(trainable_params, config.optim.grad_clip or math.inf)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        keys = sorted(metric_sums)
        others = torch.tensor([tokens] + [metric_sums[k] for k in keys], dtype=torch.float64)
        scalars = torch.cat([loss_sum.double().reshape(1).cpu(), others])
        scalars = parallel.all_reduce_mean(env, scalars)
        step_loss = float(scalars[0]) / config.grad_accum
        finite = math.isfinite(grad_norm) and math.isfinite(step_loss)
        if finite:
            optimizer.step()
            if ema is not None:
                ema.update()
            consecutive = 0
        else:
            skipped += 1
            consecutive += 1
        optimizer.zero_grad(set_to_none=True)
        step += 1
        position += config.batch_size
        if consecutive >= config.max_consecutive_nonfinite:
            raise RuntimeError(
                f"{consecutive} consecutive steps had a non-finite loss or gradient norm (last: step {step}, "
                f"loss={step_loss}, grad_norm={grad_norm}); stopping. Look for bad data (see data_warnings in "
                f"{log.path}), lower optim.lr, or raise max_consecutive_nonfinite if the spikes are expected"
            )

        # a time budget: once the first steps are timed, the run's length is decided (checkpoints keep it); then,
        # every few steps, a run whose recent pace would end it past the budget is shortened again
        dt = time.perf_counter() - t0
        budget.record(dt)
        if budget.due(step, config.steps):
            fit, why = parallel.broadcast_object(env, budget.plan(config, step))
            if why:
                _print0(env, why)
            if fit != config.steps or not budget.decided:
                config, budget.decided = with_steps(planned, fit), True
                write_config()
                if bar is not None:
                    bar.total = config.steps

        # log: one JSONL record, the progress bar
        if step % config.log_every == 0 or step == config.steps:
            record = {
                "step": step,
                "loss": step_loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "skipped_step": not finite,
                "skipped": skipped,
                "tokens_per_s": float(scalars[1]) * env.world_size / dt,
                "samples_per_s": config.batch_size / dt,
                "time_s": time.perf_counter() - start_time,
                **{k: float(scalars[2 + i]) / config.grad_accum for i, k in enumerate(keys)},
            }
            if counts_warnings:
                record["data_warnings"] = warning_totals()
            log.write(record)
            last_record = record
            if bar is not None:
                rate = f"{record['tokens_per_s']:.0f} tok/s" if tokens else f"{record['samples_per_s']:.1f} it/s"
                bar.set_postfix_str(f"loss {step_loss:.4f} lr {lr:.2e} {rate} skipped {skipped}", refresh=False)
        if bar is not None:
            bar.update(1)

        # checkpoint, snapshot
        if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.steps:
            save_checkpoint()
        if config.snapshot_every and step % config.snapshot_every == 0 and step < config.steps:
            with ema.applied() if ema is not None else nullcontext():
                export_weights(out / "snapshots" / f"step_{step:08d}")
    if bar is not None:
        bar.close()
    log.close()

    # -----------------------------------------------------------------------------
    # Export the trained parts
    export_dir = out / "export"
    if config.export:
        if ema is not None:
            ema.copy_to_model()  # the run is over (its last checkpoint holds the raw weights): export the averages
            _print0(env, f"exporting the EMA weights (decay {config.ema_decay}, {ema.updates} updates)")
        export_weights(export_dir)
        _print0(env, f"exported to {export_dir}")
    return {
        "rank": env.rank,
        "step": step,
        "planned_steps": planned.steps,
        "loss": last_record["loss"] if last_record else None,
        "skipped": skipped,
        "out_dir": str(out),
        "log": str(out / "log.jsonl"),
        "export_dir": str(export_dir) if config.export else None,
    }


def _gather_warnings(env: parallel.Dist, warnings: dict[str, int]) -> dict[str, int]:
    """Data-warning counts summed over ranks."""
    if not env.distributed:
        return dict(warnings)
    import torch.distributed as dist

    every = [None] * env.world_size
    dist.all_gather_object(every, dict(warnings))
    total: dict[str, int] = {}
    for w in every:
        for k, v in w.items():
            total[k] = total.get(k, 0) + int(v)
    return total
