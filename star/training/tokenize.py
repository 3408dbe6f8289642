"""`star tokenize --data DIR --vq PATH_OR_NONE`: pre-tokenise every image of a records dataset into VQ codes, once.

Training then reads codes instead of decoding and encoding pixels at every step (research/performance.md §5). The
codes live next to the dataset:

    DIR/codes.safetensors   {"codes": int32 (N, h, w)}, metadata {"star": "codes", "id": <random id>}
    DIR/codes.json          {"format": "star-codes-1", "id",
                             "vq": {source, config, config_sha256, weights_sha256, codes_sha256},
                             "resolution", "grid": [h, w], "images": {relative image path: row}, "skipped": {...}}

Both files are written to temp names and renamed into place, codes.json last; the shared random `id` ties the pair
together, so a half-replaced pair is detected and refused. The VQ is fingerprinted by the SHA-256 of its config and of
its weights file, and (`codes_sha256`) of the weights that decide a code: encoder, quant_conv and codebook. Stages
refuse codes made by another tokenizer (`load_codes`), and `star tokenize` refuses to overwrite them without
--overwrite; a tokenizer whose decoder alone was retrained (`star train vq --freeze encoder,quant_conv,quantize`)
gives the same codes and is accepted. Images are preprocessed exactly as star.pipeline encodes an edit source
(bilinear resize to the VQ resolution, [-1, 1]), so codes equal `VQModel.encode` of the pipeline's input.
Corrupt or missing images are skipped and counted (never a crash, never silent); stages then skip their records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from star.data.records import KINDS, ImageReadError, read_records
from star.io import atomic_save, atomic_write

CODES_FILE = "codes.safetensors"
INDEX_FILE = "codes.json"
FORMAT = "star-codes-1"
DEFAULT_KINDS = ("t2i", "edit")   # the kinds whose images generation and editing train on


# -----------------------------------------------------------------------------
# VQ fingerprints


def _file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_vq_path(spec: str | os.PathLike | None) -> Path:
    """The folder (or upstream .pt) a VQ spec names: None/'none' = the shipped ShapeWorld tokenizer."""
    from star.vq import PRESETS, SHIPPED_SHAPES_DIR

    if spec is None or str(spec).lower() in ("none", "shipped", ""):
        return SHIPPED_SHAPES_DIR
    if str(spec) in PRESETS:
        raise ValueError(f"--vq {spec} names a preset (random weights); codes are only meaningful for a trained "
                         f"tokenizer: pass its folder (VQModel.save_pretrained) or an upstream VQ-Model.pt")
    return Path(spec)


CODE_WEIGHTS = ("encoder.", "quant_conv.", "quantize.")
"""Parameter prefixes that decide an image's codes (and the code vectors the adapter reads); the rest is decoder."""
DECODER_FIELDS = ("local_decoder", "decoder_res_blocks", "out_channels")
"""VQConfig fields that only shape the decoder."""


def _codes_sha256(weights: Path) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the tensors under CODE_WEIGHTS (sorted by name)."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(weights), framework="pt") as f:
        for name in sorted(k for k in f.keys() if k.startswith(CODE_WEIGHTS)):
            t = f.get_tensor(name)
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def vq_fingerprint(spec: str | os.PathLike | None) -> dict:
    """{source, config, config_sha256, weights_sha256[, codes_sha256]} of a trained tokenizer (a folder, which gets
    codes_sha256, or an upstream .pt)."""
    from star.vq import VQConfig, preset

    path = resolve_vq_path(spec)
    if path.is_dir():
        cfg_path, weights = path / "config.json", path / "model.safetensors"
        if not (cfg_path.is_file() and weights.is_file()):
            raise FileNotFoundError(f"VQ folder {path} lacks config.json / model.safetensors")
        config = VQConfig.from_dict(json.loads(cfg_path.read_text())).to_dict()
    elif path.is_file():
        weights, config = path, preset("star-vq").to_dict()
    else:
        raise FileNotFoundError(f"VQ {path} not found (a VQ folder, an upstream VQ-Model.pt, or none = shipped)")
    canonical = json.dumps(config, sort_keys=True).encode()
    fingerprint = {"source": str(path), "config": config, "config_sha256": hashlib.sha256(canonical).hexdigest(),
                   "weights_sha256": _file_sha256(weights)}
    if path.is_dir():
        fingerprint["codes_sha256"] = _codes_sha256(weights)
    return fingerprint


def same_vq(a: dict, b: dict) -> bool:
    """Do two tokenizers give the same codes? Same code-deciding weights (`codes_sha256`, when both fingerprints have
    it; else the whole weights file) and the same config apart from the decoder's fields, read with today's defaults
    (a field added to VQConfig since the codes were written, at its default value, does not make them stale)."""
    from star.vq import VQConfig

    by_codes = bool(a.get("codes_sha256")) and bool(b.get("codes_sha256"))
    if (a["codes_sha256"] != b["codes_sha256"]) if by_codes else (a["weights_sha256"] != b["weights_sha256"]):
        return False

    def encoder_side(config: dict) -> dict:
        d = VQConfig.from_dict(config).to_dict()
        return {k: v for k, v in d.items() if not (by_codes and k in DECODER_FIELDS)}

    try:
        return encoder_side(a["config"]) == encoder_side(b["config"])
    except (KeyError, TypeError, ValueError):
        return a["config_sha256"] == b["config_sha256"]


# -----------------------------------------------------------------------------
# Reading codes (stages)


@dataclass
class CodeTable:
    """Pre-tokenised codes of a dataset: `get(relative image path)` -> (h, w) int64 codes, or None."""

    codes: Tensor            # (N, h, w) int32
    rows: dict[str, int]     # relative image path -> row
    grid: tuple[int, int]
    skipped: dict[str, int]  # what tokenize could not encode (by reason)

    def get(self, rel: str) -> Tensor | None:
        row = self.rows.get(rel)
        return None if row is None else self.codes[row].long()


def load_codes(data_dir: str | os.PathLike, fingerprint: dict | None) -> CodeTable | None:
    """The dataset's codes, or None when it was never tokenised. Raises when they come from another VQ (when
    `fingerprint` is given) or when the pair of files does not belong together."""
    from safetensors import safe_open

    root = Path(data_dir)
    if root.is_file():
        root = root.parent
    index_path, codes_path = root / INDEX_FILE, root / CODES_FILE
    if not index_path.is_file():
        return None
    index = json.loads(index_path.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_path} is not a {FORMAT} index (format={index.get('format')!r})")
    if fingerprint is not None and not same_vq(index["vq"], fingerprint):
        raise ValueError(
            f"{root} holds codes from another tokenizer ({index['vq']['source']}, weights sha256 "
            f"{index['vq']['weights_sha256'][:12]}…) than this stage's VQ ({fingerprint['source']}, "
            f"{fingerprint['weights_sha256'][:12]}…); training on them would be wrong. Re-run `star tokenize --data "
            f"{root} --vq {fingerprint['source']} --overwrite`, or delete {INDEX_FILE} and {CODES_FILE} to encode "
            f"on the fly")
    if not codes_path.is_file():
        raise FileNotFoundError(f"{index_path} exists but {codes_path} is missing; re-run `star tokenize --overwrite`")
    with safe_open(str(codes_path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("id") != index.get("id"):
            raise ValueError(f"{codes_path} and {index_path} come from different tokenize runs (interrupted "
                             f"write?); re-run `star tokenize --data {root} --overwrite`")
        codes = f.get_tensor("codes")
    return CodeTable(codes, {k: int(v) for k, v in index["images"].items()}, tuple(index["grid"]),
                     dict(index.get("skipped", {})))


# -----------------------------------------------------------------------------
# Writing codes


def dataset_images(data_dir: str | os.PathLike, kinds: tuple[str, ...]) -> tuple[Path, list[str], dict[str, int]]:
    """(dataset folder, distinct image paths relative to it in first-seen order, reader skip counts)."""
    reader = read_records(data_dir, kinds=list(kinds), check_images=False)
    seen: dict[str, None] = {}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for record in reader:
            for name, typ in KINDS[record["kind"]].items():
                if typ == "image":
                    seen.setdefault(os.path.relpath(record[name], reader.root).replace(os.sep, "/"))
    return Path(reader.root), list(seen), dict(reader.stats.skipped)


def tokenize_dataset(data_dir: str | os.PathLike, vq_spec: str | os.PathLike | None = None, *,
                     kinds: tuple[str, ...] = DEFAULT_KINDS, batch_size: int | None = None, device: str | None = None,
                     overwrite: bool = False, progress: bool = True) -> dict:
    """Encode every distinct image of the dataset's `kinds` with the VQ; write codes.safetensors + codes.json.

    Returns a summary. Up-to-date codes (same VQ, every image present) are left alone. Codes of another VQ are
    refused unless `overwrite`.
    """
    from safetensors.torch import save_file

    from star.training.data import load_rgb
    from star.views import vq_pixels
    from star.vq import load_vq

    fingerprint = vq_fingerprint(vq_spec)
    root, images, reader_skipped = dataset_images(data_dir, kinds)
    existing = root / INDEX_FILE
    if existing.is_file():
        index = json.loads(existing.read_text())
        if not same_vq(index.get("vq", {"config_sha256": None, "weights_sha256": None}), fingerprint):
            if not overwrite:
                raise ValueError(f"{root} already holds codes from another tokenizer ({index['vq']['source']}); pass "
                                 f"--overwrite to replace them with codes of {fingerprint['source']}")
        elif set(images) <= set(index["images"]) | set(index.get("unreadable", [])) and not overwrite:
            return {"data": str(root), "status": "up to date", "images": len(index["images"]),
                    "skipped": index.get("skipped", {}), "reader_skipped": reader_skipped}

    from star.training.parallel import parse_device

    device = parse_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if batch_size is None:   # shipped tokenizer, 2 Zen 3 cores: 14.8 ms/image one at a time, 8.4 at 16, same codes
        batch_size = 64 if device.type == "cuda" else 16
    vq = load_vq(str(fingerprint["source"]), device=device).eval()
    side = vq.config.resolution
    rows: dict[str, int] = {}
    chunks: list[Tensor] = []
    skipped: dict[str, int] = {}
    unreadable: list[str] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), desc=f"tokenize {root.name}", dynamic_ncols=True)
    start = time.perf_counter()
    for b0 in range(0, len(images), batch_size):
        names, pixels = [], []
        for rel in images[b0:b0 + batch_size]:
            try:
                pixels.append(vq_pixels(load_rgb(str(root / rel)), side))
                names.append(rel)
            except FileNotFoundError:
                skipped["missing_file"] = skipped.get("missing_file", 0) + 1
                unreadable.append(rel)
            except ImageReadError:
                skipped["corrupt_image"] = skipped.get("corrupt_image", 0) + 1
                unreadable.append(rel)
        if names:
            with torch.inference_mode():
                codes = vq.encode(torch.stack(pixels).to(device)).to("cpu", torch.int32)   # (b, h, w)
            for rel in names:
                rows[rel] = len(rows)
            chunks.append(codes)
        if bar is not None:
            bar.update(len(images[b0:b0 + batch_size]))
    if bar is not None:
        bar.close()
    h = w = side // vq.config.downsample
    all_codes = torch.cat(chunks) if chunks else torch.zeros((0, h, w), dtype=torch.int32)
    run_id = secrets.token_hex(8)
    atomic_save(root / CODES_FILE, lambda tmp: save_file({"codes": all_codes.contiguous()}, tmp,
                                                         metadata={"star": "codes", "id": run_id}))
    index = {"format": FORMAT, "id": run_id, "vq": fingerprint, "resolution": side, "grid": [h, w],
             "kinds": list(kinds), "images": rows, "unreadable": unreadable, "skipped": skipped,
             "reader_skipped": reader_skipped, "seconds": round(time.perf_counter() - start, 1)}
    atomic_write(root / INDEX_FILE, json.dumps(index, indent=1) + "\n")      # last: it names the codes file
    return {"data": str(root), "status": "written", "images": len(rows), "skipped": skipped,
            "reader_skipped": reader_skipped, "seconds": index["seconds"]}


# -----------------------------------------------------------------------------
# CLI


def skip_note(summary: dict) -> str:
    """"; skipped ..." for images the tokenizer could not read and records the reader skipped, or ""."""
    parts = []
    for key, what in (("skipped", "images"), ("reader_skipped", "records")):
        counts = summary.get(key) or {}
        if counts:
            parts.append(f"skipped {sum(counts.values())} {what} ({', '.join(f'{k}={v}' for k, v in counts.items())})")
    return "".join(f"; {p}" for p in parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="star-records dataset folder (e.g. from `star shapes dataset`)")
    parser.add_argument("--vq", default=None, help="VQ folder or upstream VQ-Model.pt; omit (or 'none') for the "
                                                   "shipped ShapeWorld tokenizer")
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                        help=f"record kinds whose images to encode (default {','.join(DEFAULT_KINDS)})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per encode call (default: 64 on a GPU, 16 on the CPU)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace codes made by another tokenizer")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds:
        raise ValueError(f"--kinds names no record kind; pass some of {tuple(KINDS)}, e.g. t2i,edit")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"--kinds: unknown kinds {unknown}; kinds are {tuple(KINDS)}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    summary = tokenize_dataset(args.data, args.vq, kinds=kinds, batch_size=args.batch_size, device=args.device,
                               overwrite=args.overwrite, progress=not args.no_progress)
    print(f"{summary['data']}: {summary['status']}, {summary['images']} images{skip_note(summary)}")
    return 0
