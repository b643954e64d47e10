"""Where the package's config files and shipped models live, in a source tree or an install."""
from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_ROOT = _PACKAGE_DIR.parent


def _candidate_roots() -> list[Path]:
    """Source tree first, then install prefixes: the one this package was installed under
    (colcon: PREFIX/lib/pythonX.Y/site-packages/cmirl_ros), the ament prefixes, sys.prefix."""
    prefixes = [_PACKAGE_DIR.parents[3]] if len(_PACKAGE_DIR.parents) > 3 else []
    prefixes += [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(Path(sys.prefix))
    return [_SOURCE_ROOT] + [prefix / "share" / "cmirl_ros" for prefix in prefixes]


def _first_existing(name: str) -> Path:
    roots = _candidate_roots()
    for root in roots:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"cannot find the '{name}' directory of cmirl_ros (looked in {', '.join(map(str, roots))})")


def config_dir() -> Path:
    return _first_existing("config")


def models_dir() -> Path:
    return _first_existing("models")
