"""Data plumbing shared by the training stages: record sources, an exactly resumable mixture, image preprocessing.

Where it sits: star-records datasets on disk (star.data.records, docs/data_format.md) ─▶ `RecordIndex` (the good
records of one dataset in memory, bad ones skipped and counted) ─▶ `Mixture` (global sample index i ─▶ which source,
which record) ─▶ a stage's stream builds micro-batches from those records.

Resumability is the design constraint (star/training/stages.py): a stream restarted at global sample `position`
must produce exactly the batches an uninterrupted run would. So every choice here is a pure function of
(seed, sample index): the mixture interleaves sources by a fixed weighted round robin, each source is read in
epochs, and epoch e of source k is the permutation `default_rng([seed, k, e])`. Per-sample randomness (CFG dropout,
turn order) uses `sample_rng(seed, i, salt)`.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from star.data.records import KINDS, ReadStats, read_records

# -----------------------------------------------------------------------------
# Sources: which datasets (and which record kinds) a stage reads


@dataclass(kw_only=True)
class Source:
    """One dataset a stage reads: a star-records folder (or a .jsonl shard), some of its kinds, a mixture weight."""

    path: str
    """Dataset folder with manifest.json (or a single .jsonl shard)."""
    kinds: list[str] | None = None
    """Record kinds to read (None = whatever the stage uses)."""
    weight: float = 1.0
    """Relative share of this source in the stage's sample stream."""

    def __post_init__(self):
        if not self.path:
            raise ValueError("a data source needs a path")
        if not 0 < self.weight < math.inf:                  # nan and inf too: they would hang the mixture
            raise ValueError(f"data source {self.path}: weight must be > 0 and finite, got {self.weight}")
        for k in self.kinds or ():
            if k not in KINDS:
                raise ValueError(f"data source {self.path}: unknown kind {k!r}; kinds are {tuple(KINDS)}")


def parse_sources(value: Any, where: str = "stage_options.data") -> list[Source]:
    """`"DIR"`, `["DIR", ...]` or `[{"path": DIR, "kinds": [...], "weight": w}, ...]` -> sources."""
    if value is None or value == "" or value == []:
        raise ValueError(f"{where} is empty: pass --data DIR (a star-records dataset, e.g. from `star shapes dataset`)")
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            out.append(Source(path=os.fspath(item)))
        elif isinstance(item, dict):
            unknown = set(item) - {"path", "kinds", "weight"}
            if unknown:
                raise KeyError(f"{where}: unknown source keys {sorted(unknown)}; known: path, kinds, weight")
            out.append(Source(**item))
        else:
            raise ValueError(f"{where}: a source is a path or an object {{path, kinds, weight}}, got {item!r}")
    return out


class RecordIndex:
    """The good records of one dataset, in file order, held in memory (small dicts; images stay on disk).

    Bad records are skipped by the reader (star.data.records: malformed JSON, empty text, missing or corrupt image,
    ...) and counted in `stats`; the stage adds them to its `warnings`. Image fields become absolute paths; `rel`
    gives the path relative to the dataset folder (the key of pre-tokenised codes).
    """

    def __init__(self, path: str | os.PathLike, kinds: list[str] | tuple[str, ...], *, check_images: bool = True):
        self.root = Path(path)
        reader = read_records(path, kinds=list(kinds), check_images=check_images)
        import warnings

        with warnings.catch_warnings():   # the counts are reported through the trainer's log, once per run
            warnings.simplefilter("ignore", RuntimeWarning)
            self.records = list(reader)
        self.stats: ReadStats = reader.stats
        self.folder = reader.root

    def __len__(self) -> int:
        return len(self.records)

    def rel(self, absolute: str) -> str:
        return os.path.relpath(absolute, self.folder).replace(os.sep, "/")


def merge_counts(*dicts: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + int(v)
    return out


# -----------------------------------------------------------------------------
# The mixture: global sample index -> (source, record), a pure function


def sample_rng(seed: int, index: int, salt: int = 0) -> np.random.Generator:
    """The generator of sample `index` (independent of the process, the rank and the resume point)."""
    return np.random.default_rng([seed, index, salt])


class Mixture:
    """Deterministic weighted interleave of several sources, each read in shuffled epochs without replacement.

    Weights become integer counts per cycle of `cycle` samples (largest remainder, every source at least 1); within
    a cycle the sources are spread evenly (smooth weighted round robin). Sample i of the stream is the c-th sample of
    its source k, where c is counted in O(1) from the cycle pattern, and that is record perm_{k, c // N_k}[c % N_k].
    """

    def __init__(self, sizes: list[int], weights: list[float], seed: int, cycle: int = 100):
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("Mixture needs one weight per source and at least one source")
        if any(n <= 0 for n in sizes):
            raise ValueError(f"every mixture source needs records, got sizes {sizes}")
        if not all(0 < w < math.inf for w in weights):
            raise ValueError(f"mixture weights must be > 0 and finite, got {weights}")
        self.sizes, self.seed = list(sizes), seed
        w = np.asarray(weights, dtype=np.float64)
        share = w / w.sum() * cycle
        counts = np.maximum(1, np.floor(share)).astype(int)
        while counts.sum() < cycle:                         # largest remainder
            counts[int(np.argmax(share - counts))] += 1
        self.counts = counts.tolist()
        slots = sorted(((n + 0.5) / c, k) for k, c in enumerate(self.counts) for n in range(c))
        self.pattern = [k for _, k in slots]                # (cycle',) source of each position in a cycle
        self.before = np.zeros((len(self.pattern), len(sizes)), dtype=np.int64)  # counts before each position
        running = np.zeros(len(sizes), dtype=np.int64)
        for p, k in enumerate(self.pattern):
            self.before[p] = running
            running[k] += 1
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    @property
    def shares(self) -> list[float]:
        return [c / len(self.pattern) for c in self.counts]

    def _perm(self, k: int, epoch: int) -> np.ndarray:
        key = (k, epoch)
        if key not in self._perms:
            self._perms[key] = np.random.default_rng([self.seed, k, epoch]).permutation(self.sizes[k])
            if len(self._perms) > 2 * len(self.sizes) + 2:
                self._perms.popitem(last=False)
        self._perms.move_to_end(key)
        return self._perms[key]

    def locate(self, index: int) -> tuple[int, int]:
        """(source k, record j) of global sample `index`."""
        cycle, p = divmod(index, len(self.pattern))
        k = self.pattern[p]
        c = cycle * self.counts[k] + int(self.before[p, k])
        epoch, r = divmod(c, self.sizes[k])
        return k, int(self._perm(k, epoch)[r])


# -----------------------------------------------------------------------------
# Images


def load_rgb(path: str) -> Image.Image:
    """Decode an image file fully as RGB (star.data.records.load_image: errors name the file)."""
    from star.data.records import load_image

    return load_image(path)




@dataclass
class Warnings:
    """Cumulative data-problem counts of a stream (the trainer logs them as `data_warnings`)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n

    def update(self, d: dict[str, int]) -> None:
        for k, v in d.items():
            self.add(k, v)
