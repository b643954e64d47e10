"""Map database: keyframe descriptors + poses + FAISS index, built from a dataset, saved as a directory.

Heavy modules (faiss, torch) load on first use, so `cmirl --help` stays fast.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "MapDatabase": "cmirl_ros.mapdb.database",
    "MapFormatError": "cmirl_ros.formats",
    "Keyframes": "cmirl_ros.mapdb.keyframes",
    "select_keyframes": "cmirl_ros.mapdb.keyframes",
    "IndexConfig": "cmirl_ros.mapdb.index",
    "build_map": "cmirl_ros.mapdb.build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cmirl_ros.mapdb' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
