"""Folders that refuse writes, for tests of saving: read-only and full.

Both are real where the machine allows it. Without root, a folder with mode 0555 is a real read-only
folder. Under root (CI containers), which ignores file modes, a small tmpfs is mounted on a temporary
folder (``mount`` needs CAP_SYS_ADMIN): remounted ``ro`` it refuses every write with EROFS, even to
root (a root without mount rights skips the read-only tests). Mounted with a size limit and filled up,
a tmpfs refuses writes with ENOSPC; where no tmpfs can be mounted, :func:`full_folder` *simulates* a
full disk: ``os.fsync`` of a file in that folder raises ENOSPC (the call where a full disk reports
delayed allocation failures), and ``simulated`` says so.
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


def _mount_tmpfs(path: Path, options: str) -> bool:
    """Mount a tmpfs on ``path``; False where this process may not (not root, or no CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "otcache-test", str(path)], capture_output=True)
    return result.returncode == 0


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _write_files(folder: Path, files: dict[str, str] | None) -> None:
    for name, text in (files or {}).items():
        (folder / name).write_text(text)


@contextmanager
def read_only_folder(base: Path, files: dict[str, str] | None = None) -> Iterator[FaultFolder]:
    """A real read-only folder holding ``files`` (name -> text)."""
    path = base / "read-only"
    if os.geteuid() != 0:
        path.mkdir()
        _write_files(path, files)
        path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        try:
            yield FaultFolder(path, simulated=False)
        finally:
            path.chmod(stat.S_IRWXU)
        return
    if not _mount_tmpfs(path, "size=1m,mode=0755"):
        pytest.skip("root ignores file modes and this process may not mount a read-only tmpfs")
    try:
        _write_files(path, files)
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
        yield FaultFolder(path, simulated=False)
    finally:
        _unmount(path)


@contextmanager
def full_folder(base: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str] | None = None,
                ) -> Iterator[FaultFolder]:
    """A folder on a full file system holding ``files``; subfolders can still be made."""
    path = base / "full"
    if _mount_tmpfs(path, "size=256k,mode=0755"):
        try:
            _write_files(path, files)
            _fill(path / ".filler")
            yield FaultFolder(path, simulated=False)
        finally:
            _unmount(path)
        return
    _write_files(path, files)
    real_fsync = os.fsync

    def fsync_on_a_full_disk(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(path):
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
