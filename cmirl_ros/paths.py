"""Where the package's config files and shipped models live, in a source tree or a colcon install."""
from __future__ import annotations

import sys
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _share_dir() -> Path:
    return Path(sys.prefix) / "share" / "cmirl_ros"


def _first_existing(name: str) -> Path:
    for root in (_SOURCE_ROOT, _share_dir()):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"cannot find the '{name}' directory of cmirl_ros (looked in {_SOURCE_ROOT} and {_share_dir()})")


def config_dir() -> Path:
    return _first_existing("config")


def models_dir() -> Path:
    return _first_existing("models")


def shared_data_dir() -> Path:
    """The read-only real data that sits beside a development checkout (absent in a user's clone)."""
    return _SOURCE_ROOT.parent / "shared" / "data"
