"""Atomic directory writes, their crash recovery, and checksums for map directories."""
from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Staged:
    """Fixed names beside a map NAME that an overwriting save passes through."""

    new: Path  # .NAME.new: the complete, fsynced new map, waiting to replace NAME
    old: Path  # .NAME.old: the replaced map, until it is deleted


def staged_paths(target: Path) -> Staged:
    target = Path(target)
    return Staged(target.parent / f".{target.name}.new", target.parent / f".{target.name}.old")


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that cannot become a map directory."""
    target = Path(target)
    for parent in target.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ValueError(f"{target}: cannot create it: {parent} is a file, not a directory")
            break
    if target.exists() and not overwrite:
        raise ValueError(f"{target}: already exists (pass --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target}: is a file, not a map directory; --overwrite only replaces a map")
    if target.is_dir() and any(target.iterdir()) and not (target / "manifest.json").is_file():
        raise ValueError(f"{target}: is a directory without manifest.json, not a map; --overwrite only replaces a map")


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; on success it is fsynced and renamed to `target`.

    Readers never see a half-written map. An existing `target` is only replaced when `overwrite`:
    the new directory is first renamed to `.NAME.new` (complete), the old one to `.NAME.old`, the new
    one to NAME, then the old one deleted. A crash anywhere in between is repaired by the next load
    (`recover_interrupted_save`) or save of NAME; a save also deletes the temporaries of dead saves.
    On any error the temporary directory is removed and `target` is untouched.
    """
    target = Path(target)
    check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _directory_lock(target.parent):
        _finish_swap(target)
        _clean_stale_temporaries(target)
        check_target(target, overwrite)  # the repair may have put a map back
        temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        in_use = _hold_lock(temp)
    try:
        yield temp
        for child in temp.iterdir():
            fsync_path(child)
        fsync_path(temp)
        with _directory_lock(target.parent):
            _swap_in(temp, target)
        fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        os.close(in_use)


def _swap_in(temp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(temp, target)
        return
    staged = staged_paths(target)
    os.replace(temp, staged.new)  # from here on, a crash finishes the swap
    os.replace(target, staged.old)
    try:
        os.replace(staged.new, target)
    except BaseException:
        os.replace(staged.old, target)
        shutil.rmtree(staged.new, ignore_errors=True)
        raise
    shutil.rmtree(staged.old, ignore_errors=True)


def recover_interrupted_save(target: str | Path) -> None:
    """Finish (or undo) an overwriting save a crash interrupted; a no-op costing two stat calls
    otherwise. Where the directory cannot be written, the map is read as it stands."""
    target = Path(target)
    staged = staged_paths(target)
    if not (staged.new.exists() or staged.old.exists()):
        return
    try:
        with _directory_lock(target.parent):
            _finish_swap(target)
    except OSError:
        pass


def _finish_swap(target: Path) -> None:
    staged = staged_paths(target)
    if target.exists() and staged.old.exists():
        shutil.rmtree(staged.old)  # a finished swap's leftover
    if staged.new.is_dir():
        if target.exists():
            os.replace(target, staged.old)
        os.replace(staged.new, target)
    elif not target.exists() and staged.old.is_dir():
        os.replace(staged.old, target)  # the new map never got complete: put the old one back
    shutil.rmtree(staged.old, ignore_errors=True)


def clean_stale_temporaries(target: str | Path) -> None:
    """Delete `.NAME.tmp-*` directories of saves that died (those of running saves are locked)."""
    target = Path(target)
    with _directory_lock(target.parent):
        _clean_stale_temporaries(target)


def _clean_stale_temporaries(target: Path) -> None:
    for temp in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        try:
            fd = os.open(temp, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a save in progress holds it
        finally:
            os.close(fd)
        shutil.rmtree(temp, ignore_errors=True)


def _hold_lock(directory: Path) -> int:
    """An exclusive flock on `directory` until the returned descriptor is closed (or the process dies)."""
    fd = os.open(directory, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Serialises the renames of saves and repairs in one parent directory (across processes)."""
    fd = _hold_lock(directory)
    try:
        yield
    finally:
        os.close(fd)
