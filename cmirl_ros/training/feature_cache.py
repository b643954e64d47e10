"""Cached outputs of a model's frozen part (`freeze_stages`), for a fixed set of augmentation variants per frame.

With the trunks' stem + first K blocks frozen (and the depth alignment, which then receives no
gradient), what they make of a frame's inputs never changes during training: it is computed
once per frame and variant (`PlaceModel.trunk_prefix`, the same code as a live forward) and a
step runs only the trained blocks and the heads. Like `cloud_variants` for scans, the image
augmentation is drawn among `image_variants` fixed draws per frame instead of a fresh one.

One file per frame, (rows, C, h, w) float32, rows:
  image        0 = the image as it is, 1..V = V photometric/weather draws (seeded by frame, variant)
  image+depth  V+1 rows: the depth side of an image+depth anchor (the alignment sees the image):
               the scan, or one of its cached moved copies, aligned with image row v
  depth        1 + C rows: the scan and its C cached moved copies, depth only (the map side)

Directory: next to the frame cache, <frame cache dir>/features-<key>/NNNNNN.npy; the key hashes
the frozen weights (so another initialisation or K makes a new cache), the variant counts, the
image augmentation, `cloud_probability` and the seed; the frame cache's own key covers the
preprocessing, the cloud motion and the source. Files are written atomically.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from cmirl_ros.atomic import atomic_write
from cmirl_ros.models.place_model import TrunkPrefix
from cmirl_ros.training.frame_cache import CachedTrainingFrames

FORMAT = 1


def frozen_state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every weight and buffer the frozen part's output depends on."""
    from cmirl_ros.models.backbones import Backbone

    state = []
    for name, trunk in model.named_modules():
        if isinstance(trunk, Backbone):
            for index, module in enumerate(trunk.frozen_modules()):
                state += [(f"{name}.frozen{index}.{key}", value) for key, value in module.state_dict().items()]
    alignment = getattr(model, "alignment", None)
    if alignment is not None:
        state += [(f"alignment.{key}", value) for key, value in alignment.state_dict().items()]
    return state


def feature_key(model: nn.Module, frames: CachedTrainingFrames, image_variants: int, depth_variants: int,
                seed: int) -> str:
    """Hash of what the cached prefixes depend on beyond the frame cache's key."""
    from cmirl_ros.models.backbones import Backbone

    digest = hashlib.sha256()
    description = {
        "format": FORMAT,
        "frozen_blocks": [m.frozen_blocks for m in model.modules() if isinstance(m, Backbone)],
        "depth_channels": getattr(model, "depth_channels", None),
        "image_variants": image_variants, "depth_variants": depth_variants, "seed": seed,
        "augment": asdict(frames.augment), "cloud_probability": frames.cloud_probability,
    }
    digest.update(json.dumps(description, sort_keys=True).encode())
    for name, tensor in frozen_state(model):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _seeded_generator(*seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng(list(seed)).integers(2**62)))


class FeatureCache:
    """The frozen part's outputs for every frame of a `CachedTrainingFrames` (missing files built first)."""

    def __init__(self, frames: CachedTrainingFrames, model: nn.Module, image_variants: int, depth_variants: int,
                 seed: int = 0, progress: bool = True):
        if depth_variants > frames.variants:
            raise ValueError(f"feature cache: {depth_variants} moved scans asked, the frame cache has {frames.variants}")
        self.frames, self.model = frames, model
        self.image_variants, self.depth_variants, self.seed = image_variants, depth_variants, seed
        key = feature_key(model, frames, image_variants, depth_variants, seed)
        self.paths = [path.parent / f"features-{key}" / f"{path.stem}.npy" for _, _, path in frames.files]
        self._build_missing(progress)

    def __len__(self) -> int:
        return len(self.paths)

    # Row layout of a frame's file.
    def image_row(self, variant: int) -> int:
        return variant

    def fused_row(self, variant: int) -> int:
        return self.image_variants + 1 + variant

    def depth_row(self, variant: int) -> int:
        return 2 * (self.image_variants + 1) + variant

    def _fused_depth_variant(self, frame_id: int, variant: int) -> int:
        """The scan copy an image+depth anchor's image variant comes with (0 for the image as it is)."""
        if variant == 0 or self.depth_variants == 0:
            return 0
        rng = np.random.default_rng([self.seed, frame_id, 1, variant])
        moved = rng.random() < self.frames.cloud_probability
        return int(rng.integers(1, self.depth_variants + 1)) if moved else 0

    @torch.no_grad()
    def frame_rows(self, i: int) -> np.ndarray:
        """All rows of frame i, computed with the model's frozen part."""
        frames, frame_id = self.frames, int(self.frames.files[i][0].frame_ids[self.frames.files[i][1]])
        images = [frames.image(i)] + [frames.augmented_image(i, _seeded_generator(self.seed, frame_id, 0, v))
                                      for v in range(1, self.image_variants + 1)]
        depths = torch.from_numpy(frames._read(i, "depths")[: self.depth_variants + 1, None])
        fused_depths = depths[[self._fused_depth_variant(frame_id, v) for v in range(self.image_variants + 1)]]
        device = next(self.model.parameters()).device
        image_prefix, fused_prefix = self.model.trunk_prefix(torch.stack(images).to(device), fused_depths.to(device))
        depth_prefix = self.model.trunk_prefix(depth=depths.to(device)).depth
        return torch.cat([image_prefix, fused_prefix, depth_prefix]).float().cpu().numpy()

    def _build_missing(self, progress: bool) -> None:
        from tqdm import tqdm

        missing = [i for i, path in enumerate(self.paths) if not path.is_file()]
        for i in tqdm(missing, desc=f"feature cache {self.frames.dataset.name}", disable=not progress, leave=False):
            rows = self.frame_rows(i)
            atomic_write(self.paths[i], lambda tmp, rows=rows: _save_npy(tmp, rows))

    def _rows(self, ids, rows) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.load(self.paths[i], mmap_mode="r")[r] for i, r in zip(ids, rows)]))

    # What a step and the descriptor cache read.
    def clean(self, ids, modality: str) -> TrunkPrefix:
        """Prefixes of the frames as they are: images (`image`) or scans (`depth`), for the descriptor cache."""
        if modality == "image":
            return TrunkPrefix(self._rows(ids, [self.image_row(0)] * len(ids)), None)
        return TrunkPrefix(None, self._rows(ids, [self.depth_row(0)] * len(ids)))

    def scans(self, ids, rng: np.random.Generator) -> TrunkPrefix:
        """Depth-only prefixes: the scan, or (share `cloud_probability`) one of its moved copies."""
        return TrunkPrefix(None, self._rows(ids, [self.depth_row(self._draw_scan(rng)) for _ in ids]))

    def anchors(self, ids, modality: str, rng: np.random.Generator) -> TrunkPrefix:
        """Query-side prefixes of `modality`: image variants drawn among the cached augmentations."""
        if modality == "depth":
            return self.scans(ids, rng)
        variants = rng.integers(1, self.image_variants + 1, size=len(ids)) if self.image_variants else [0] * len(ids)
        image = self._rows(ids, [self.image_row(v) for v in variants])
        depth = self._rows(ids, [self.fused_row(v) for v in variants]) if "depth" in modality else None
        return TrunkPrefix(image, depth)

    def _draw_scan(self, rng: np.random.Generator) -> int:
        if self.depth_variants == 0 or rng.random() >= self.frames.cloud_probability:
            return 0
        return int(rng.integers(1, self.depth_variants + 1))


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: numpy would append .npy to a temporary name
        np.save(f, array)
