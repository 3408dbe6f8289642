"""star-records datasets: writer/reader round trip, atomicity, and counted skipping of bad records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from star.data.records import (
    FORMAT, MANIFEST, ImageReadError, RecordWriter, build_manifest, load_image, read_records,
)


def image(seed: int, size: int = 16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def write_sample(root, shard_size: int = 3) -> list[dict]:
    records = [
        {"kind": "t2i", "image": image(0), "text": "a photo of a red circle", "meta": {"tag": "colors"}},
        {"kind": "edit", "source": image(1), "target": image(2), "text": "remove the star", "edit_type": "remove"},
        {"kind": "vqa", "image": image(0), "question": "how many stars are there?", "answer": "two"},
        {"kind": "caption", "image": image(3), "text": "a blue square"},
        {"kind": "text_qa", "question": "what colour is a stop sign?", "answer": "red"},
        {"kind": "t2i", "image": image(4), "text": "a photo of two stars"},
        {"kind": "t2i", "image": image(5), "text": "a photo of a cross"},
    ]
    with RecordWriter(root, shard_size=shard_size, meta={"seed": 7}) as w:
        for r in records:
            w.add(r)
    return records


def test_round_trip(tmp_path):
    root = tmp_path / "ds"
    written = write_sample(root)
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["format"] == FORMAT and manifest["meta"] == {"seed": 7}
    assert manifest["shards"] == ["shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"]
    assert manifest["counts"] == {"caption": 1, "edit": 1, "t2i": 3, "text_qa": 1, "vqa": 1}
    assert manifest["num_images"] == 6  # image(0) is stored once for two records
    reader = read_records(root)
    read = list(reader)
    assert reader.stats.read == 7 and reader.stats.total_skipped == 0 and len(reader) == 7
    for w, r in zip(written, read):
        assert r["kind"] == w["kind"]
        for key, value in w.items():
            if isinstance(value, Image.Image):
                assert np.array_equal(np.asarray(load_image(r[key])), np.asarray(value))  # lossless PNG
            else:
                assert r[key] == value
    # image paths are stored relative to the dataset folder
    line = json.loads((root / "shard-00000.jsonl").read_text().splitlines()[0])
    assert line["image"].startswith("images/") and (root / line["image"]).is_file()
    assert [r["text"] for r in read_records(root, kinds="t2i")] == [w["text"] for w in written if w["kind"] == "t2i"]
    assert len(read_records(root, kinds=["vqa", "edit"])) == 2


def test_paths_and_single_jsonl(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    image(9).save(root / "mine.png")
    with RecordWriter(root) as w:
        w.add({"kind": "caption", "image": "mine.png", "text": "my own picture"})  # a path already in the folder
    (rec,) = read_records(root)
    assert rec["image"] == str(root / "mine.png")
    # users' hand-made JSONL: a single file, or a folder indexed by build_manifest
    own = tmp_path / "own"
    own.mkdir()
    image(9).save(own / "a.png")
    (own / "data.jsonl").write_text(json.dumps({"kind": "t2i", "image": "a.png", "text": "hello"}) + "\n")
    assert [r["text"] for r in read_records(own / "data.jsonl")] == ["hello"]
    with pytest.raises(FileNotFoundError, match="build_manifest"):
        read_records(own)
    assert build_manifest(own)["counts"] == {"t2i": 1}
    assert len(list(read_records(own))) == 1


def test_manifest_is_written_last(tmp_path):
    root = tmp_path / "ds"
    w = RecordWriter(root, shard_size=2)
    for i in range(5):
        w.add({"kind": "t2i", "image": image(i), "text": f"prompt {i}"})
    assert (root / "shard-00001.jsonl").is_file()  # full shards are already in place...
    assert not (root / MANIFEST).exists()  # ...but the dataset is not readable until close()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        read_records(root)
    w.close()
    assert len(list(read_records(root))) == 5


def test_failed_write_leaves_no_manifest_and_no_temp_files(tmp_path):
    root = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with RecordWriter(root, shard_size=100) as w:
            w.add({"kind": "t2i", "image": image(0), "text": "x"})
            raise RuntimeError("generator crashed")
    assert not (root / MANIFEST).exists()
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    # a later write into the same folder starts clean
    write_sample(root)
    assert len(list(read_records(root))) == 7


def test_overwrite(tmp_path):
    root = tmp_path / "ds"
    write_sample(root)
    with pytest.raises(FileExistsError):
        RecordWriter(root)
    (root / "codes.json").write_text("{}")                     # codes of the images about to be replaced
    (root / "codes.safetensors").write_bytes(b"")
    with RecordWriter(root, overwrite=True) as w:
        w.add({"kind": "text_qa", "question": "q?", "answer": "a"})
    assert [r["kind"] for r in read_records(root)] == ["text_qa"]
    assert not (root / "shard-00001.jsonl").exists() and not list((root / "images").iterdir())
    assert not (root / "codes.json").exists() and not (root / "codes.safetensors").exists(), "stale codes go too"


def test_writer_rejects_bad_records(tmp_path):
    w = RecordWriter(tmp_path / "ds")
    with pytest.raises(ValueError, match="kind"):
        w.add({"kind": "video", "text": "x"})
    with pytest.raises(ValueError, match="non-empty"):
        w.add({"kind": "t2i", "image": image(0), "text": "  "})
    with pytest.raises(ValueError, match="unknown fields"):
        w.add({"kind": "text_qa", "question": "q", "answer": "a", "extra": 1})
    with pytest.raises(FileNotFoundError, match="nope.png"):
        w.add({"kind": "caption", "image": "nope.png", "text": "x"})
    w.close()
    assert json.loads((tmp_path / "ds" / MANIFEST).read_text())["num_records"] == 0


def test_bad_records_are_skipped_and_counted(tmp_path):
    root = tmp_path / "ds"
    write_sample(root, shard_size=100)
    good = Image.new("RGB", (8, 8))
    good.save(root / "images" / "full.png")
    data = (root / "images" / "full.png").read_bytes()
    (root / "images" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "images" / "garbage.png").write_bytes(b"not an image at all")
    bad_lines = [
        '{"kind": "t2i", "image": "images/full.png", "text": "broken json',
        json.dumps({"kind": "video", "text": "x"}),
        json.dumps({"kind": "t2i", "image": "images/full.png"}),
        json.dumps({"kind": "t2i", "image": "images/full.png", "text": ""}),
        json.dumps({"kind": "t2i", "image": "images/missing.png", "text": "x"}),
        json.dumps({"kind": "t2i", "image": "images/truncated.png", "text": "x"}),
        json.dumps({"kind": "caption", "image": "images/garbage.png", "text": "x"}),
        json.dumps({"kind": "t2i", "image": "images/full.png", "text": "x", "meta": "not a dict"}),
        "[1, 2, 3]",
        json.dumps({"kind": "t2i", "image": "images/full.png", "text": "the one good extra record"}),
    ]
    with open(root / "shard-00000.jsonl", "a") as f:
        f.write("\n".join(bad_lines) + "\n")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["shards"].append("shard-00099.jsonl")  # listed but absent
    (root / MANIFEST).write_text(json.dumps(manifest))
    reader = read_records(root)
    with pytest.warns(RuntimeWarning, match="skipped 10"):
        records = list(reader)
    assert len(records) == 8 and records[-1]["text"] == "the one good extra record"
    assert reader.stats.skipped == {"malformed_json": 2, "unknown_kind": 1, "missing_field": 1, "empty_text": 1,
                                    "missing_file": 1, "corrupt_image": 2, "bad_meta": 1, "missing_shard": 1}
    assert reader.warnings == reader.stats.skipped
    assert any("shard-00000.jsonl:8" in e for e in reader.stats.examples)  # examples name shard and line
    # without image checks a truncated file passes the reader, and load_image names it
    fast = read_records(root, check_images=False)
    with pytest.warns(RuntimeWarning):
        recs = list(fast)
    assert fast.stats.skipped.get("corrupt_image", 0) == 0
    truncated = [r for r in recs if r.get("image", "").endswith("truncated.png")]
    with pytest.raises(ImageReadError, match="truncated.png"):
        load_image(truncated[0]["image"])


def test_bad_bytes_and_lost_lines_are_counted(tmp_path):
    root = tmp_path / "ds"
    write_sample(root, shard_size=100)
    n = json.loads((root / MANIFEST).read_text())["num_records"]
    shard = root / "shard-00000.jsonl"
    lines = shard.read_bytes().splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"text": "', b'"text": "\xff\xfe', 1)      # invalid UTF-8 in one record
    shard.write_bytes(b"".join(lines[:-2]))                                   # and the last two lines lost
    reader = read_records(root)
    with pytest.warns(RuntimeWarning, match="skipped 3"):
        records = list(reader)
    assert len(records) == n - 3
    assert reader.stats.skipped == {"bad_encoding": 1, "missing_records": 2}


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_image(tmp_path / "absent.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    image(1).convert("L").save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").mode == "RGB"


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    from star.io import atomic_write

    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    path = atomic_write(tmp_path / "weights.bin", b"x")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777, "not mkstemp's 0600"


def test_replace_dir_leaves_a_complete_folder_whenever_it_is_killed(tmp_path, monkeypatch):
    import os

    from star.io import recover_dir, replace_dir

    def folder(name: str, text: str):
        path = tmp_path / name
        path.mkdir()
        (path / "weights").write_text(text)
        return path

    final = folder("model", "old")
    replace_dir(folder("model.tmp", "new"), final)
    assert (final / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    # killed between the two renames: the old folder waits as model.old, and recover_dir puts it back
    real_replace, calls = os.replace, []

    def killed_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(folder("model.tmp2", "newer"), final)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not final.exists() and (tmp_path / "model.old" / "weights").read_text() == "new"
    recover_dir(final)
    assert (final / "weights").read_text() == "new" and not (tmp_path / "model.old").exists()
    replace_dir(tmp_path / "model.tmp2", final)                            # and the next swap completes
    assert (final / "weights").read_text() == "newer"
