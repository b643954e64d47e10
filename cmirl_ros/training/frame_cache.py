"""On-disk cache of the deterministic part of training inputs, keyed by a hash of what produced them.

Per frame: the cropped and resized image (uint8, normalised on read: bit-identical to
`Preprocessing.image`) and the projected sparse depth of the scan as it is plus `cloud_variants`
copies of the scan moved by a fixed random rigid motion (`perturb_cloud`, seeded by frame and
variant). A training step draws the cloud motion among those variants instead of reading and
projecting the raw scan again.

The key hashes the preprocessing, the cloud-motion settings, the variant count, the frame
source (its root and the sizes and times of the files a new render rewrites): changing any
of them makes a new cache directory. A frame is one file there, written under a temporary
name and renamed, so a file present is complete and any frame selection reuses the others.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from cmirl_ros.atomic import atomic_write
from cmirl_ros.datasets import Dataset
from cmirl_ros.preprocess import Preprocessing
from cmirl_ros.training.augment import AugmentConfig, perturb_cloud
from cmirl_ros.training.data import TrainingFrames

FORMAT = 2
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


def cache_key(dataset: Dataset, preprocessing: Preprocessing, augment: AugmentConfig, variants: int, seed: int) -> str:
    """Hash of everything a cached frame depends on (one source sequence; frames are files within)."""
    description = {
        "format": FORMAT,
        "preprocessing": preprocessing.to_dict(),
        "cloud": {"rotation_deg": augment.cloud_rotation_deg, "translation": augment.cloud_translation,
                  "variants": variants, "seed": seed},
        "source": {"name": dataset.name, "root": str(_source_root(dataset)), "files": _file_stamps(dataset)},
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _save_npz(path: str, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: numpy would append .npz to a temporary name
        np.savez(f, **arrays)


def _preprocess_frame(frame, frame_id: int, pre: Preprocessing, augment: AugmentConfig, variants: int, seed: int):
    """(resized uint8 image, (1 + variants, H, W) sparse depths: the scan as it is, then moved copies)."""
    depths = np.zeros((1 + variants, pre.height, pre.width), np.float32)
    depths[0] = pre.sparse_depth(frame.points, frame.calib)[0]
    for v in range(1, variants + 1):
        rng = np.random.default_rng([seed, frame_id, v])
        moved = perturb_cloud(frame.points, frame.calib.T_cam_sensor, augment, rng)
        depths[v] = pre.sparse_depth(moved, frame.calib)[0]
    return pre.resized_image(frame.image), depths


def _sources(dataset) -> list[tuple[object, int]]:
    """(source dataset, row in it) of every frame; several datasets as one are cached per source."""
    if hasattr(dataset, "parts"):
        return [(part, row) for part in dataset.parts for row in range(len(part))]
    return [(dataset, row) for row in range(len(dataset))]


class CachedTrainingFrames(TrainingFrames):
    """`TrainingFrames` read from the preprocessing cache: one file per frame, missing ones built first.

    Layout: CACHE_DIR/<key>/NNNNNN.npz (source frame number) with `image` (H,W,3) uint8 and `depths`
    (1 + variants, H, W) float32; each file is written under a temporary name and renamed.
    """

    def __init__(self, dataset: Dataset, preprocessing: Preprocessing, augment: AugmentConfig, cloud_probability: float,
                 cache_dir: Path = DEFAULT_CACHE_DIR, variants: int = 4, seed: int = 0, progress: bool = True):
        super().__init__(dataset, preprocessing, augment, cloud_probability)
        if variants < 1 and cloud_probability > 0:
            raise ValueError(f"cloud_variants must be >= 1 when cloud_probability > 0, got {variants}")
        self.variants, self.seed = variants, seed
        keys: dict[int, Path] = {}
        self.files = []
        for source, row in _sources(dataset):
            if id(source) not in keys:
                keys[id(source)] = Path(cache_dir) / cache_key(source, preprocessing, augment, variants, seed)
            self.files.append((source, row, keys[id(source)] / f"{int(source.frame_ids[row]):06d}.npz"))
        self._build_missing(progress)

    def _build_missing(self, progress: bool) -> None:
        from tqdm import tqdm

        missing = [entry for entry in self.files if not entry[2].is_file()]
        for source, row, path in tqdm(missing, desc=f"preprocessing cache {self.dataset.name}", disable=not progress,
                                      leave=False):
            frame = source[row]
            if frame.image is None or frame.points is None:
                raise ValueError(f"{source.name} frame {frame.name}: training needs both an image and a scan")
            image, depths = _preprocess_frame(frame, int(source.frame_ids[row]), self.tensors.preprocessing, self.augment,
                                              self.variants, self.seed)
            atomic_write(path, lambda tmp: _save_npz(tmp, image=image, depths=depths))

    def _read(self, i: int, name: str) -> np.ndarray:
        with np.load(self.files[i][2]) as data:
            return data[name]

    def image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.tensors.preprocessing.normalize(self._read(i, "image")))

    def depth(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self._read(i, "depths")[:1])

    def augmented_depth(self, i: int, rng: np.random.Generator) -> torch.Tensor:
        """The scan as it is, or (share `cloud_probability`) one of its cached moved copies."""
        if rng.random() >= self.cloud_probability:
            return self.depth(i)
        variant = int(rng.integers(1, self.variants + 1))
        return torch.from_numpy(self._read(i, "depths")[variant : variant + 1])
