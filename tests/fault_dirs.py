"""Folders that refuse writes, for tests of saving: read-only and full.

Both are real where the machine allows it. Under root (CI containers), a small tmpfs is mounted on a
temporary folder (``mount`` needs CAP_SYS_ADMIN): mounted ``ro`` it refuses every write with EROFS,
even to root; mounted with a size limit and filled up, it refuses writes with ENOSPC. Without root, a
folder with mode 0555 is a real read-only folder; a full disk cannot be made without mount rights,
so :func:`full_folder` then *simulates* it: ``os.fsync`` of OTCache's atomic save raises ENOSPC (the
call where a full disk reports delayed allocation failures), and ``simulated`` says so.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class FaultFolder:
    path: Path
    simulated: bool
    """True when the fault is simulated (see the module doc); False for a real read-only or full folder."""


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "otcache-test", str(path)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a test tmpfs: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def read_only_folder(base: Path, files: dict[str, str] | None = None) -> Iterator[FaultFolder]:
    """A real read-only folder holding ``files`` (name -> text)."""
    path = base / "read-only"
    if _can_mount():
        staging = base / "staging"
        staging.mkdir()
        for name, text in (files or {}).items():
            (staging / name).write_text(text)
        with _tmpfs(path, "size=1m,mode=0755"):
            for item in staging.iterdir():
                shutil.copy(item, path / item.name)
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
            yield FaultFolder(path, simulated=False)
        return
    path.mkdir()
    for name, text in (files or {}).items():
        (path / name).write_text(text)
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        yield FaultFolder(path, simulated=False)
    finally:
        path.chmod(stat.S_IRWXU)


@contextmanager
def full_folder(base: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str] | None = None,
                ) -> Iterator[FaultFolder]:
    """A folder on a full file system holding ``files``; subfolders can still be made."""
    path = base / "full"
    if _can_mount():
        with _tmpfs(path, "size=256k,mode=0755"):
            for name, text in (files or {}).items():
                (path / name).write_text(text)
            _fill(path / ".filler")
            yield FaultFolder(path, simulated=False)
        return
    path.mkdir()
    for name, text in (files or {}).items():
        (path / name).write_text(text)
    real_fsync = os.fsync

    def fsync_on_a_full_disk(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).parent == path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_on_a_full_disk)
    yield FaultFolder(path, simulated=True)


def _fill(filler: Path) -> None:
    """Write until the file system is full."""
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # The last partial page may still take a few bytes: fill them too.
    with open(filler, "ab", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0")
        except OSError:
            pass


def tree_digest(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) -> its bytes: compare before and after."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
