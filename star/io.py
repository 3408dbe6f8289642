"""Atomic writes: every file the project writes appears whole or not at all (temp file + os.replace), and a folder
is replaced by renames only (`replace_dir`), so a kill at any moment leaves a complete copy under a known name."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_save(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it into place; the parent is created. Safe
    against a killed process (the file is whole or absent), not against power loss (no fsync: checkpoints do
    their own)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)                 # mkstemp makes 0600; a written file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write bytes, or text as UTF-8, to `path` atomically."""
    raw = data.encode() if isinstance(data, str) else data
    return atomic_save(path, lambda tmp: Path(tmp).write_bytes(raw))


def recover_dir(final: str | os.PathLike) -> None:
    """Put back `final` from `final.old` when a `replace_dir` was killed between its two renames."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if old.exists() and not final.exists():
        os.replace(old, final)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the complete folder `tmp` to `final`, replacing it: final -> final.old, tmp -> final, then delete
    final.old. Killed at any moment, this leaves a complete `final`, or `final.old` that `recover_dir` restores."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + ".old")
    recover_dir(final)
    if old.exists():                                   # a finished swap's leftover
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
