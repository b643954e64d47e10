"""Checkpoints: safetensors weights with the config, preprocessing and hashes embedded.

Layout of a checkpoint directory (what `models/NAME/` holds):
    model.safetensors   weights + metadata (authoritative): format, config (JSON), config_hash,
                        weights_sha256, fingerprint, preprocessing (JSON), extra (JSON)
    config.yaml         a readable copy of the embedded config
A single `*.safetensors` file with that metadata is a checkpoint too.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from cmirl_ros.atomic import atomic_write
from cmirl_ros.formats import (
    CHECKPOINT_FORMAT as FORMAT,
    CHECKPOINT_JSON_KEYS,
    MODEL_METADATA_SCHEMA,
    ModelFormatError,
    refusing,
    schema_problem,
)
from cmirl_ros.models.inference import resolve_device
from cmirl_ros.models.place_model import PlaceModel, architecture, build_model, config_hash

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def weights_sha256(model: torch.nn.Module) -> str:
    return state_sha256(model.state_dict())


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(state.items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: PlaceModel) -> str:
    """`NAME-<16 hex>`: changes with the architecture config or any weight; what maps record."""
    return _fingerprint(model.name, config_hash(model.config), weights_sha256(model))


def _fingerprint(name: str, config_digest: str, weights_digest: str) -> str:
    return f"{name}-{hashlib.sha256(f'{config_digest}:{weights_digest}'.encode()).hexdigest()[:16]}"


def save_checkpoint(model: PlaceModel, path: str | Path, extra_metadata: dict[str, Any] | None = None) -> Path:
    """Write `path/model.safetensors` + `path/config.yaml` (or one file if `path` ends in .safetensors), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    weights_path = path if path.suffix == ".safetensors" else path / WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "name": model.name,
        "config": json.dumps(model.config, sort_keys=True),
        "config_hash": config_hash(model.config),
        "weights_sha256": weights_sha256(model),
        "fingerprint": model_fingerprint(model),
        "preprocessing": json.dumps(model.preprocessing.to_dict(), sort_keys=True),
        "extra": json.dumps(extra_metadata or {}, sort_keys=True, default=str),
    }
    atomic_write(weights_path, lambda tmp: save_file(state, tmp, metadata=metadata))
    if weights_path.parent == path:
        text = yaml.safe_dump(model.config, sort_keys=False)
        atomic_write(path / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return weights_path


def _weights_file(path: Path) -> Path:
    weights_path = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: checkpoint weights not found")
    return weights_path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """-> (state dict, metadata with 'config', 'preprocessing', 'extra' decoded), validated: the
    metadata against `MODEL_METADATA_SCHEMA`, the config against its config_hash, the weights against
    their weights_sha256, both against the fingerprint. Raises only FileNotFoundError or ModelFormatError."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    weights_path = _weights_file(Path(path))
    with refusing(weights_path, ModelFormatError, "not a readable safetensors checkpoint"):
        with safe_open(str(weights_path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        state = load_file(str(weights_path))
    metadata = _validated_metadata(metadata, weights_path)
    if state_sha256(state) != metadata["weights_sha256"]:
        raise ModelFormatError(weights_path, "weights do not match their weights_sha256 (the file is corrupted)")
    return state, metadata


def _validated_metadata(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    if metadata.get("format") != FORMAT:
        raise ModelFormatError(path, f"not a cmirl_ros checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
    problem = schema_problem(metadata, MODEL_METADATA_SCHEMA)
    if problem:
        raise ModelFormatError(path, f"invalid safetensors metadata: {problem}")
    decoded = {**metadata, **{key: json.loads(metadata[key]) for key in CHECKPOINT_JSON_KEYS}}
    with refusing(path, ModelFormatError, "invalid safetensors metadata: the embedded config"):
        digest = config_hash(decoded["config"])
    if digest != decoded["config_hash"]:
        raise ModelFormatError(path, "invalid safetensors metadata: the embedded config does not match its config_hash")
    if _fingerprint(decoded["name"], digest, decoded["weights_sha256"]) != decoded["fingerprint"]:
        raise ModelFormatError(path, "invalid safetensors metadata: fingerprint does not match name, config and weights")
    return decoded


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} vs {b!r}"]


def _apply(model: PlaceModel, state: dict[str, torch.Tensor], metadata: dict[str, Any], origin: Path) -> None:
    if metadata["config_hash"] != config_hash(model.config):
        diff = _differences(architecture(metadata["config"]), architecture(model.config))
        raise ValueError(
            f"{origin}: checkpoint of config '{metadata['name']}' does not fit model "
            f"'{model.name}'; differences (checkpoint vs model): {'; '.join(diff[:8])}"
        )
    with refusing(origin, ModelFormatError, "weights do not fit the config"):
        model.load_state_dict(state, strict=True)


def load_checkpoint(model: PlaceModel, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's weights into `model`; refuses one saved from a different architecture."""
    state, metadata = read_checkpoint(path)
    _apply(model, state, metadata, _weights_file(Path(path)))
    return metadata


def _shipped_model_dir(name: str) -> Path | None:
    from cmirl_ros.paths import models_dir

    try:
        candidate = models_dir() / name
    except FileNotFoundError:
        return None
    return candidate if (candidate / WEIGHTS_FILE).is_file() else None


def load_model(name_or_path: str | Path, device: str = "auto") -> PlaceModel:
    """A checkpoint directory/file, a shipped model (models/NAME/), or a config name (untrained) -> model in eval mode."""
    path = Path(name_or_path).expanduser()
    if (path.is_file() and path.suffix not in (".yaml", ".yml")) or (path / WEIGHTS_FILE).is_file():
        source = path
    else:
        source = _shipped_model_dir(str(name_or_path))
    if source is not None:
        state, metadata = read_checkpoint(source)
        with refusing(_weights_file(source), ModelFormatError, "the embedded config builds no model", passing=()):
            model = build_model(metadata["config"], load_pretrained=False)
        _apply(model, state, metadata, _weights_file(source))
    else:
        try:
            model = build_model(name_or_path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"'{name_or_path}' is neither a checkpoint, a shipped model nor a model config ({e})") from None
    return model.to(resolve_device(device)).eval()
