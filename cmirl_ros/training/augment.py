"""Training augmentations (CMIRL sec. 4.1.2): brightness/contrast and simulated fog, rain and
snow on images; a random rigid motion of the cloud before it is projected.

Image ops work on (3,H,W) float tensors in [0,1] (de-normalised), so they run after the
crop/resize of `Preprocessing` at training resolution and cost little.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cmirl_ros.config import dataclass_from_mapping

WEATHERS = ("fog", "rain", "snow")


@dataclass(frozen=True)
class AugmentConfig:
    brightness: float = 0.3  # additive shift drawn from [-b, b]
    contrast: float = 0.3  # gain drawn from [1-c, 1+c]
    weather_probability: float = 0.3  # chance of one of fog / rain / snow
    cloud_rotation_deg: float = 5.0  # yaw about the camera's vertical axis, drawn from [-r, r]
    cloud_translation: float = 0.5  # metres along the camera's x and z, drawn from [-t, t]

    @classmethod
    def from_config(cls, cfg: dict | None) -> "AugmentConfig":
        return dataclass_from_mapping(cls, cfg or {}, "augment")


def brightness_contrast(image: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    mean = image.mean()
    return ((image - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


def fog(image: torch.Tensor, density: float, airlight: float = 0.8) -> torch.Tensor:
    """Koschmieder haze; rows nearer the top of the image are taken as further away."""
    _, h, _ = image.shape
    far = torch.linspace(1.0, 0.2, h, dtype=image.dtype, device=image.device)[None, :, None]
    transmission = torch.exp(-density * 3.0 * far)
    return image * transmission + airlight * (1.0 - transmission)


def rain(image: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Slanted bright streaks over a slightly darkened image."""
    _, h, w = image.shape
    drops = (torch.rand((1, 1, h, w), generator=generator) < amount * 0.02).to(image.dtype)
    length = max(3, h // 12)
    kernel = torch.zeros((1, 1, length, length), dtype=image.dtype)
    for i in range(length):  # a diagonal line, the direction the rain falls
        kernel[0, 0, i, min(length - 1, i // 2)] = 1.0
    streaks = F.conv2d(drops, kernel, padding=length // 2)[0, :, :h, :w].clamp(0, 1)
    return (image * 0.85 + 0.6 * streaks).clamp(0.0, 1.0)


def snow(image: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """White flakes of a few pixels and a whitened, lower-contrast scene."""
    _, h, w = image.shape
    flakes = (torch.rand((1, 1, h, w), generator=generator) < amount * 0.01).to(image.dtype)
    flakes = F.max_pool2d(flakes, 3, stride=1, padding=1)[0]
    return (image * 0.75 + 0.2 + flakes).clamp(0.0, 1.0)


def augment_image(image: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One random draw of the image augmentations on a (3,H,W) [0,1] tensor."""

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    out = brightness_contrast(
        image, uniform(-cfg.brightness, cfg.brightness), uniform(1 - cfg.contrast, 1 + cfg.contrast)
    )
    if float(torch.rand((), generator=generator)) < cfg.weather_probability:
        weather = WEATHERS[int(torch.randint(len(WEATHERS), (), generator=generator))]
        strength = uniform(0.3, 1.0)
        if weather == "fog":
            out = fog(out, strength)
        elif weather == "rain":
            out = rain(out, strength, generator)
        else:
            out = snow(out, strength, generator)
    return out


def perturb_cloud(
    points: np.ndarray, T_cam_sensor: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Move the cloud by a random yaw + translation expressed in the camera frame, before projection.

    Working in the camera frame keeps "yaw" and "forward" meaningful for any sensor mounting
    (LiDAR z-up, depth camera y-down).
    """
    yaw = math.radians(rng.uniform(-cfg.cloud_rotation_deg, cfg.cloud_rotation_deg))
    c, s = math.cos(yaw), math.sin(yaw)
    motion = np.eye(4)
    motion[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]  # about camera y (vertical)
    motion[0, 3], motion[2, 3] = rng.uniform(-cfg.cloud_translation, cfg.cloud_translation, size=2)
    T = np.linalg.inv(T_cam_sensor) @ motion @ T_cam_sensor
    out = np.array(points, dtype=np.float32, copy=True)
    out[:, :3] = (out[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
    return out
