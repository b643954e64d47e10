"""Atomic directory writes and checksums for map directories."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; on success it is fsynced and renamed to `target`.

    Readers never see a half-written map. An existing `target` is only replaced when `overwrite`;
    it is then moved aside, the new directory renamed in, and the old one deleted (restored if the
    rename fails). On any error the temporary directory is removed and `target` is untouched.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise ValueError(f"{target}: already exists (pass --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield temp
        for child in temp.iterdir():
            fsync_path(child)
        fsync_path(temp)
        _swap_in(temp, target)
        fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _swap_in(temp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(temp, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    previous = aside / target.name
    os.replace(target, previous)
    try:
        os.replace(temp, target)
    except BaseException:
        os.replace(previous, target)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
