"""Training inputs of one dataset, prepared exactly as at inference.

Query side: the image, map side: the scan (FoV projection into the virtual query camera; the
model densifies it, as it does at inference), both made into tensors by the `Describer`'s
`FrameTensors`, the same code as at inference. Both are kept in memory at training resolution
after the first load, so epochs after the first cost no decoding. A perturbed cloud
(random rigid motion before projection) needs the raw scan and is re-read from disk.
"""
from __future__ import annotations

import numpy as np
import torch

from cmirl_ros.datasets import Dataset
from cmirl_ros.models.describer import FrameTensors
from cmirl_ros.preprocess import Preprocessing
from cmirl_ros.training.augment import AugmentConfig, augment_image, perturb_cloud


class TrainingFrames:
    def __init__(self, dataset: Dataset, preprocessing: Preprocessing, augment: AugmentConfig, cloud_probability: float):
        if len(dataset) == 0:
            raise ValueError(f"{dataset.name}: the training selection has no frames")
        self.dataset = dataset
        self.tensors = FrameTensors(preprocessing)
        self.augment = augment
        self.cloud_probability = cloud_probability
        self._images: dict[int, torch.Tensor] = {}
        self._depths: dict[int, torch.Tensor] = {}
        self._mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
        self._std = torch.tensor(preprocessing.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def _load(self, i: int):
        frame = self.dataset[i]
        images, depths = self.tensors.frames([frame], True, True, "training", self.dataset.name)
        self._images[i], self._depths[i] = images[0], depths[0]
        return frame

    def image(self, i: int) -> torch.Tensor:
        """(3,H,W) normalised image, as at inference."""
        if i not in self._images:
            self._load(i)
        return self._images[i]

    def depth(self, i: int) -> torch.Tensor:
        """(1,H,W) sparse depth, as at inference."""
        if i not in self._depths:
            self._load(i)
        return self._depths[i]

    def augmented_image(self, i: int, generator: torch.Generator) -> torch.Tensor:
        unit = self.image(i) * self._std + self._mean
        return (augment_image(unit, self.augment, generator) - self._mean) / self._std

    def augmented_depth(self, i: int, rng: np.random.Generator) -> torch.Tensor:
        if rng.random() >= self.cloud_probability:
            return self.depth(i)
        frame = self.dataset[i]
        moved = perturb_cloud(frame.points, frame.calib.T_cam_sensor, self.augment, rng)
        return self.tensors.depth(moved, frame.calib)


class StridedDataset:
    """Every k-th frame of a dataset, with the dataset interface (poses/stamps without loading)."""

    def __init__(self, dataset: Dataset, stride: int):
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.base = dataset
        self.rows = list(range(0, len(dataset), stride))
        self.name = dataset.name
        self.calib = dataset.calib
        self.ground_axes = dataset.ground_axes
        self.frame_convention = dataset.frame_convention
        self.stamps = np.asarray(dataset.stamps)[self.rows]
        self.poses = np.asarray(dataset.poses)[self.rows]
        self.frame_ids = [dataset.frame_ids[r] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.base[self.rows[i]]
