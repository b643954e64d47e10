"""Localizer core used by the ROS node and the offline tools (ROS-free).

Exports load on first use, so `cmirl --help` does not import torch or faiss.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Localizer": "cmirl_ros.localization.localizer",
    "LocalizerConfig": "cmirl_ros.localization.localizer",
    "LocalizationResult": "cmirl_ros.localization.localizer",
    "Match": "cmirl_ros.localization.localizer",
    "match_covariance": "cmirl_ros.localization.covariance",
    "RERANKERS": "cmirl_ros.localization.rerank",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cmirl_ros.localization' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
