"""Input preprocessing shared by training, map building and the node.

Image and depth must see exactly the same view: the image is cropped at the top and
resized, and the scan is projected straight into the matching *virtual camera*
(intrinsics after the same crop and resize), so pixel (u, v) of both is one ray.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from cmirl_ros.config import dataclass_from_mapping
from cmirl_ros.geometry import Calibration, PinholeCamera, ProjectionStats, project_to_depth

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """`crop_top` is the fraction of image rows removed from the top (sky, above the LiDAR's FoV)."""

    height: int = 128
    width: int = 800
    crop_top: float = 0.47
    max_depth: float = 80.0
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)

    def __post_init__(self):
        if not 0.0 <= self.crop_top < 1.0:
            raise ValueError(f"crop_top must be a fraction in [0, 1), got {self.crop_top}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"input size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        return dataclass_from_mapping(cls, data, "preprocessing")

    def crop_rows(self, image_height: int) -> int:
        return int(round(self.crop_top * image_height))

    def virtual_camera(self, camera: PinholeCamera) -> PinholeCamera:
        return camera.cropped(top=self.crop_rows(camera.height)).resized(self.width, self.height)

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """(H0,W0,3) uint8 RGB -> (3,H,W) float32, normalised."""
        return self.normalize(self.resized_image(rgb))

    def resized_image(self, rgb: np.ndarray) -> np.ndarray:
        """(H0,W0,3) uint8 RGB -> (H,W,3) uint8, cropped and resized (what a preprocessing cache keeps)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H,W,3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        cropped = rgb[self.crop_rows(rgb.shape[0]) :]
        return cv2.resize(cropped, (self.width, self.height), interpolation=cv2.INTER_AREA)

    def normalize(self, resized: np.ndarray) -> np.ndarray:
        """(H,W,3) uint8 at the model's size -> (3,H,W) float32, normalised."""
        x = resized.astype(np.float32) * (1.0 / 255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def sparse_depth(self, points: np.ndarray, calib: Calibration, stats: ProjectionStats | None = None) -> np.ndarray:
        """Scan in the range-sensor frame -> (1,H,W) float32 sparse depth (metres, 0 = empty) in the virtual camera."""
        depth = project_to_depth(points, calib.T_cam_sensor, self.virtual_camera(calib.camera), stats)
        depth[depth > self.max_depth] = 0.0
        return depth[None]
