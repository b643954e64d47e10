"""Local feature encoders: dual-stream (CMIRL, eq. 5-6) or one shared trunk for both modalities (ModaLink)."""
from __future__ import annotations

import torch
from torch import nn

from cmirl_ros.models.backbones import Backbone
from cmirl_ros.registry import Registry

ENCODERS: Registry[type[nn.Module]] = Registry("encoder")


@ENCODERS.register("dual_stream")
class DualStreamEncoder(nn.Module):
    """Two structurally identical trunks with separate weights: E_RGB and E_Depth."""

    def __init__(self, backbone: dict, depth_channels: int, pretrained: str | None):
        super().__init__()
        self.rgb = Backbone(**backbone, pretrained=pretrained, in_chans=3)
        self.depth = Backbone(**backbone, pretrained=pretrained, in_chans=depth_channels)
        self.rgb_channels = self.rgb.out_channels
        self.depth_channels = self.depth.out_channels

    @property
    def image_trunk(self) -> Backbone:
        return self.rgb

    @property
    def depth_trunk(self) -> Backbone:
        return self.depth

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.rgb(image)

    def encode_depth(self, depth: torch.Tensor) -> torch.Tensor:
        return self.depth(depth)


@ENCODERS.register("shared")
class SharedEncoder(nn.Module):
    """One trunk for image and depth (ModaLink): the depth image comes in with 3 channels."""

    def __init__(self, backbone: dict, depth_channels: int, pretrained: str | None):
        super().__init__()
        if depth_channels != 3:
            raise ValueError(f"a shared encoder needs depth_input.channels: 3 (got {depth_channels})")
        self.trunk = Backbone(**backbone, pretrained=pretrained, in_chans=3)
        self.rgb_channels = self.depth_channels = self.trunk.out_channels

    @property
    def image_trunk(self) -> Backbone:
        return self.trunk

    @property
    def depth_trunk(self) -> Backbone:
        return self.trunk

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.trunk(image)

    def encode_depth(self, depth: torch.Tensor) -> torch.Tensor:
        return self.trunk(depth)
