"""Sparse projected depth -> dense depth in the image's view: ACMA (CMIRL) or rigid FoV + classical completion.

ACMA (eq. 1-4), as built here (the seed leaves the details open, see docs/models.md):
- A_attention (eq. 1): a small CNN on the image, attention-pooled to one vector, predicts
  dT = (tx, ty, roll, log_scale), each bounded by tanh; a similarity warp of the image plane
  (shift ~ small yaw/pitch, roll, zoom ~ forward motion) that re-aims the projected view.
- T (eq. 2): the sparse depth and its validity mask are resampled together with grid_sample, so
  dT receives gradients; the pair (depth x weight, weight) keeps warped samples exact.
- DIF (eq. 3): normalised-convolution interpolation over an average-pool pyramid, coarse to fine,
  with a learned per-level confidence gain, then an image-guided residual correction (a small
  CNN on image + depth + confidence). Without an image (map keyframes) dT is the identity and
  only the interpolation runs.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmirl_ros.registry import Registry

ALIGNMENTS: Registry[type[nn.Module]] = Registry("alignment")
_EPS = 1e-6


def normalize_depth(depth: torch.Tensor, max_depth: float, channels: int) -> torch.Tensor:
    """Metres -> [0, 1] by the sensor's max range (0 stays 'no depth'), repeated to `channels`."""
    scaled = (depth / max_depth).clamp(0.0, 1.0)
    return scaled.expand(-1, channels, -1, -1) if channels != 1 else scaled


class ViewAdjustment(nn.Module):
    """A_attention (eq. 1): image -> bounded dT = (tx, ty, roll, log_scale)."""

    def __init__(self, channels: int = 32, max_shift: float = 0.1, max_roll_deg: float = 5.0, max_log_scale: float = 0.1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels // 2, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.attention = nn.Conv2d(channels, 1, 1)
        self.head = nn.Linear(channels, 4)
        # Near-identity at the start: training moves the view only where that helps the loss.
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        bounds = [max_shift, max_shift, math.radians(max_roll_deg), max_log_scale]
        self.register_buffer("bounds", torch.tensor(bounds, dtype=torch.float32), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.features(F.avg_pool2d(image, 2))  # a global view estimate needs no full resolution
        weights = torch.softmax(self.attention(features).flatten(2), dim=-1)
        pooled = (features.flatten(2) * weights).sum(-1)
        return torch.tanh(self.head(pooled)) * self.bounds


def warp_sparse(depth: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """T (eq. 2): similarity warp of sparse depth -> (depth x weight, weight), both (B,1,H,W)."""
    height, width = depth.shape[-2:]
    aspect = width / height
    tx, ty, roll, log_scale = delta.float().unbind(-1)
    scale = torch.exp(log_scale)
    cos, sin = scale * torch.cos(roll), scale * torch.sin(roll)
    # A rotation in pixels, written in grid_sample's [-1, 1] coordinates of a W x H image.
    theta = torch.stack(
        [torch.stack([cos, -sin / aspect, tx], -1), torch.stack([sin * aspect, cos, ty], -1)], dim=1
    )
    grid = F.affine_grid(theta, [depth.shape[0], 2, height, width], align_corners=False)
    mask = (depth > 0).float()
    warped = F.grid_sample(torch.cat([depth.float() * mask, mask], 1), grid, mode="bilinear", align_corners=False)
    return warped[:, :1], warped[:, 1:]


class GuidedCompletion(nn.Module):
    """DIF (eq. 3): normalised-convolution pyramid interpolation, then an image-guided residual."""

    def __init__(self, max_depth: float, levels: int = 5, channels: int = 16, max_correction: float = 0.1):
        super().__init__()
        if levels < 1:
            raise ValueError(f"ACMA needs at least one interpolation level, got {levels}")
        self.max_depth = max_depth
        self.max_correction = max_correction
        self.log_gain = nn.Parameter(torch.zeros(levels))
        self.refine = nn.Sequential(
            nn.Conv2d(3 + 2, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 1, 3, padding=1),
        )
        nn.init.normal_(self.refine[-1].weight, std=1e-3)
        nn.init.zeros_(self.refine[-1].bias)

    def interpolate(self, weighted: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(depth x weight, weight) -> (filled depth, support in [0, 1]); empty where no level has data."""
        pair = torch.cat([weighted, weight], 1)
        pyramid = [(weighted, weight)]
        for _ in range(len(self.log_gain) - 1):
            pair = F.avg_pool2d(pair, 2, ceil_mode=True)
            pyramid.append((pair[:, :1], pair[:, 1:]))
        gains = torch.exp(self.log_gain) * 4.0
        filled, support = None, None
        for level in range(len(pyramid) - 1, -1, -1):
            weighted, weight = pyramid[level]
            local = weighted / weight.clamp_min(_EPS)
            # Trust this level's own average where it saw enough samples, else the coarser estimate.
            confidence = 1.0 - torch.exp(-gains[level] * weight)
            if filled is None:
                filled, support = local, confidence
                continue
            size = weight.shape[-2:]
            up_weighted = F.interpolate(filled * support, size=size, mode="bilinear", align_corners=False)
            up_support = F.interpolate(support, size=size, mode="bilinear", align_corners=False)
            coarse = up_weighted / up_support.clamp_min(_EPS)
            filled = confidence * local + (1.0 - confidence) * coarse
            support = (confidence + up_support).clamp(max=1.0)
        return filled, support

    def forward(self, weighted: torch.Tensor, weight: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        filled, support = self.interpolate(weighted, weight)
        if image is None:
            return filled
        # The image-guided correction runs at half resolution: edges need it, speed needs this.
        guide = torch.cat([image.float(), filled / self.max_depth, support], 1)
        correction = self.refine(F.avg_pool2d(guide, 2, ceil_mode=True))
        correction = F.interpolate(correction, size=filled.shape[-2:], mode="bilinear", align_corners=False)
        corrected = filled + torch.tanh(correction) * (self.max_correction * self.max_depth)
        return corrected.clamp(0.0, self.max_depth) * (support > 0).float()


@ALIGNMENTS.register("acma")
class ACMA(nn.Module):
    """F_ACMA (eq. 4): (sparse depth, image | None) -> dense depth in metres."""

    def __init__(
        self,
        max_depth: float,
        attention_channels: int = 32,
        max_shift: float = 0.1,
        max_roll_deg: float = 5.0,
        max_log_scale: float = 0.1,
        levels: int = 5,
        refine_channels: int = 16,
        max_correction: float = 0.1,
    ):
        super().__init__()
        self.view = ViewAdjustment(attention_channels, max_shift, max_roll_deg, max_log_scale)
        self.completion = GuidedCompletion(max_depth, levels, refine_channels, max_correction)

    def forward(self, depth: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        if image is None:
            mask = (depth > 0).float()
            return self.completion(depth.float() * mask, mask, None)
        weighted, weight = warp_sparse(depth, self.view(image))
        return self.completion(weighted, weight, image)


@ALIGNMENTS.register("rigid")
class RigidAlignment(nn.Module):
    """w/o ACMA: the rigid FoV projection as given, completed by classical IP-Basic per sample on the CPU."""

    def __init__(self, max_depth: float, **densify_options):
        super().__init__()
        from cmirl_ros.geometry import DensifyConfig

        try:
            self.densify_config = DensifyConfig(**{"max_depth": max_depth, **densify_options})
        except TypeError as e:
            raise ValueError(f"rigid alignment: bad densify option: {e}") from None

    def forward(self, depth: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        from cmirl_ros.geometry import densify

        sparse = depth.detach().float().cpu().numpy()
        dense = np.stack([densify(sample[0], self.densify_config)[0] for sample in sparse])[:, None]
        return torch.from_numpy(dense).to(depth.device)
