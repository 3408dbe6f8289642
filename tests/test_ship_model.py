"""scripts/ship_model.py --continued: packaging a stage run continued from the shipped folder (tiny fake folders)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ship_model.py"
SAMPLING = {"guidance_scale": 1.5, "top_k": 0, "top_p": 1.0, "temperature": 0.7}
EDIT_SAMPLING = {"guidance_scale": 2.0, "top_k": 0, "top_p": 1.0, "temperature": 0.0}


def ship(*args: str) -> None:
    spec = importlib.util.spec_from_file_location("ship_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv, sys.argv = sys.argv, ["ship_model.py", *args]
    try:
        module.main()
    finally:
        sys.argv = argv


def write_folder(path: Path, config: dict, weights: dict) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(weights, str(path / "model.safetensors"))


def shipped_folder(root: Path) -> Path:
    shipped = root / "shipped"
    write_folder(shipped, {"base": "base", "vq": "vq", "sampling": SAMPLING, "edit_sampling": EDIT_SAMPLING},
                 {"head.weight": torch.zeros(4, 2, dtype=torch.float16)})
    write_folder(shipped / "base", {"kind": "base"}, {"w": torch.ones(3, dtype=torch.float16)})
    write_folder(shipped / "vq", {"kind": "vq"}, {"codebook": torch.ones(5, 2, dtype=torch.float16)})
    (shipped / "training" / "editing").mkdir(parents=True)
    (shipped / "training" / "editing" / "config.json").write_text('{"stage": "editing"}')
    (shipped / "training" / "shipped.json").write_text(json.dumps({"from": "runs/r16"}))
    return shipped


def continued_run(root: Path, name: str, init: Path, shipped: Path, head: torch.Tensor) -> Path:
    run = root / name
    options = {"init": str(init), "base": str(shipped / "base"), "vq": str(shipped / "vq")}
    write_folder(run / "export", {"base": str(shipped / "base"), "vq": str(shipped / "vq"), "sampling": SAMPLING,
                                  "edit_sampling": EDIT_SAMPLING}, {"head.weight": head})
    (run / "config.json").write_text(json.dumps({"stage": "editing", "stage_options": options}))
    (run / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    return run


def test_a_continued_stage_run_replaces_the_weights_and_keeps_base_vq_and_provenance(tmp_path):
    shipped = shipped_folder(tmp_path)
    first = continued_run(tmp_path, "w1", shipped, shipped, torch.full((4, 2), 0.25))
    ship("--continued", str(first), "--name", "editing-more", "--from", str(shipped), "--out", str(tmp_path / "a"))
    a = tmp_path / "a"
    head = load_file(str(a / "model.safetensors"))["head.weight"]
    assert head.dtype == torch.float16 and torch.equal(head, torch.full((4, 2), 0.25, dtype=torch.float16))
    for kept in ("base/model.safetensors", "base/config.json", "vq/model.safetensors", "vq/config.json",
                 "training/editing/config.json"):                       # frozen parts and provenance, byte for byte
        assert (a / kept).read_bytes() == (shipped / kept).read_bytes(), kept
    config = json.loads((a / "config.json").read_text())
    assert config["base"] == "base" and config["vq"] == "vq" and config["edit_sampling"] == EDIT_SAMPLING
    record = json.loads((a / "training" / "shipped.json").read_text())
    assert record["from"] == "runs/r16" and [c["name"] for c in record["continued"]] == ["editing-more"]
    with gzip.open(a / "training" / "editing-more" / "log.jsonl.gz", "rt") as f:
        assert json.loads(f.readline())["loss"] == 0.5

    # a second continuation from the first one's export chains; one from elsewhere is refused, nothing written
    second = continued_run(tmp_path, "w2", first / "export", a, torch.full((4, 2), 0.5))
    ship("--continued", str(second), "--name", "editing-varied", "--from", str(a), "--out", str(tmp_path / "b"),
         "--edit-guidance-after-change", "1.25")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["edit_sampling"] == {**EDIT_SAMPLING, "guidance_after_change": 1.25}, "one edit setting overridden"
    assert config["sampling"] == SAMPLING
    record = json.loads((tmp_path / "b" / "training" / "shipped.json").read_text())
    assert [c["name"] for c in record["continued"]] == ["editing-more", "editing-varied"]
    stray = continued_run(tmp_path, "w3", tmp_path / "elsewhere", a, torch.ones(4, 2))
    with pytest.raises(SystemExit, match="stage_options.init"):
        ship("--continued", str(stray), "--name", "x", "--from", str(a), "--out", str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()
    with pytest.raises(SystemExit, match="needs --name"):
        ship("--continued", str(first), "--from", str(shipped), "--out", str(tmp_path / "d"))
