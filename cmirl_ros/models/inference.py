"""Device choice and batched descriptor computation (inference mode, fp16 autocast on CUDA)."""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

ArrayBatch = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]
_PROGRESS_MIN_BATCHES = 8


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device '{name}' (use auto, cpu or cuda[:N])") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available here")
    return device


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


def autocast_for(device: torch.device):
    """fp16 autocast on CUDA; nothing on CPU (fp32 is faster there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def describe(model: torch.nn.Module, images: ArrayBatch | None = None, depths: ArrayBatch | None = None,
             batch_size: int = 16, progress: bool | None = None) -> np.ndarray:
    """Descriptors (N, D) float32 for N images and/or N sparse depth maps, in model input layout."""
    image_batch, depth_batch = _as_tensor(images, "images"), _as_tensor(depths, "depths")
    present = [t for t in (image_batch, depth_batch) if t is not None]
    if not present:
        raise ValueError("describe needs images, depths, or both")
    count = present[0].shape[0]
    if any(t.shape[0] != count for t in present):
        raise ValueError(f"describe got {image_batch.shape[0]} images but {depth_batch.shape[0]} depth maps")
    device = next(model.parameters()).device
    batches = range(0, count, batch_size)
    show = len(batches) >= _PROGRESS_MIN_BATCHES if progress is None else progress
    out = np.empty((count, model.descriptor_dim), np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast_for(device):
            for start in tqdm(batches, desc=f"describe ({model.name})", unit="batch", disable=not show):
                chunk = slice(start, start + batch_size)
                image = image_batch[chunk].to(device) if image_batch is not None else None
                depth = depth_batch[chunk].to(device) if depth_batch is not None else None
                out[chunk] = model(image=image, depth=depth).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out
