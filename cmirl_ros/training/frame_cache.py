"""On-disk cache of the deterministic part of training inputs, keyed by a hash of what produced them.

Per frame: the cropped and resized image (uint8, normalised on read: bit-identical to
`Preprocessing.image`) and the projected sparse depth of the scan as it is plus `cloud_variants`
copies of the scan moved by a fixed random rigid motion (`perturb_cloud`, seeded by frame and
variant). A training step draws the cloud motion among those variants instead of reading and
projecting the raw scan again.

The key hashes the preprocessing, the cloud-motion settings, the variant count, the frame
selection and the source files' sizes and times: changing any of them makes a new cache
directory. Arrays are written under temporary names and renamed; `meta.json`, written last,
marks a complete cache.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from cmirl_ros.atomic import atomic_write, atomic_write_text
from cmirl_ros.datasets import Dataset
from cmirl_ros.preprocess import Preprocessing
from cmirl_ros.training.augment import AugmentConfig, perturb_cloud
from cmirl_ros.training.data import TrainingFrames

FORMAT = 1
META_FILE = "meta.json"
DEFAULT_CACHE_DIR = Path("out/cache/frames")


def _source_root(dataset) -> Path | None:
    while not hasattr(dataset, "root") and hasattr(dataset, "base"):
        dataset = dataset.base
    root = getattr(dataset, "root", None)
    return None if root is None else Path(root).resolve()


def _file_stamps(dataset) -> list:
    """(name, size, mtime) of the files that change when a sequence is written again."""
    base = dataset
    while hasattr(base, "base"):
        base = base.base
    seq_dir = getattr(base, "seq_dir", None)
    root = _source_root(dataset)
    if seq_dir is not None:  # KITTI layout: sim/render writes these last
        candidates = [Path(seq_dir) / n for n in ("calib.txt", "times.txt", "sim.json")]
        candidates.append(root / "poses" / f"{Path(seq_dir).name}.txt")
    elif root is not None and root.is_dir():
        candidates = sorted(p for p in root.iterdir() if p.is_file())
    else:
        candidates = [root] if root is not None else []
    stamps = []
    for path in candidates:
        if path.is_file():
            st = path.stat()
            stamps.append([path.name, st.st_size, st.st_mtime_ns])
    return stamps


def _describe_source(dataset):
    if hasattr(dataset, "parts"):  # several datasets as one
        return [_describe_source(part) for part in dataset.parts]
    return {"name": dataset.name, "root": str(_source_root(dataset)), "frames": list(map(int, dataset.frame_ids)),
            "files": _file_stamps(dataset)}


def cache_key(dataset: Dataset, preprocessing: Preprocessing, augment: AugmentConfig, variants: int, seed: int) -> str:
    """Hash of everything the cached arrays depend on."""
    description = {
        "format": FORMAT,
        "preprocessing": preprocessing.to_dict(),
        "cloud": {"rotation_deg": augment.cloud_rotation_deg, "translation": augment.cloud_translation,
                  "variants": variants, "seed": seed},
        "dataset": _describe_source(dataset),
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a temporary name
        np.save(f, array)


def _build(directory: Path, dataset: Dataset, pre: Preprocessing, augment: AugmentConfig, variants: int, seed: int,
           progress: bool) -> None:
    from tqdm import tqdm

    n = len(dataset)
    directory.mkdir(parents=True, exist_ok=True)
    images = np.zeros((n, pre.height, pre.width, 3), np.uint8)
    depths = np.zeros((n, 1 + variants, pre.height, pre.width), np.float32)
    for i in tqdm(range(n), desc=f"preprocessing cache {dataset.name}", disable=not progress, leave=False):
        frame = dataset[i]
        if frame.image is None or frame.points is None:
            raise ValueError(f"{dataset.name} frame {frame.name}: training needs both an image and a scan")
        images[i] = pre.resized_image(frame.image)
        depths[i, 0] = pre.sparse_depth(frame.points, frame.calib)[0]
        for v in range(1, variants + 1):
            rng = np.random.default_rng([seed, int(dataset.frame_ids[i]), v])
            moved = perturb_cloud(frame.points, frame.calib.T_cam_sensor, augment, rng)
            depths[i, v] = pre.sparse_depth(moved, frame.calib)[0]
    for name, array in (("images.npy", images), ("depths.npy", depths)):
        atomic_write(directory / name, lambda tmp, a=array: _save_npy(tmp, a))
    atomic_write_text(directory / META_FILE, json.dumps({"format": FORMAT, "frames": n, "variants": variants}) + "\n")


class CachedTrainingFrames(TrainingFrames):
    """`TrainingFrames` read from the preprocessing cache (memory-mapped); built on first use."""

    def __init__(self, dataset: Dataset, preprocessing: Preprocessing, augment: AugmentConfig, cloud_probability: float,
                 cache_dir: Path = DEFAULT_CACHE_DIR, variants: int = 4, seed: int = 0, progress: bool = True):
        super().__init__(dataset, preprocessing, augment, cloud_probability)
        if variants < 1 and cloud_probability > 0:
            raise ValueError(f"cloud_variants must be >= 1 when cloud_probability > 0, got {variants}")
        self.directory = Path(cache_dir) / cache_key(dataset, preprocessing, augment, variants, seed)
        if not (self.directory / META_FILE).is_file():
            _build(self.directory, dataset, preprocessing, augment, variants, seed, progress)
        self._resized = np.load(self.directory / "images.npy", mmap_mode="r")
        self._variants = np.load(self.directory / "depths.npy", mmap_mode="r")
        if len(self._resized) != len(dataset) or self._variants.shape[1] != 1 + variants:
            raise ValueError(f"{self.directory}: cache holds {len(self._resized)} frames x {self._variants.shape[1]} "
                             f"depths, expected {len(dataset)} x {1 + variants}; delete it to rebuild")

    def image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.pre.normalize(np.asarray(self._resized[i])))

    def depth(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._variants[i, :1]))

    def augmented_depth(self, i: int, rng: np.random.Generator) -> torch.Tensor:
        """The scan as it is, or (share `cloud_probability`) one of its cached moved copies."""
        if rng.random() >= self.cloud_probability:
            return self.depth(i)
        variant = int(rng.integers(1, self._variants.shape[1]))
        return torch.from_numpy(np.array(self._variants[i, variant : variant + 1]))

