"""YAML configuration files: load, and resolve a config by name or path."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cmirl_ros.paths import config_dir

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open() as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ValueError(_yaml_error(path, e)) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _yaml_error(path: Path, error: yaml.YAMLError) -> str:
    """One line: 'PATH:LINE:COLUMN: invalid YAML: problem (context)' (PyYAML's own text spans lines)."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    return f"{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")


def resolve_config(name_or_path: str | Path, kind: str) -> Path:
    """`cmirl_lite` -> config/<kind>/cmirl_lite.yaml; an existing file path is returned as is."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    named = config_dir() / kind / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in (config_dir() / kind).glob("*.yaml"))
    raise FileNotFoundError(f"no {kind} config '{name_or_path}' (a .yaml path or one of: {', '.join(known)})")


def dataclass_from_mapping(cls: type[T], data: dict, section: str) -> T:
    """Build a config dataclass from a YAML mapping; unknown keys are an error naming `section`."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{section}: unknown keys {sorted(unknown)} (known: {sorted(f.name for f in fields(cls))})")
    return cls(**data)
