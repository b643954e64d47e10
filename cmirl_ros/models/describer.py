"""The one path from a frame to a descriptor: frame -> model tensors -> descriptor [+ local tokens].

`FrameTensors` is the model-free half (preprocessing into the model's input layout, also used by
training); `Describer` adds batched inference with the same numerics everywhere: inference mode,
eval mode, fp16 autocast on CUDA and fp32 on CPU. The localizer, `map build`, `eval` and training
all take their inputs from here, so a map descriptor and a query descriptor are computed alike.

Query side: the image through `Preprocessing.image`; a live scan, with its calibration, projected
into the same virtual camera (`Preprocessing.sparse_depth`). Map side: the scan alone.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from cmirl_ros.preprocess import Preprocessing

ArrayBatch = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]
_PROGRESS_MIN_BATCHES = 8


class FrameTensors:
    """Frames -> (C,H,W) float32 tensors in the model's input layout."""

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing

    def image(self, rgb: np.ndarray) -> torch.Tensor:
        """(H0,W0,3) uint8 RGB -> (3,H,W), normalised."""
        return torch.from_numpy(self.preprocessing.image(rgb))

    def depth(self, points: np.ndarray, calib) -> torch.Tensor:
        """Scan (N,3+) in the range-sensor frame -> (1,H,W) sparse depth in the virtual camera."""
        if calib is None:
            raise ValueError("a scan needs the calibration that projects it into the camera")
        return torch.from_numpy(self.preprocessing.sparse_depth(points, calib))

    def frames(self, frames, use_image: bool, use_scan: bool, purpose: str, dataset: str = ""):
        """(images (B,3,H,W) or None, depths (B,1,H,W) or None) of dataset frames; a frame that lacks
        an input `purpose` needs is an error naming the dataset and the frame."""
        for frame in frames:
            for used, value, what in ((use_image, frame.image, "an image"), (use_scan, frame.points, "a scan")):
                if used and value is None:
                    raise ValueError(f"{dataset} frame {frame.name}: {purpose} needs {what} for every frame")
        images = torch.stack([self.image(f.image) for f in frames]) if use_image else None
        depths = torch.stack([self.depth(f.points, f.calib) for f in frames]) if use_scan else None
        return images, depths


@dataclass
class Description:
    descriptors: np.ndarray  # (N, D) float32, L2-normalised
    tokens: np.ndarray | None = None  # (N, T, C) float16 pooled local tokens, when asked for


def autocast_for(device: torch.device):
    """fp16 autocast on CUDA; nothing on CPU (fp32 is faster there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


class Describer:
    """A model's descriptors (and optionally its pooled local tokens, for re-ranking)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.tensors = FrameTensors(model.preprocessing)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def inputs(self, image: np.ndarray | None = None, points: np.ndarray | None = None, calib=None):
        """One query's (image (1,3,H,W) or None, depth (1,1,H,W) or None)."""
        if image is None and points is None:
            raise ValueError("a query needs an image, a scan, or both")
        return (None if image is None else self.tensors.image(image)[None],
                None if points is None else self.tensors.depth(points, calib)[None])

    def frames(self, frames, use_image: bool = True, use_scan: bool = False, purpose: str = "describing",
               dataset: str = "", tokens_grid: tuple[int, int] | None = None) -> Description:
        """Descriptors of a batch of dataset frames (image, scan or both)."""
        images, depths = self.tensors.frames(frames, use_image, use_scan, purpose, dataset)
        return self.describe(images, depths, batch_size=max(1, len(frames)), progress=False, tokens_grid=tokens_grid)

    def describe(self, images: ArrayBatch | None = None, depths: ArrayBatch | None = None, batch_size: int = 16,
                 progress: bool | None = None, tokens_grid: tuple[int, int] | None = None,
                 prefix=None) -> Description:
        """N images and/or N sparse depth maps in model input layout -> N descriptors [+ tokens].

        `prefix` (a `TrunkPrefix` of N rows, instead of images and depths): what the model's frozen part
        made of them (training's feature cache); the rest of the model runs as for inputs."""
        if prefix is not None:
            if images is not None or depths is not None:
                raise ValueError("describe takes inputs or their trunk prefix, not both")
            image_batch, depth_batch = prefix
        else:
            image_batch, depth_batch = _as_tensor(images, "images"), _as_tensor(depths, "depths")
        count = _count(image_batch, depth_batch)
        model, device = self.model, self.device
        name = getattr(model, "name", type(model).__name__)
        batches = range(0, count, batch_size)
        show = len(batches) >= _PROGRESS_MIN_BATCHES if progress is None else progress
        out = np.empty((count, model.descriptor_dim), np.float32)
        tokens = []
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), autocast_for(device), _token_capture(model, tokens_grid) as features:
                for start in tqdm(batches, desc=f"describe ({name})", unit="batch", disable=not show):
                    chunk = slice(start, start + batch_size)
                    image = image_batch[chunk].to(device) if image_batch is not None else None
                    depth = depth_batch[chunk].to(device) if depth_batch is not None else None
                    if prefix is not None:
                        descriptors = model(prefix=type(prefix)(image, depth))
                    else:
                        descriptors = model(image=image, depth=depth)
                    out[chunk] = descriptors.float().cpu().numpy()
                    if tokens_grid:
                        tokens.append(_pooled(features, tokens_grid))
        finally:
            model.train(was_training)
        return Description(out, np.concatenate(tokens) if tokens_grid and tokens else None)


def describe(model: torch.nn.Module, images: ArrayBatch | None = None, depths: ArrayBatch | None = None,
             batch_size: int = 16, progress: bool | None = None) -> np.ndarray:
    """Descriptors (N, D) float32 for N images and/or N sparse depth maps, in model input layout."""
    return Describer(model).describe(images, depths, batch_size, progress).descriptors


def _as_tensor(items: ArrayBatch | None, what: str) -> torch.Tensor | None:
    if items is None:
        return None
    if isinstance(items, (np.ndarray, torch.Tensor)):
        tensor = torch.as_tensor(items)
    else:
        tensor = torch.stack([torch.as_tensor(item) for item in items])
    if tensor.ndim != 4:
        raise ValueError(f"{what}: expected (N,C,H,W) or a list of (C,H,W), got shape {tuple(tensor.shape)}")
    return tensor.float()


def _count(image_batch, depth_batch) -> int:
    present = [t for t in (image_batch, depth_batch) if t is not None]
    if not present:
        raise ValueError("describe needs images, depths, or both")
    if any(t.shape[0] != present[0].shape[0] for t in present):
        raise ValueError(f"describe got {image_batch.shape[0]} images but {depth_batch.shape[0]} depth maps")
    return present[0].shape[0]


@contextlib.contextmanager
def _token_capture(model, tokens_grid):
    if not tokens_grid:
        yield None
        return
    from cmirl_ros.mapdb.tokens import capture_local_features

    with capture_local_features(model) as features:
        yield features


def _pooled(features: list, grid: tuple[int, int]) -> np.ndarray:
    from cmirl_ros.mapdb.tokens import pool_tokens

    pooled = pool_tokens(features[-1], tuple(grid))
    features.clear()
    return pooled
