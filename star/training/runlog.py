"""What a run leaves behind besides checkpoints: the JSONL log and the loss-curve PNG (rank 0 only).

`log.jsonl` holds one JSON object per logged step:
    step, loss, lr, grad_norm, skipped_step, skipped, tokens_per_s, samples_per_s, time_s, <stage metrics>,
    data_warnings
Non-finite numbers are written as null (strict JSON). On resume, records after the checkpoint's step (written by the
interrupted run) are dropped, so the log always describes the run that the checkpoints continue.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def read_log(path: Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL log (a torn last line from a killed process is ignored)."""
    if not path.is_file():
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


class RunLog:
    """Append-only JSONL log; `keep_until` = the resumed step (records after it are dropped), or None for a new run."""

    def __init__(self, path: Path, enabled: bool, keep_until: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_log(path) if r.get("step", 0) <= keep_until] if keep_until is not None else []
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, path)
        self._file = open(path, "a")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._file.write(json.dumps(_clean(record)) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()


def plot_loss_curve(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss (and learning rate) against step, written atomically. Uses matplotlib's Agg canvas directly, so the
    global backend is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records if r.get("loss") is not None]
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, losses, color="tab:blue", linewidth=1.2, label="loss")
    skipped = [r["step"] for r in records if r.get("skipped_step")]
    for s in skipped:
        ax.axvline(s, color="tab:red", alpha=0.3, linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        ax.set_yscale("log")
    lr_steps = [r["step"] for r in records if r.get("lr") is not None]
    if lr_steps:
        ax2 = ax.twinx()
        ax2.plot(lr_steps, [r["lr"] for r in records if r.get("lr") is not None], color="tab:orange", alpha=0.6)
        ax2.set_ylabel("lr", color="tab:orange")
    ax.set_title(title + (f"  ({len(skipped)} non-finite steps skipped)" if skipped else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
