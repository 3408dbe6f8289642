"""The on-disk dataset format of every training stage ("star-records-1"), for ShapeWorld and for users' own data.

Data flow: generators (star.shapes.cli_data, or your own script) -> **RecordWriter** -> a dataset folder ->
**read_records** -> training stages. Spec: docs/data_format.md.

    DIR/manifest.json        {"format": "star-records-1", "shards": [...], "counts": {kind: n}, ...}  (written last)
    DIR/shard-00000.jsonl    one record (a JSON object) per line
    DIR/images/<hash>.png    image files; records name them by path relative to DIR

Record kinds (every record also may carry "meta": {...}):
    t2i      {"kind": "t2i", "image", "text"}
    edit     {"kind": "edit", "source", "target", "text", "edit_type"}
    vqa      {"kind": "vqa", "image", "question", "answer"}
    caption  {"kind": "caption", "image", "text"}
    text_qa  {"kind": "text_qa", "question", "answer"}

Writes are atomic: images and shards go to a temp name and are renamed into place, and the manifest is written only
by `close()`, so a folder with a manifest is always complete. The reader never crashes on a bad record: it skips it
(malformed JSON, unknown kind, missing field, empty text, missing or corrupt image), counts the reason in
`ReadStats`, and emits one warning with the counts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from star.io import atomic_write

FORMAT = "star-records-1"
MANIFEST = "manifest.json"
IMAGE_DIR = "images"
SHARD_PATTERN = "shard-{:05d}.jsonl"
_SHARD_RE = re.compile(r"^shard-\d{5}\.jsonl$")

KINDS: dict[str, dict[str, str]] = {
    "t2i": {"image": "image", "text": "text"},
    "edit": {"source": "image", "target": "image", "text": "text", "edit_type": "text"},
    "vqa": {"image": "image", "question": "text", "answer": "text"},
    "caption": {"image": "image", "text": "text"},
    "text_qa": {"question": "text", "answer": "text"},
}
"""Required fields per kind, each an "image" (path relative to the dataset folder) or a non-empty "text"."""
OPTIONAL_FIELDS = ("meta",)

SKIP_REASONS = ("malformed_json", "unknown_kind", "missing_field", "empty_text", "missing_file", "corrupt_image",
                "bad_meta", "missing_shard", "bad_encoding", "missing_records")


class ImageReadError(OSError, ValueError):
    """An image file exists but cannot be decoded (truncated, corrupt, not an image)."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB; errors name the file (FileNotFoundError / ImageReadError)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later inside a training step
            return image.convert("RGB")
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib/struct errors for bad files
        raise ImageReadError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def validate_record(record) -> str | None:
    """None when `record` is a well-formed record (images not checked), else the skip reason."""
    if not isinstance(record, dict):
        return "malformed_json"
    spec = KINDS.get(record.get("kind"))
    if spec is None:
        return "unknown_kind"
    for name, typ in spec.items():
        value = record.get(name)
        if value is None:
            return "missing_field"
        if not isinstance(value, str) or not value.strip():
            return "empty_text" if typ == "text" else "missing_file"
    if "meta" in record and not isinstance(record["meta"], dict):
        return "bad_meta"
    return None




# ----------------------------------------------------------------------------------------------------------------
# Writer


class RecordWriter:
    """Write a dataset folder. Use as a context manager (or call close()); the manifest appears only on success.

        with RecordWriter("data/t2i", meta={"seed": 0}) as w:
            w.add({"kind": "t2i", "image": pil_image, "text": "a photo of a red circle"})

    Image fields accept a PIL image (saved as PNG under images/, named by a hash of its pixels, so equal images are
    stored once) or a path to an existing file (kept as given; relative paths are relative to the dataset folder).
    """

    def __init__(self, root: str | os.PathLike, *, shard_size: int = 10_000, meta: dict | None = None,
                 overwrite: bool = False):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root = Path(root)
        self.shard_size = shard_size
        self.meta = dict(meta or {})
        manifest = self.root / MANIFEST
        if manifest.exists():
            if not overwrite:
                raise FileExistsError(f"{self.root} already holds a dataset ({MANIFEST}); pass overwrite=True "
                                      f"(--overwrite) to replace it")
            manifest.unlink()  # first, so a crash from here on leaves no manifest pointing at mixed shards
            shutil.rmtree(self.root / IMAGE_DIR, ignore_errors=True)
            for stale in ("codes.json", "codes.safetensors"):    # `star tokenize`'s codes of the old images
                (self.root / stale).unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / IMAGE_DIR).mkdir(exist_ok=True)
        for p in self.root.iterdir():  # shards of an earlier, incomplete or replaced write
            if _SHARD_RE.match(p.name) or (p.name.startswith(".shard-") and p.name.endswith(".tmp")):
                p.unlink()
        self.shards: list[str] = []
        self.counts: dict[str, int] = {}
        self._images: set[str] = set()
        self._file = None
        self._tmp_path: Path | None = None
        self._in_shard = 0
        self.closed = False

    def add_image(self, image: Image.Image) -> str:
        """Save a PIL image (once per distinct content) and return its path relative to the dataset folder."""
        image = image.convert("RGB") if image.mode != "RGB" else image
        digest = hashlib.sha1(f"{image.size}".encode() + image.tobytes()).hexdigest()[:20]
        rel = f"{IMAGE_DIR}/{digest}.png"
        if rel not in self._images:
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            atomic_write(self.root / rel, buf.getvalue())
            self._images.add(rel)
        return rel

    def add(self, record: dict) -> dict:
        """Validate and append one record; returns it as stored (image fields replaced by relative paths)."""
        if self.closed:
            raise ValueError("RecordWriter is closed")
        kind = record.get("kind")
        if kind not in KINDS:
            raise ValueError(f"record kind must be one of {tuple(KINDS)}, got {kind!r}")
        unknown = set(record) - set(KINDS[kind]) - {"kind", *OPTIONAL_FIELDS}
        if unknown:
            raise ValueError(f"{kind} record has unknown fields {sorted(unknown)} (put extras under 'meta')")
        stored = {"kind": kind}
        for name, typ in KINDS[kind].items():
            value = record.get(name)
            if typ == "image":
                if isinstance(value, Image.Image):
                    value = self.add_image(value)
                elif isinstance(value, (str, os.PathLike)):
                    value = os.fspath(value)
                    if not (self.root / value).is_file():
                        raise FileNotFoundError(f"{kind} record field {name!r}: image file not found: "
                                                f"{self.root / value}")
                else:
                    raise ValueError(f"{kind} record field {name!r} must be a PIL image or a path, got "
                                     f"{type(value).__name__}")
            elif not isinstance(value, str) or not value.strip():
                raise ValueError(f"{kind} record field {name!r} must be a non-empty string, got {value!r}")
            stored[name] = value
        if "meta" in record:
            if not isinstance(record["meta"], dict):
                raise ValueError(f"record 'meta' must be a dict, got {type(record['meta']).__name__}")
            stored["meta"] = record["meta"]
        line = json.dumps(stored, ensure_ascii=False)
        if self._file is None:
            name = SHARD_PATTERN.format(len(self.shards))
            self._tmp_path = self.root / f".{name}.tmp"
            self._file = open(self._tmp_path, "w", encoding="utf-8")
            self.shards.append(name)
        self._file.write(line + "\n")
        self._in_shard += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self._in_shard >= self.shard_size:
            self._finish_shard()
        return stored

    def _finish_shard(self) -> None:
        self._file.close()
        os.replace(self._tmp_path, self.root / self.shards[-1])
        self._file, self._tmp_path, self._in_shard = None, None, 0

    def close(self) -> dict:
        """Finish the last shard and write the manifest (last, atomically). Returns the manifest."""
        if self.closed:
            raise ValueError("RecordWriter is already closed")
        if self._file is not None:
            self._finish_shard()
        manifest = {
            "format": FORMAT,
            "shards": self.shards,
            "counts": dict(sorted(self.counts.items())),
            "num_records": sum(self.counts.values()),
            "num_images": len(self._images),
            "meta": self.meta,
        }
        atomic_write(self.root / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        self.closed = True
        return manifest

    def abort(self) -> None:
        """Stop without a manifest (the folder is then not a readable dataset)."""
        if self._file is not None:
            self._file.close()
            self._tmp_path.unlink(missing_ok=True)
            self._file = None
        self.closed = True

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def build_manifest(root: str | os.PathLike, meta: dict | None = None) -> dict:
    """Write a manifest for a folder of hand-made `*.jsonl` shards (users' own data); counts kinds as they stand."""
    root = Path(root)
    shards = sorted(p.name for p in root.glob("*.jsonl"))
    if not shards:
        raise FileNotFoundError(f"no *.jsonl shards in {root}")
    counts: dict[str, int] = {}
    for name in shards:
        with open(root / name, encoding="utf-8") as f:
            for line in f:
                try:
                    kind = json.loads(line).get("kind") if line.strip() else None
                except (json.JSONDecodeError, AttributeError):
                    kind = None
                if kind in KINDS:
                    counts[kind] = counts.get(kind, 0) + 1
    manifest = {"format": FORMAT, "shards": shards, "counts": counts, "num_records": sum(counts.values()),
                "meta": dict(meta or {})}
    atomic_write(root / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# Reader


@dataclass
class ReadStats:
    """What a pass over a dataset read and skipped (per reason, see SKIP_REASONS)."""

    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    """The first few skipped records as "shard:line: reason: detail"."""

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, where: str, detail: str = "", count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}" + (f": {detail}" if detail else ""))

    def summary(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        return f"read {self.read} records, skipped {self.total_skipped} ({counts}); e.g. " + "; ".join(self.examples)


class RecordReader:
    """An iterable over the good records of a dataset (folder with a manifest, or one .jsonl file).

    Yields dicts like the stored records, with image fields resolved to absolute path strings. Bad records are
    skipped and counted in `.stats` (reset at each pass); a pass that skipped anything ends with one warning.
    """

    def __init__(self, path: str | os.PathLike, kinds: str | list[str] | tuple[str, ...] | None = None, *,
                 check_images: bool = True):
        path = Path(path)
        if isinstance(kinds, str):
            kinds = (kinds,)
        for k in kinds or ():
            if k not in KINDS:
                raise ValueError(f"kinds must be among {tuple(KINDS)}, got {k!r}")
        self.kinds = None if kinds is None else set(kinds)
        self.check_images = check_images
        if path.is_file() and path.suffix == ".jsonl":
            self.root, self.manifest = path.parent, {"format": FORMAT, "shards": [path.name]}
        elif path.is_dir():
            mpath = path / MANIFEST
            if not mpath.is_file():
                raise FileNotFoundError(f"{path} has no {MANIFEST}: not a complete star-records dataset (an "
                                        f"interrupted write, or hand-made shards: see records.build_manifest)")
            try:
                self.manifest = json.loads(mpath.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{mpath} is not valid JSON: {exc}") from exc
            if self.manifest.get("format") != FORMAT or not isinstance(self.manifest.get("shards"), list):
                raise ValueError(f"{mpath} is not a {FORMAT} manifest (format={self.manifest.get('format')!r})")
            self.root = path
        else:
            raise FileNotFoundError(f"no dataset at {path} (want a folder with {MANIFEST} or a .jsonl file)")
        self.stats = ReadStats()

    @property
    def warnings(self) -> dict[str, int]:
        """Skip counts of the latest pass (the trainers' `warnings` convention)."""
        return dict(self.stats.skipped)

    def __len__(self) -> int:
        """Records the manifest announces for the selected kinds (bad records are not subtracted)."""
        counts = self.manifest.get("counts", {})
        return sum(v for k, v in counts.items() if self.kinds is None or k in self.kinds)

    def _check(self, record: dict, where: str) -> tuple[str, str] | None:
        for name, typ in KINDS[record["kind"]].items():
            if typ != "image":
                continue
            p = Path(record[name])
            p = p if p.is_absolute() else self.root / p
            if not p.is_file():
                return "missing_file", str(p)
            if self.check_images:
                try:
                    load_image(p)
                except (ImageReadError, FileNotFoundError) as exc:
                    return "corrupt_image", str(exc)
            record[name] = str(p)
        return None

    def __iter__(self) -> Iterator[dict]:
        self.stats = stats = ReadStats()
        listed = 0           # lines met that were records (counted under their own reason if skipped): vs manifest
        for shard in self.manifest["shards"]:
            spath = self.root / shard
            if not spath.is_file():
                stats.skip("missing_shard", str(spath))
                continue
            with open(spath, "rb") as f:
                for n, raw in enumerate(f, 1):
                    if not raw.strip():
                        continue
                    where = f"{shard}:{n}"
                    try:
                        record = json.loads(raw.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                        stats.skip("bad_encoding" if isinstance(exc, UnicodeDecodeError) else "malformed_json", where,
                                   str(exc))
                        listed += 1
                        continue
                    listed += isinstance(record, dict) and record.get("kind") in KINDS
                    reason = validate_record(record)
                    if reason is not None:
                        stats.skip(reason, where)
                        continue
                    if self.kinds is not None and record["kind"] not in self.kinds:
                        continue
                    bad = self._check(record, where)
                    if bad is not None:
                        stats.skip(bad[0], where, bad[1])
                        continue
                    stats.read += 1
                    yield record
        expected = self.manifest.get("num_records")
        if isinstance(expected, int) and listed < expected:     # shards cut short since the manifest was written
            stats.skip("missing_records", str(self.root), f"the manifest lists {expected}, the shards hold {listed}",
                       count=expected - listed)
        if stats.total_skipped:
            warnings.warn(f"{self.root}: {stats.summary()}", RuntimeWarning, stacklevel=2)


def read_records(path: str | os.PathLike, kinds: str | list[str] | tuple[str, ...] | None = None, *,
                 check_images: bool = True) -> RecordReader:
    """Iterate the good records of a dataset, optionally only some kinds; `.stats` holds read/skip counts.

    check_images=True fully decodes every image once while reading (catches truncated files); False only checks
    that the files exist (then load_image may still raise, naming the file).
    """
    return RecordReader(path, kinds, check_images=check_images)


__all__ = [
    "FORMAT", "MANIFEST", "IMAGE_DIR", "KINDS", "SKIP_REASONS", "ImageReadError", "load_image", "validate_record",
    "RecordWriter", "build_manifest", "ReadStats", "RecordReader", "read_records",
]
