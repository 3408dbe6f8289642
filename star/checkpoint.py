"""STAR model folders, and the one converter from the upstream release.

A STAR model folder:

    config.json          STARConfig: sizes of the trained parts + `base` and `vq` (paths of the frozen parts;
                         relative paths resolve against the folder). The 3B/7B base is referenced, never copied.
    model.safetensors    the trained parts only: `stacks.{s}.decoder.…`, `adapter.layers.…`, `head.proj.…`

Loading is strict: every expected tensor present with its shape, nothing unexpected, all finite.

`convert_upstream` is the single place that knows upstream key names (MM-MVR/STAR `STAR-{3B,7B}.pt`, a
`{"state_dict": …}` of the whole training model):

    stacked_ar.model.layers.{i}.…   (transformers 4.51, the upstream pin)    ─▶ stacks.0.decoder.layers.{i}.…
    stacked_ar.model.language_model.layers.{i}.… (transformers >= 4.52)      ─▶ stacks.0.decoder.layers.{i}.…
    stacked_ar.model[.language_model].norm.weight                            ─▶ stacks.0.decoder.norm.weight
    pixel_adapter.layers.{j}.{weight,bias}                                   ─▶ adapter.layers.{j}.…
    pixel_output_head.{weight,bias}                                          ─▶ head.proj.…

Every other key must belong to a known skipped group (frozen base `llm.*`, the VQ `pixel_encoder.*` which comes from
`VQ-Model.pt`, the Lumina `diffusion_decoder.*`, and the stack's deleted embed/vision/LM-head/rotary parts); anything
else, and any missing tensor, stops the conversion with a report. `VQ-Model.pt` goes through star.vq.load_upstream_vq.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from star.config import STARConfig
from star.io import atomic_save, atomic_write
from star.vq import LoadReport, load_upstream_pt

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _save_weights(state: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "star": "model"}))


def save_folder(config: STARConfig, state: dict[str, Tensor], directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
    _save_weights(state, directory / WEIGHTS_NAME)
    return directory


def save_star(model, directory: str | Path) -> Path:
    """Write config.json (with the base/vq references of model.config) and the trained parts."""
    if not model.config.base or not model.config.vq:
        raise ValueError("model.config.base and model.config.vq must name the base and VQ folders before saving, "
                         "so the saved folder can find its frozen parts")
    return save_folder(model.config, model.trainable_state_dict(), directory)


def resolve_reference(directory: Path, reference: str, what: str) -> Path:
    if not reference:
        raise ValueError(f"{directory / CONFIG_NAME} names no {what} folder (field `{what}`)")
    path = Path(reference).expanduser()
    return path if path.is_absolute() else directory / path


def check_state(expected: dict[str, Tensor], state: dict[str, Tensor], source: str,
                report: LoadReport | None = None) -> LoadReport:
    """Account for every key: missing, unexpected, wrong shape, non-finite. Nothing is loaded here."""
    report = report or LoadReport(source=source)
    report.missing += sorted(set(expected) - set(state))
    report.unexpected += sorted(set(state) - set(expected))
    for k in sorted(set(expected) & set(state)):
        if tuple(state[k].shape) != tuple(expected[k].shape):
            report.mismatched.append(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}")
        elif state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all()):
            report.non_finite.append(k)
        else:
            report.loaded += 1
    return report


def load_trainable(model, state: dict[str, Tensor], source: str) -> LoadReport:
    """Strictly load stacks/adapter/head tensors into `model` (cast to each parameter's dtype and device)."""
    expected = model.trainable_state_dict()
    report = check_state(expected, state, source)
    report.raise_if_bad()
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
    return report


def load_star(directory: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a STAR folder: the base (device, dtype), the VQ (device, always fp32: it is small, and its codes must be
    the ones it gave in training), then the trained parts."""
    from safetensors.torch import load_file

    from star.base import FrozenBase
    from star.model import STAR
    from star.vq import VQModel

    directory = Path(directory)
    config = STARConfig.from_json(directory / CONFIG_NAME)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: a STAR model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    base = FrozenBase.from_pretrained(resolve_reference(directory, config.base, "base"), device=device, dtype=dtype)
    vq = VQModel.from_pretrained(resolve_reference(directory, config.vq, "vq"), device=device, dtype=torch.float32)
    model = STAR(config, base, vq)
    load_trainable(model, load_file(str(weights)), str(weights))
    return model.eval()


# -----------------------------------------------------------------------------
# Upstream release -> this layout

# (upstream key regex, replacement). Order matters only for readability; the patterns do not overlap.
UPSTREAM_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^stacked_ar\.model\.(?:language_model\.)?layers\.", "stacks.0.decoder.layers."),
    (r"^stacked_ar\.model\.(?:language_model\.)?norm\.", "stacks.0.decoder.norm."),
    (r"^pixel_adapter\.layers\.", "adapter.layers."),
    (r"^pixel_output_head\.", "head.proj."),
)
# Upstream key groups that are not part of this folder, with the reason (reported, never silently dropped).
UPSTREAM_SKIPPED: tuple[tuple[str, str], ...] = (
    (r"^llm\.", "frozen base: loaded from the base folder (copies compared with it)"),
    (r"^pixel_encoder\.", "VQ tokenizer: converted from VQ-Model.pt (copies compared with it)"),
    (r"^diffusion_decoder\.", "Lumina diffusion decoder: not part of this model"),
    (r"^stacked_ar\.(?:visual|lm_head)\.", "stack's vision tower / LM head: deleted upstream, unused"),
    (r"^stacked_ar\.model\.(?:language_model\.)?(?:embed_tokens|rotary_emb)\.", "stack's token embeddings / "
                                                                                  "rope buffers: unused"),
    (r"^stacked_ar\.model\.visual\.", "stack's vision tower: deleted upstream, unused"),
)


def unwrap_upstream(state: dict, report: LoadReport | None = None) -> dict:
    """The state dict inside an upstream checkpoint (`checkpoint['state_dict']` in the release)."""
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state.get(wrapper), dict):
            if report is not None:
                report.notes.append(f"unwrapped checkpoint[{wrapper!r}] (other entries: "
                                    f"{sorted(k for k in state if k != wrapper)})")
            return state[wrapper]
    return state


def convert_upstream_state_dict(state: dict, report: LoadReport) -> dict[str, Tensor]:
    """Upstream STAR state dict -> this layout's keys. Skipped groups and unknown keys go into `report`."""
    state = unwrap_upstream(state, report)
    out: dict[str, Tensor] = {}
    skipped: dict[str, int] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for pattern, replacement in UPSTREAM_RENAMES:
            if re.match(pattern, key):
                if not torch.is_tensor(value):
                    report.unexpected.append(f"{key} (not a tensor: {type(value).__name__})")
                else:
                    out[re.sub(pattern, replacement, key)] = value
                break
        else:
            reason = next((why for pattern, why in UPSTREAM_SKIPPED if re.match(pattern, key)), None)
            if reason is None:
                report.unexpected.append(key)
            else:
                skipped[reason] = skipped.get(reason, 0) + 1
    report.ignored += [f"{n} tensors: {why}" for why, n in skipped.items()]
    return out


def _canonical_base_key(key: str) -> str:
    """A Qwen2.5-VL weight name in one layout whatever transformers version wrote it (or upstream's `llm.` copy)."""
    key = key.removeprefix("module.").removeprefix("llm.")
    return re.sub(r"^model\.visual\.", "visual.", re.sub(r"^model\.language_model\.", "model.", key))


def _differing(copies: dict[str, Tensor], ours: dict[str, Tensor], limit: int = 5) -> list[str]:
    """Keys whose copy is absent from `ours` or differs from it once both are cast to bf16 (upstream runs bf16)."""
    bad = []
    for key, value in copies.items():
        if key not in ours:
            bad.append(f"{key} (not in ours)")
        elif value.shape != ours[key].shape or not torch.equal(value.to(torch.bfloat16), ours[key].to(torch.bfloat16)):
            bad.append(f"{key}")
        if len(bad) == limit:
            break
    return bad


def check_upstream_copies(state: dict, base: Path, vq_model, report: LoadReport) -> None:
    """Upstream loads STAR-*.pt over its base and VQ with strict=False, so copies of base (`llm.*`) or VQ
    (`pixel_encoder.*`) tensors in the checkpoint are what upstream runs. Ours come from the base folder and
    VQ-Model.pt: compare the copies with them and refuse a conversion that would compute something else."""
    from safetensors import safe_open

    from star.vq import convert_upstream_state_dict as convert_vq_keys

    state = unwrap_upstream(state)
    llm = {_canonical_base_key(k): v for k, v in state.items() if k.startswith("llm.") and torch.is_tensor(v)}
    vq = {k: v for k, v in state.items() if k.startswith("pixel_encoder.") and torch.is_tensor(v)}
    problems = []
    if llm:
        ours: dict[str, Tensor] = {}
        wanted = set(llm) | {"model.embed_tokens.weight"}
        for file in sorted(base.glob("*.safetensors")):                    # one file, or the shards
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    if (canonical := _canonical_base_key(key)) in wanted:
                        ours[canonical] = f.get_tensor(key)
        if "lm_head.weight" not in ours and "model.embed_tokens.weight" in ours:   # tied: no lm_head saved
            ours["lm_head.weight"] = ours["model.embed_tokens.weight"]
        if bad := _differing(llm, ours):
            problems.append(f"base copies (llm.*) that differ from {base}: {bad}")
    if vq:
        copies = convert_vq_keys(vq, LoadReport(source="pixel_encoder.*"))
        if bad := _differing(copies, vq_model.state_dict()):
            problems.append(f"VQ copies (pixel_encoder.*) that differ from the VQ tokenizer: {bad}")
    if problems:
        raise ValueError("the checkpoint carries its own copies of frozen weights, which upstream's strict=False load "
                         "would run instead of the base folder's / VQ-Model.pt's; converting would compute something "
                         "else: " + "; ".join(problems))
    if llm or vq:
        report.notes.append(f"{len(llm)} llm.* and {len(vq)} pixel_encoder.* copies in the checkpoint equal the base "
                            f"folder's and the VQ's weights (compared in bf16, as upstream runs them)")


def infer_config(state: dict[str, Tensor], **fields) -> STARConfig:
    """Sizes of the trained parts read off a converted state dict (layers, adapter depth, codebook, widths)."""
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"stacks\.0\.decoder\.layers\.(\d+)\.", k))}
    linear_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"adapter\.layers\.(\d+)\.weight", k))})
    if not layer_ids or not linear_ids or "head.proj.weight" not in state:
        raise KeyError("the checkpoint has no stacked_ar layers, pixel_adapter or pixel_output_head tensors; is it "
                       "an upstream STAR-*.pt file?")
    codebook_size, hidden = state["head.proj.weight"].shape
    code_dim = state[f"adapter.layers.{linear_ids[0]}.weight"].shape[1]
    return STARConfig(hidden_size=hidden, stacks=[dict(num_layers=max(layer_ids) + 1)],
                      adapter=dict(code_dim=code_dim, hidden_size=hidden, depth=len(linear_ids)),
                      head=dict(hidden_size=hidden, codebook_size=codebook_size), **fields)


def convert_upstream(checkpoint: str | Path, base: str | Path, out_dir: str | Path, *, vq: str | Path,
                     vq_config=None, preset: str | None = None) -> tuple[Path, LoadReport]:
    """Convert upstream `STAR-*.pt` (+ `VQ-Model.pt`) into a STAR folder at `out_dir` that references `base`.

    vq: upstream `VQ-Model.pt` (converted into `out_dir/vq`, `vq_config` defaults to the star-vq preset) or an
    existing VQ folder (referenced). preset: `star-3b` / `star-7b` to check the sizes against; None infers them.
    Returns the folder and the key report; raises on any missing, unexpected, mis-shaped or non-finite tensor.
    """
    from transformers import AutoConfig

    from star import config as config_module
    from star.base import FrozenBase
    from star.model import STAR
    from star.vq import VQModel, load_upstream_vq

    checkpoint, base, out_dir, vq = Path(checkpoint), Path(base).resolve(), Path(out_dir), Path(vq)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"upstream checkpoint {checkpoint} not found (expected STAR-3B.pt or STAR-7B.pt)")
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"base {base} is not a model folder (no config.json); pass the local "
                                f"Qwen2.5-VL-{{3B,7B}}-Instruct folder")
    state = load_upstream_pt(checkpoint, "STAR-3B.pt or STAR-7B.pt")
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint} holds a {type(state).__name__}, not a state dict")
    report = LoadReport(source=str(checkpoint))
    mapped = convert_upstream_state_dict(state, report)
    inferred = infer_config(mapped, base=str(base), **config_module.UPSTREAM_VIT)
    if preset is not None:
        config = config_module.preset(preset, base=str(base))
        for name in ("hidden_size", "stacks", "adapter", "head"):
            if getattr(config, name) != getattr(inferred, name):
                raise ValueError(f"{checkpoint} does not have the {preset} sizes: {name} is "
                                 f"{getattr(inferred, name)} in the checkpoint, {getattr(config, name)} in the preset")
    else:
        config = inferred

    if vq.is_dir():
        vq_model, vq_reference = VQModel.from_pretrained(vq), str(vq.resolve())
    else:
        vq_model, vq_report = load_upstream_vq(vq, config=vq_config)
        report.notes.append(str(vq_report).replace("\n", "\n    "))
        vq_reference = "vq"

    # Expected keys and shapes: the same STAR built on the meta device around the base's real config.
    with torch.device("meta"):
        frozen = FrozenBase.from_config(AutoConfig.from_pretrained(base))
        expected = STAR(config, frozen, VQModel(vq_model.config)).trainable_state_dict()
    check_state(expected, mapped, str(checkpoint), report)
    report.raise_if_bad()
    check_upstream_copies(state, base, vq_model, report)

    out_dir.mkdir(parents=True, exist_ok=True)
    if vq_reference == "vq":
        vq_model.save_pretrained(out_dir / "vq")
    config.vq = vq_reference
    save_folder(config, mapped, out_dir)       # tensors keep the checkpoint's dtype; loading casts to the model's
    return out_dir, report
