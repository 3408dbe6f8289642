"""A run's wall-clock budget (`TrainConfig.time_budget_s`): how many steps fit, decided once the first steps are
timed, and shortened again whenever the recent pace would end the run past the budget.

Where it sits: the trainer records each step's time here (`TimeBudget.record`), asks at the steps where a decision
is due (`due`, the same steps on every rank) for a plan (`plan`, on rank 0's clock once broadcast), and shortens the
config with `with_steps`. Checkpoints keep the decision and the time spent (`checkpoint_state`), so a resumed run
trains the steps decided and counts the time its earlier processes spent. Collectives and printing stay in the
trainer; everything here is arithmetic on times.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from star.training.config import TrainConfig

BUDGET_CALIBRATION_STEPS = 50
"""With a time budget, the steps timed before the run's length is decided (fewer when the warm-up is shorter); the
rate is the median of the later half, as the first steps of a process run slow."""
BUDGET_MARGIN = 0.97
"""Share of the time left that the remaining steps may fill: checkpoints and the export are not in the step times."""
BUDGET_CHECK_EVERY = 5
"""After the decision, every this many steps the run's end is projected at its recent pace and the run shortened
again if that end lies past the budget (a machine that slows down later)."""
BUDGET_PACE_STEPS = (10, 50)
"""The recent pace, the slower of: the median time of the last 10 steps (reacts to a slowdown within a few steps) and
the wall-clock seconds per step over the last 50 (checkpoints and snapshots included)."""


def budget_rate(step_times: list[float]) -> float:
    """Seconds per step the first decision plans with: the median of the later half of the timed steps."""
    return statistics.median(step_times[len(step_times) // 2:])


def recent_pace(step_times: list[float], step_ends: list[float]) -> float:
    """Seconds per step the later checks project with (BUDGET_PACE_STEPS): `step_times` are the steps' own times,
    `step_ends` the wall clock at the ends of the last steps (and at the start of the first of them)."""
    short, long = BUDGET_PACE_STEPS
    ends = step_ends[-long - 1:]
    return max(statistics.median(step_times[-short:]), (ends[-1] - ends[0]) / (len(ends) - 1))


def steps_within_budget(config: TrainConfig, step: int, elapsed_s: float, per_step_s: float) -> int:
    """How many steps the run can have within `config.time_budget_s`: the `step` done, plus what the time left holds
    at `per_step_s`; never more than config.steps, never fewer than `step`."""
    fit = step + int((config.time_budget_s - elapsed_s) * BUDGET_MARGIN / per_step_s)
    return max(step, min(config.steps, fit))


def overruns_budget(config: TrainConfig, step: int, elapsed_s: float, per_step_s: float) -> bool:
    """Would the run's remaining steps at `per_step_s` end past `config.time_budget_s`?"""
    return elapsed_s + (config.steps - step) * per_step_s > config.time_budget_s


def with_steps(config: TrainConfig, steps: int) -> TrainConfig:
    """`config` shortened to `steps`; an explicit decay span shrinks in proportion, so the schedule keeps its shape."""
    decay = config.optim.decay_steps
    optim = config.optim if decay is None else dataclasses.replace(
        config.optim, decay_steps=max(1, round(decay * steps / config.steps)))
    return dataclasses.replace(config, steps=steps, optim=optim)


class TimeBudget:
    """The budget as one training process sees it: the time the run spent before this process (None when its
    checkpoint did not record it: no more checks then), this process's step times, and whether the length is decided."""

    def __init__(self, config: TrainConfig, *, step: int, resumed: dict | None, process_start: float):
        """`resumed`: the trainer state of the checkpoint the run resumes from (None for a fresh run)."""
        self.seconds = config.time_budget_s
        self.decided = resumed is not None and resumed.get("budget_steps") is not None
        self.spent_before = 0.0 if resumed is None else resumed.get("budget_spent_s", None if self.decided else 0.0)
        self.process_start = process_start
        self.calibrate_at = step + max(1, min(BUDGET_CALIBRATION_STEPS, config.optim.warmup_steps - step))
        self.step_times: list[float] = []                # each step's own time (calibration, recent pace)
        self.step_ends: list[float] = []                 # wall clock at the loop's start and at each step's end

    @property
    def active(self) -> bool:
        return self.seconds > 0

    def spent(self) -> float:
        """Seconds the run has taken: this process's so far, plus what the processes before a resume took (from the
        start of each to its last checkpoint)."""
        return (self.spent_before or 0.0) + time.perf_counter() - self.process_start

    def start_loop(self) -> None:
        self.step_ends = [time.perf_counter()]

    def record(self, step_time: float) -> None:
        if self.active:
            self.step_times.append(step_time)
            self.step_ends.append(time.perf_counter())
            del self.step_times[:-BUDGET_CALIBRATION_STEPS], self.step_ends[:-BUDGET_PACE_STEPS[1] - 1]

    def due(self, step: int, steps: int) -> bool:
        """Is a decision due after `step` (of `steps`)? The same answer on every rank."""
        if not self.active:
            return False
        if not self.decided:
            return step >= self.calibrate_at
        return (self.spent_before is not None and step % BUDGET_CHECK_EVERY == 0 and step < steps
                and len(self.step_times) >= BUDGET_PACE_STEPS[0])

    def plan(self, config: TrainConfig, step: int) -> tuple[int, str]:
        """(steps the run should have, a line saying why; "" when nothing changes), on this process's clock."""
        spent = self.spent()
        head = f"time budget {self.seconds:.0f}s:"
        if not self.decided:
            rate = budget_rate(self.step_times)
            fit = steps_within_budget(config, step, spent, rate)
            first = step - (len(self.step_times) - len(self.step_times) // 2) + 1
            return fit, (f"{head} median {rate:.2f} s/step over steps {first}-{step}, {spent:.0f}s spent; {fit} of "
                         f"{config.steps} steps fit" + (", the schedule now ends there" if fit < config.steps else ""))
        pace = recent_pace(self.step_times, self.step_ends)
        if not overruns_budget(config, step, spent, pace):
            return config.steps, ""
        fit = steps_within_budget(config, step, spent, pace)
        return fit, (f"{head} {pace:.2f} s/step lately, {spent:.0f}s spent; the run would overrun, so it now ends at "
                     f"step {fit} (was {config.steps})")

    def checkpoint_state(self, steps: int) -> dict[str, float]:
        """What a checkpoint keeps: the length decided, and the time spent up to it."""
        return {**({"budget_steps": steps} if self.decided else {}),
                **({"budget_spent_s": self.spent()} if self.active and self.spent_before is not None else {})}
