"""PlaceModel: (image | sparse depth | both) -> one L2-normalised descriptor, assembled from a YAML config.

    alignment (depth only)  ->  encoder (per modality)  ->  fusion  ->  aggregation  ->  projection, L2
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cmirl_ros.config import load_yaml, resolve_config
from cmirl_ros.models.aggregation import AGGREGATIONS
from cmirl_ros.models.alignment import ALIGNMENTS, normalize_depth
from cmirl_ros.models.backbones import WEIGHTS_FROM_CHECKPOINT
from cmirl_ros.models.encoders import ENCODERS
from cmirl_ros.models.fusion import FUSIONS
from cmirl_ros.preprocess import Preprocessing
from cmirl_ros.registry import Registry

CONFIG_KEYS = {"name", "description", "base", "preprocessing", "depth_input", "alignment", "encoder", "fusion",
               "aggregation", "descriptor_dim"}
COMPONENT_KEYS = ("alignment", "encoder", "fusion", "aggregation")
# Keys that do not change the network a checkpoint's weights belong to.
NON_ARCHITECTURE_KEYS = ("name", "description", "base")


def _merge(base: dict, override: dict) -> dict:
    """Deep merge; a component whose `name` changes is replaced whole (its options differ)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        old = merged.get(key)
        mergeable = isinstance(old, dict) and isinstance(value, dict)
        if mergeable and value.get("name", old.get("name")) == old.get("name"):
            merged[key] = _merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ValueError(f"{path}: 'base' chain loops back to itself")
    config = load_yaml(path)
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown model config keys: {', '.join(sorted(unknown))}")
    base = config.pop("base", None)
    if base is None:
        return config
    base_path = path.parent / f"{base}.yaml" if (path.parent / f"{base}.yaml").is_file() else resolve_config(base, "models")
    return _merge(_read_config_file(base_path, seen + (path,)), config)


def load_model_config(cfg: dict | str | Path) -> dict[str, Any]:
    """A config dict, a config name under config/models/, or a YAML path -> the resolved config dict."""
    if isinstance(cfg, dict):
        config = copy.deepcopy(cfg)
        origin = f"model config '{config.get('name', '?')}'"
        unknown = set(config) - CONFIG_KEYS
        if unknown:
            raise ValueError(f"{origin}: unknown model config keys: {', '.join(sorted(unknown))}")
        base = config.pop("base", None)
        if base is not None:
            config = _merge(_read_config_file(resolve_config(base, "models")), config)
    else:
        path = resolve_config(cfg, "models")
        config = _read_config_file(path)
        config.setdefault("name", path.stem)
        origin = str(path)
    missing = [key for key in ("name", "preprocessing", "encoder", "fusion", "aggregation") if key not in config]
    if missing:
        raise ValueError(f"{origin}: missing keys: {', '.join(missing)}")
    for key in COMPONENT_KEYS:
        if key in config and not (isinstance(config[key], dict) and "name" in config[key]):
            raise ValueError(f"{origin}: '{key}' must be a mapping with a 'name'")
    return config


def architecture(config: dict) -> dict:
    """The part of a config that fixes the network (and its weights' meaning)."""
    arch = {k: v for k, v in config.items() if k not in NON_ARCHITECTURE_KEYS}
    backbone = dict(arch["encoder"].get("backbone", {}))
    backbone.pop("pretrained", None)  # only the initialisation, not the network
    arch["encoder"] = {**arch["encoder"], "backbone": backbone}
    return arch


def config_hash(config: dict) -> str:
    text = json.dumps(architecture(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class TrunkPrefix(NamedTuple):
    """What the frozen part of a model (`freeze_stages`: alignment, trunk stem + first blocks) computes:
    the image trunk's and the depth trunk's prefix outputs (None for an absent input). Deterministic
    given the inputs, so training can cache it (cmirl_ros/training/feature_cache.py)."""

    image: torch.Tensor | None
    depth: torch.Tensor | None


def _build(registry: Registry, section: dict, model_name: str, **inputs) -> nn.Module:
    options = {k: v for k, v in section.items() if k != "name"}
    component = registry.get(section["name"])
    try:
        return component(**inputs, **options)
    except TypeError as e:
        raise ValueError(f"model config '{model_name}': {registry.kind} '{section['name']}': {e}") from None


class PlaceModel(nn.Module):
    """forward(image=None, depth=None) -> (B, descriptor_dim), L2-normalised, for any non-empty subset.

    `image`: (B,3,H,W) normalised by `preprocessing.mean/std`; `depth`: (B,1,H,W) sparse metres (0 = empty).
    """

    def __init__(self, config: dict, load_pretrained: bool = True):
        super().__init__()
        self.config = load_model_config(config)
        self.name: str = self.config["name"]
        try:
            self.preprocessing = Preprocessing.from_dict(self.config["preprocessing"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"model config '{self.name}': preprocessing: {e}") from None
        max_depth = self.preprocessing.max_depth
        self.depth_channels = int(self.config.get("depth_input", {}).get("channels", 1))
        if self.depth_channels not in (1, 3):
            raise ValueError(f"model config '{self.name}': depth_input.channels must be 1 or 3")

        alignment = self.config.get("alignment", {"name": "rigid"})
        self.alignment = _build(ALIGNMENTS, alignment, self.name, max_depth=max_depth)
        encoder = copy.deepcopy(self.config["encoder"])
        backbone = encoder.pop("backbone", None)
        if not isinstance(backbone, dict) or "name" not in backbone:
            raise ValueError(f"model config '{self.name}': encoder.backbone must be a mapping with a 'name'")
        pretrained = backbone.pop("pretrained", "imagenet") if load_pretrained else WEIGHTS_FROM_CHECKPOINT
        backbone.pop("pretrained", None)
        self.encoder = _build(ENCODERS, {**encoder, "backbone": backbone}, self.name,
                              depth_channels=self.depth_channels, pretrained=pretrained)
        self.fusion = _build(FUSIONS, self.config["fusion"], self.name,
                             rgb_channels=self.encoder.rgb_channels, depth_channels=self.encoder.depth_channels)
        self.aggregation = _build(AGGREGATIONS, self.config["aggregation"], self.name, dim=self.fusion.out_channels)
        dim = self.config.get("descriptor_dim")
        self.projection = nn.Linear(self.aggregation.out_dim, int(dim)) if dim else None
        self.descriptor_dim: int = int(dim) if dim else self.aggregation.out_dim

    def _check_inputs(self, image: torch.Tensor | None, depth: torch.Tensor | None) -> None:
        if image is None and depth is None:
            raise ValueError(f"{self.name}: give an image, a depth map, or both")
        if image is not None and (image.ndim != 4 or image.shape[1] != 3):
            raise ValueError(f"{self.name}: image must be (B,3,H,W), got {tuple(image.shape)}")
        if depth is not None and (depth.ndim != 4 or depth.shape[1] != 1):
            raise ValueError(f"{self.name}: depth must be (B,1,H,W) metres, got {tuple(depth.shape)}")
        if image is not None and depth is not None and (image.shape[0] != depth.shape[0] or image.shape[2:] != depth.shape[2:]):
            raise ValueError(f"{self.name}: image {tuple(image.shape)} and depth {tuple(depth.shape)} must share batch and size")

    def dense_depth(self, depth: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """The aligned dense depth (metres) the depth stream sees: ACMA or rigid + classical completion."""
        return self.alignment(depth, image)

    def trunk_prefix(self, image: torch.Tensor | None = None, depth: torch.Tensor | None = None) -> TrunkPrefix:
        """The frozen part: the image, and the aligned, normalised dense depth, through the trunks' frozen
        stem + blocks (the inputs themselves when no block is frozen)."""
        self._check_inputs(image, depth)
        image_prefix = self.encoder.image_trunk.prefix(image) if image is not None else None
        depth_prefix = None
        if depth is not None:
            dense = self.dense_depth(depth, image)
            normalized = normalize_depth(dense, self.preprocessing.max_depth, self.depth_channels)
            depth_prefix = self.encoder.depth_trunk.prefix(normalized)
        return TrunkPrefix(image_prefix, depth_prefix)

    def local_features(self, image: torch.Tensor | None = None, depth: torch.Tensor | None = None,
                       prefix: TrunkPrefix | None = None) -> torch.Tensor:
        """The fused local feature map F_fused (B, C, h, w), from the inputs or from their `trunk_prefix`."""
        if prefix is None:
            prefix = self.trunk_prefix(image, depth)
        elif image is not None or depth is not None:
            raise ValueError(f"{self.name}: give the inputs or their trunk prefix, not both")
        rgb_features = self.encoder.image_trunk.rest(prefix.image) if prefix.image is not None else None
        depth_features = self.encoder.depth_trunk.rest(prefix.depth) if prefix.depth is not None else None
        return self.fusion(rgb_features, depth_features)

    def forward(self, image: torch.Tensor | None = None, depth: torch.Tensor | None = None,
                prefix: TrunkPrefix | None = None) -> torch.Tensor:
        descriptor = self.aggregation(self.local_features(image, depth, prefix))
        if self.projection is not None:
            descriptor = self.projection(descriptor)
        return F.normalize(descriptor.float(), dim=1)

    @torch.no_grad()
    def init_centroids(self, image: torch.Tensor | None = None, depth: torch.Tensor | None = None,
                       subsets: tuple[str, ...] | None = None) -> None:
        """NetVLAD centroids (and assignment weights) from k-means of this batch's fused local features.

        `subsets` (e.g. ("image", "depth", "image+depth")) pools the features of each subset of the
        given inputs, so that the centres also cover the single-modality features that image
        queries and depth-only map entries produce; default: the inputs as given.
        """
        if subsets is None:
            feature_maps = [self.local_features(image, depth)]
        else:
            feature_maps = [self.local_features(image if "image" in subset else None,
                                                depth if "depth" in subset else None) for subset in subsets]
        self.aggregation.init_from_features(torch.cat(feature_maps))


def build_model(cfg: dict | str | Path, load_pretrained: bool = True) -> PlaceModel:
    """A config (dict, name under config/models/, or YAML path) -> PlaceModel, ImageNet-initialised where set."""
    return PlaceModel(load_model_config(cfg), load_pretrained=load_pretrained)
