"""Fusion of RGB and depth feature maps into one map, for any non-empty subset of the two.

Missing modality (DESIGN.md): an absent stream's tokens are a learned "missing" embedding at
every position (plus the positional encoding), so the fusion runs the same graph for
{image}, {depth} and {image, depth}, and training with random modality drop-out places all
three in one descriptor space.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cmirl_ros.registry import Registry

FUSIONS: Registry[type[nn.Module]] = Registry("fusion")


def _require_one(rgb: torch.Tensor | None, depth: torch.Tensor | None) -> torch.Tensor:
    if rgb is None and depth is None:
        raise ValueError("fusion needs at least one of the RGB and depth feature maps")
    return rgb if rgb is not None else depth


def positional_encoding(dim: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """2-D sinusoidal encoding (H*W, dim): half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"positional encoding needs a dimension divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device) / quarter)
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * frequencies
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * frequencies
    row_code = torch.cat([rows.sin(), rows.cos()], -1)[:, None, :].expand(height, width, 2 * quarter)
    col_code = torch.cat([cols.sin(), cols.cos()], -1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([row_code, col_code], -1).reshape(height * width, dim)


@FUSIONS.register("cmaf")
class CrossModalAttentionFusion(nn.Module):
    """CMAF (eq. 7-12): bidirectional multi-head cross-attention, Concat of four, FFN."""

    def __init__(self, rgb_channels: int, depth_channels: int, dim: int = 256, heads: int = 8,
                 ffn_dim: int = 512, out_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        self.rgb_in = nn.Linear(rgb_channels, dim)
        self.depth_in = nn.Linear(depth_channels, dim)
        self.missing_rgb = nn.Parameter(torch.randn(dim) * 0.02)
        self.missing_depth = nn.Parameter(torch.randn(dim) * 0.02)
        # Each attention holds W_Q of its querying modality and W_K, W_V of the other (eq. 7-9).
        self.rgb_to_depth = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)  # eq. 10
        self.depth_to_rgb = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)  # eq. 11
        self.ffn = nn.Sequential(  # eq. 12
            nn.LayerNorm(4 * dim),
            nn.Linear(4 * dim, ffn_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, out_dim),
        )
        self.dim = dim
        self.out_channels = out_dim

    def _tokens(self, features: torch.Tensor | None, project: nn.Linear, missing: torch.Tensor,
                shape: tuple[int, int, int], position: torch.Tensor) -> torch.Tensor:
        batch, height, width = shape
        if features is None:
            return (missing.expand(batch, height * width, self.dim) + position).to(position.dtype)
        return project(features.flatten(2).transpose(1, 2)) + position

    def forward(self, rgb: torch.Tensor | None, depth: torch.Tensor | None) -> torch.Tensor:
        reference = _require_one(rgb, depth)
        batch, _, height, width = reference.shape
        position = positional_encoding(self.dim, height, width, reference.device)
        shape = (batch, height, width)
        rgb_tokens = self._tokens(rgb, self.rgb_in, self.missing_rgb, shape, position)
        depth_tokens = self._tokens(depth, self.depth_in, self.missing_depth, shape, position)
        rgb_from_depth, _ = self.rgb_to_depth(rgb_tokens, depth_tokens, depth_tokens, need_weights=False)
        depth_from_rgb, _ = self.depth_to_rgb(depth_tokens, rgb_tokens, rgb_tokens, need_weights=False)
        fused = self.ffn(torch.cat([rgb_tokens, depth_tokens, rgb_from_depth, depth_from_rgb], -1))
        return fused.transpose(1, 2).reshape(batch, self.out_channels, height, width)


@FUSIONS.register("concat")
class ConcatFusion(nn.Module):
    """w/o CMAF: concatenation of the two maps and a linear projection (1x1 convolution)."""

    def __init__(self, rgb_channels: int, depth_channels: int, out_dim: int = 256):
        super().__init__()
        self.missing_rgb = nn.Parameter(torch.randn(rgb_channels) * 0.02)
        self.missing_depth = nn.Parameter(torch.randn(depth_channels) * 0.02)
        self.project = nn.Conv2d(rgb_channels + depth_channels, out_dim, 1)
        self.out_channels = out_dim

    def forward(self, rgb: torch.Tensor | None, depth: torch.Tensor | None) -> torch.Tensor:
        reference = _require_one(rgb, depth)
        batch, _, height, width = reference.shape
        if rgb is None:
            rgb = self.missing_rgb[None, :, None, None].expand(batch, -1, height, width).to(reference.dtype)
        if depth is None:
            depth = self.missing_depth[None, :, None, None].expand(batch, -1, height, width).to(reference.dtype)
        return self.project(torch.cat([rgb, depth], 1))


@FUSIONS.register("mean")
class MeanFusion(nn.Module):
    """ModaLink: one shared encoder already maps both modalities into one space; average what is present."""

    def __init__(self, rgb_channels: int, depth_channels: int):
        super().__init__()
        if rgb_channels != depth_channels:
            raise ValueError(f"mean fusion needs equal channel counts, got {rgb_channels} and {depth_channels}")
        self.out_channels = rgb_channels

    def forward(self, rgb: torch.Tensor | None, depth: torch.Tensor | None) -> torch.Tensor:
        if rgb is None or depth is None:
            return _require_one(rgb, depth)
        return (rgb + depth) / 2
