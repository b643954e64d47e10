"""The training loop: hard-aware lazy triplet loss with modality dropout.

One step: B anchors (query side: image, image+depth or depth, drawn per step so that
every subset lands in one descriptor space), one positive scan per anchor (map side:
depth only, as the map is built), and negatives = the other anchors' positives that are
negatives of this anchor (batch mining) + the H hardest negatives of the descriptor
cache (every training frame's image and scan descriptors, refreshed each epoch), which enter
the loss as their cached descriptors (`memory_negatives`) or encoded again with gradients.
A validation split, when given, is evaluated periodically and its best step kept as OUT/best.

Runs on one process or under `torchrun` (DistributedDataParallel, env:// rendezvous);
AMP on CUDA; checkpoints are atomic and hold everything needed to resume.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cmirl_ros.atomic import atomic_write, atomic_write_text
from cmirl_ros.config import dataclass_from_mapping
from cmirl_ros.evaluation.metrics import evaluate_retrieval
from cmirl_ros.geometry.poses import place_matches, time_exclusion
from cmirl_ros.models.describer import Describer
from cmirl_ros.training.data import TrainingFrames
from cmirl_ros.training.loss import DISTANCES, distances, hardest_negatives, lazy_triplet_loss
from cmirl_ros.training.pairs import PairRule, dataset_relations

MODALITIES = ("image", "depth", "image+depth")
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.csv"
BEST_DIR = "best"  # the model of the step with the highest validation Recall@1 (shipped layout)
BEST_FILE = "best.json"
LOG_FIELDS = ("step", "epoch", "loss", "active", "lr", "modality", "cache_recall@1", "val_recall@1",
              "val_revisit_recall@1", "seconds")


@dataclass(frozen=True)
class ValidationProtocol:
    """How the validation split is scored (config `validation_protocol:`). The default, its images against
    its own scans with the pair rule's positives, saturates indoors (a small scene, the query's own scan in
    the map); the indoor evaluation ranks against the whole sequence's scans and counts revisits too."""

    radius: float | None = None  # a correct match (m); None: the pair rule's positive_distance
    angle_deg: float | None = None  # ... and view angle; None: the pair rule's positive_angle_deg
    with_training_map: bool = False  # the training frames' scans join the map (one world only)
    exclude_seconds: float = 0.0  # > 0: the revisit protocol too, and the best step is chosen by the mean of both

    @classmethod
    def from_config(cls, cfg: dict | None) -> "ValidationProtocol":
        return dataclass_from_mapping(cls, cfg or {}, "validation_protocol")


@dataclass
class TrainSettings:
    """The `train:` / `loss:` / `optim:` part of a training config (config/train/*.yaml)."""

    batch_size: int = 8
    max_steps: int = 1000
    steps_per_epoch: int = 100
    seed: int = 0
    margin: float = 0.5
    distance: str = "squared"  # triplet distance: squared (PointNetVLAD) | euclidean (no collapsed stationary point)
    cache_negatives: int = 2  # hardest negatives per anchor taken from the descriptor cache
    mining_warmup_steps: int = 0  # before this step the cache negatives are random ones (hardest-first can collapse)
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.0
    amp: bool = True  # only takes effect on CUDA
    freeze_batchnorm: bool = True  # small batches: keep the pretrained BN statistics
    cloud_probability: float = 0.5  # share of scans moved by a random rigid motion
    checkpoint_every: int = 100
    cache_batch_size: int = 16
    init_centroids: int = 32  # frames whose features seed NetVLAD by k-means at step 0 (0 = off)
    # Modality subsets whose fused features seed NetVLAD (None: image+depth only). CMIRL's depth-only map
    # side and image-only queries fall outside centres fitted on image+depth features alone.
    centroid_modalities: list | None = None
    trunk_lr_scale: float = 1.0  # lr of the pretrained encoder = lr * this (the fresh heads get lr)
    modality_weights: dict = field(default_factory=lambda: {"image": 0.5, "depth": 0.1, "image+depth": 0.4})
    # Engine (docs/training.md, "Speed"): cache negatives come from the descriptor cache, detached, instead of
    # being encoded again with gradients (a cross-batch memory: half the map-side passes of a step).
    memory_negatives: bool = True
    freeze_stages: int = 0  # trunk stem + this many blocks frozen (run without autograd); 0 = all trained
    # With freeze_stages and frame_cache: the frozen part's outputs computed once per frame and variant
    # (cmirl_ros/training/feature_cache.py); a step runs only the trained blocks and the heads.
    feature_cache: bool = True
    image_variants: int = 4  # cached image augmentations per frame the feature cache draws from
    accumulate_steps: int = 1  # micro-batches of batch_size per optimizer step
    fused_optimizer: bool = True  # Adam's fused kernel
    frame_cache: bool = True  # preprocessed frames on disk (cmirl_ros/training/frame_cache.py)
    cloud_variants: int = 4  # cached moved copies of each scan the cloud motion is drawn from
    validate_every: int = 0  # steps between validation passes (0: steps_per_epoch)

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainSettings":
        merged = {**cfg.get("train", {}), **cfg.get("loss", {}), **cfg.get("optim", {})}
        settings = dataclass_from_mapping(cls, merged, "training config (train/loss/optim)")
        bad = set(settings.modality_weights) - set(MODALITIES)
        if bad or not settings.modality_weights:
            raise ValueError(f"modality_weights: keys must be among {MODALITIES}, got {sorted(settings.modality_weights)}")
        if settings.centroid_modalities is not None and (
                not settings.centroid_modalities or set(settings.centroid_modalities) - set(MODALITIES)):
            raise ValueError(f"centroid_modalities: must be a non-empty list among {MODALITIES}, "
                             f"got {settings.centroid_modalities}")
        if settings.distance not in DISTANCES:
            raise ValueError(f"loss.distance: one of {', '.join(DISTANCES)}, got '{settings.distance}'")
        if settings.trunk_lr_scale <= 0:
            raise ValueError(f"trunk_lr_scale must be > 0, got {settings.trunk_lr_scale}")
        if settings.accumulate_steps < 1 or settings.freeze_stages < 0 or settings.validate_every < 0:
            raise ValueError("accumulate_steps must be >= 1, freeze_stages and validate_every >= 0")
        if settings.image_variants < 1:
            raise ValueError(f"image_variants must be >= 1, got {settings.image_variants}")
        return settings


class PhaseTimer:
    """Wall and CPU (all threads) seconds per phase of training: the `cmirl bench train` breakdown."""

    def __init__(self):
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[phase] += time.perf_counter() - wall
            self.cpu[phase] += time.process_time() - cpu


def freeze_trunk_stages(model: nn.Module, count: int) -> None:
    """Freeze the stem and the first `count` blocks of every trunk of the model, and the depth alignment
    in front of the depth trunk (behind a frozen block it would receive no gradient anyway)."""
    from cmirl_ros.models.backbones import Backbone

    trunks = [m for m in model.modules() if isinstance(m, Backbone)]
    if count and not trunks:
        raise ValueError("freeze_stages: the model has no trunk to freeze")
    for trunk in trunks:
        trunk.freeze_blocks(count)
    if count and getattr(model, "alignment", None) is not None:
        model.alignment.requires_grad_(False)


class TripletForward(nn.Module):
    """Both forwards of a step in one module call, so DistributedDataParallel sees one forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, anchor_image, anchor_depth, map_depth, anchor_prefix=None, map_prefix=None):
        """From the inputs, or (feature cache) from their `TrunkPrefix`es."""
        if anchor_prefix is not None:
            return self.model(prefix=anchor_prefix), self.model(prefix=map_prefix)
        return self.model(image=anchor_image, depth=anchor_depth), self.model(depth=map_depth)


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistEnv:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _set_train_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    model.train()
    if freeze_batchnorm:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class Trainer:
    def __init__(self, model, frames: TrainingFrames, rule: PairRule, settings: TrainSettings, out_dir: Path,
                 device: torch.device, save_model, env: DistEnv | None = None,
                 validation: TrainingFrames | None = None, progress: bool = True,
                 validation_protocol: ValidationProtocol | None = None):
        self.model = model.to(device)
        self.frames = frames
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.device = device
        self.save_model = save_model  # callable(model, directory): the shipped-model layout
        self.env = env or DistEnv()
        self.timer = PhaseTimer()
        self.positives, self.negatives = dataset_relations(frames.dataset, rule)
        np.fill_diagonal(self.negatives, False)
        self.validation = validation
        self.val_protocol = validation_protocol or ValidationProtocol()
        if validation is not None:
            self.val_positives, self.val_excluded = self._validation_truth(rule)
        self.val_recall = self.val_revisit = float("nan")
        self.best_val = -math.inf
        if settings.freeze_stages:
            freeze_trunk_stages(self.model, settings.freeze_stages)
        progress = progress and self.env.is_main
        self.features = self._feature_cache(frames, settings.image_variants, settings.cloud_variants, progress)
        self.val_features = None if validation is None else self._feature_cache(validation, 0, 0, progress)
        self.eligible = np.flatnonzero(self.positives.any(1) & self.negatives.any(1))
        if len(self.eligible) == 0:
            raise ValueError(
                f"{frames.dataset.name}: no frame has both a positive (< {rule.positive_distance}) and a negative "
                f"(> {rule.negative_distance}); widen the frame range or change the pair thresholds"
            )
        self.optimizer = torch.optim.Adam(self._param_groups(), lr=settings.lr, weight_decay=settings.weight_decay,
                                          fused=settings.fused_optimizer or None)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, settings.max_steps), eta_min=settings.min_lr
        )
        self.use_amp = settings.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        seed = settings.seed + 1000 * self.env.rank
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.cache_query: np.ndarray | None = None
        self.cache_map: np.ndarray | None = None
        self.cache_recall = float("nan")
        if settings.init_centroids > 0 and hasattr(self.model, "init_centroids"):
            self._init_centroids(settings.init_centroids)
        self.net = TripletForward(self.model)
        if self.env.world > 1:  # DDP broadcasts rank 0's initial weights to every rank
            ids = [self.env.local_rank] if device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids, find_unused_parameters=True)

    def _feature_cache(self, frames: TrainingFrames, image_variants: int, depth_variants: int, progress: bool):
        """The frozen part's outputs of every frame, when stages are frozen and frames come from the frame cache."""
        from cmirl_ros.training.feature_cache import FeatureCache
        from cmirl_ros.training.frame_cache import CachedTrainingFrames

        s = self.settings
        if not (s.feature_cache and s.freeze_stages and isinstance(frames, CachedTrainingFrames)):
            return None
        variants = min(depth_variants, frames.variants) if frames.cloud_probability > 0 else 0
        return FeatureCache(frames, self.model, image_variants, variants, s.seed, progress)

    def _param_groups(self) -> list[dict]:
        """The encoder (pretrained trunk) at lr * trunk_lr_scale, everything else at lr."""
        if self.settings.trunk_lr_scale == 1.0:  # one group, as checkpoints of older runs hold
            return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        trunk, heads = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (trunk if name.startswith("encoder.") else heads).append(p)
        lr = self.settings.lr
        groups = [{"params": heads, "lr": lr}, {"params": trunk, "lr": lr * self.settings.trunk_lr_scale}]
        return [g for g in groups if g["params"]]

    @torch.no_grad()
    def _init_centroids(self, count: int) -> None:
        """NetVLAD centres from k-means of the local features of evenly spread frames (per `centroid_modalities`)."""
        idx = np.linspace(0, len(self.frames) - 1, min(count, len(self.frames))).astype(int)
        images = torch.stack([self.frames.image(i) for i in idx]).to(self.device)
        depths = torch.stack([self.frames.depth(i) for i in idx]).to(self.device)
        self.model.eval()
        subsets = self.settings.centroid_modalities
        self.model.init_centroids(image=images, depth=depths, subsets=None if subsets is None else tuple(subsets))

    # ---- descriptor cache ----
    @torch.no_grad()
    def _encode(self, frames: TrainingFrames, features, progress: bool, desc: str,
                limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Image and scan descriptors of every frame (the first `limit`) with the current weights, from
        the inputs or from their cached trunk prefixes (`features`).

        Under DDP each rank encodes a share and an all-reduce assembles the table.
        """
        from tqdm import tqdm

        n, bs = min(len(frames), limit or len(frames)), self.settings.cache_batch_size
        mine = np.arange(self.env.rank, n, self.env.world)
        describer = Describer(self.model)
        query, scan = None, None
        chunks = range(0, len(mine), bs)
        for start in tqdm(chunks, desc=desc, disable=not (progress and self.env.is_main), leave=False):
            idx = mine[start : start + bs]
            if features is not None:
                q = self._cached_descriptors(describer, prefix=features.clean(idx, "image"))
                m = self._cached_descriptors(describer, prefix=features.clean(idx, "depth"))
            else:
                q = self._cached_descriptors(describer, images=[frames.image(i) for i in idx])
                m = self._cached_descriptors(describer, depths=[frames.depth(i) for i in idx])
            if query is None:
                query = torch.zeros((n, q.shape[1]), device=self.device)
                scan = torch.zeros((n, m.shape[1]), device=self.device)
            query[idx], scan[idx] = q, m
        if self.env.world > 1:
            dist.all_reduce(query)
            dist.all_reduce(scan)
        _set_train_mode(self.model, self.settings.freeze_batchnorm)
        return query.cpu().numpy(), scan.cpu().numpy()

    def refresh_cache(self, progress: bool = True) -> None:
        """Image and scan descriptors of every training frame (mining), and their Recall@1."""
        with self.timer("cache_refresh"):
            self.cache_query, self.cache_map = self._encode(self.frames, self.features, progress, "descriptor cache")
            # Free training-set check: cached images against cached scans, paper protocol.
            self.cache_recall = evaluate_retrieval(self.cache_query, self.cache_map, self.positives).recall_at_1

    def _validation_truth(self, rule: PairRule) -> tuple[np.ndarray, np.ndarray | None]:
        """(correct, excluded) of the validation queries against the validation map (`val_protocol`)."""
        p, val = self.val_protocol, self.validation.dataset
        parts = [val]
        if p.with_training_map:
            if len(set(np.asarray(getattr(self.frames.dataset, "worlds", [0])).tolist())) > 1:
                raise ValueError("validation_protocol.with_training_map: the training data span several worlds")
            parts = [self.frames.dataset, val]
        map_poses = np.concatenate([np.asarray(d.poses) for d in parts])
        map_stamps = np.concatenate([np.asarray(d.stamps) for d in parts])
        radius = rule.positive_distance if p.radius is None else p.radius
        angle = rule.positive_angle_deg if p.angle_deg is None else p.angle_deg
        correct = place_matches(val.poses, map_poses, radius, val.ground_axes, angle)
        worlds = getattr(val, "worlds", None)
        if worlds is not None and not p.with_training_map:  # frames of different worlds share no place
            correct &= np.asarray(worlds)[:, None] == np.asarray(worlds)[None, :]
        excluded = time_exclusion(val.stamps, map_stamps, p.exclude_seconds) if p.exclude_seconds > 0 else None
        return correct, excluded

    def validate(self, progress: bool = True) -> float:
        """Image -> scan Recall@1 on the validation frames (paper protocol; with `exclude_seconds` the revisit
        protocol too). Returns the score the best step is chosen by: paper, or the mean of both."""
        with self.timer("validation"):
            query, scan = self._encode(self.validation, self.val_features, progress, "validation")
            if self.val_protocol.with_training_map:
                scan = np.concatenate([self._encode(self.frames, self.features, progress, "validation map")[1], scan])
            self.val_recall = evaluate_retrieval(query, scan, self.val_positives).recall_at_1
            if self.val_excluded is None:
                return self.val_recall
            revisit = evaluate_retrieval(query, scan, self.val_positives, self.val_excluded, protocol="revisit")
            self.val_revisit = float("nan") if revisit.recall_at_1 is None else revisit.recall_at_1
        return float(np.nanmean([self.val_recall, self.val_revisit]))

    def _cached_descriptors(self, describer: Describer, **inputs) -> torch.Tensor:
        described = describer.describe(**inputs, batch_size=self.settings.cache_batch_size, progress=False)
        return torch.from_numpy(described.descriptors).to(self.device)

    # ---- one step ----
    def _draw_modality(self) -> str:
        names = list(self.settings.modality_weights)
        weights = np.array([self.settings.modality_weights[k] for k in names], dtype=np.float64)
        return names[self.rng.choice(len(names), p=weights / weights.sum())]

    def _draw_batch(self):
        s = self.settings
        anchors = self.rng.choice(self.eligible, size=s.batch_size, replace=len(self.eligible) < s.batch_size)
        positives = np.array([self.rng.choice(np.flatnonzero(self.positives[a])) for a in anchors])
        hard = np.zeros((len(anchors), 0), dtype=np.int64)
        if s.cache_negatives > 0 and self.step < s.mining_warmup_steps:
            hard = -np.ones((len(anchors), s.cache_negatives), dtype=np.int64)  # filled at random below
        elif s.cache_negatives > 0:
            hard = hardest_negatives(self.cache_query[anchors], self.cache_map, self.negatives[anchors], s.cache_negatives)
        if s.cache_negatives > 0:
            for row, a in enumerate(anchors):  # rows short of negatives: fill with random ones
                missing = hard[row] < 0
                if missing.any():
                    hard[row, missing] = self.rng.choice(np.flatnonzero(self.negatives[a]), size=missing.sum())
        return anchors, positives, hard

    def train_step(self) -> dict:
        """One optimizer step over `accumulate_steps` micro-batches of `batch_size` anchors."""
        s = self.settings
        self.optimizer.zero_grad(set_to_none=True)
        parts = [self._micro_step() for _ in range(s.accumulate_steps)]
        # No active hinge in any micro-batch: skip the update, or Adam's momentum would keep moving the
        # weights on a zero gradient. (All ranks see their own loss; DDP already synchronised gradients.)
        if any(part["loss"] > 0.0 for part in parts) or self.env.world > 1:
            with self.timer("backward"):
                self.scaler.step(self.optimizer)
                self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return {"loss": float(np.mean([p["loss"] for p in parts])), "active": float(np.mean([p["active"] for p in parts])),
                "modality": parts[-1]["modality"]}

    def _micro_step(self) -> dict:
        s = self.settings
        with self.timer("mining"):
            anchors, positives, hard = self._draw_batch()
            modality = self._draw_modality()
        b, h = len(anchors), hard.shape[1]
        map_ids = positives if s.memory_negatives else np.concatenate([positives, hard.reshape(-1)])
        with self.timer("data"):
            inputs = self._step_inputs(anchors, modality, map_ids)

        with self.timer("forward"):
            with torch.autocast(self.device.type, enabled=self.use_amp):
                anchor_desc, map_desc = self.net(*inputs)
            anchor_desc, map_desc = anchor_desc.float(), map_desc.float()
            pos_desc = map_desc[:b]
            if not s.memory_negatives:
                hard_desc = map_desc[b:].reshape(b, h, -1)
            elif h:  # the cached scan descriptors: negatives that push the anchor only
                hard_desc = torch.from_numpy(self.cache_map[hard]).to(self.device)
                self.cache_map[positives] = pos_desc.detach().cpu().numpy()  # keep the memory fresh
            else:
                hard_desc = map_desc.new_zeros((b, 0, map_desc.shape[1]))
            # Batch negatives: every anchor's positive scan that is a negative of this anchor.
            batch_mask = torch.from_numpy(self.negatives[np.ix_(anchors, positives)]).to(self.device)
            negs = torch.cat([pos_desc[None].expand(b, b, -1), hard_desc], dim=1)
            mask = torch.cat([batch_mask, torch.ones((b, h), dtype=torch.bool, device=self.device)], dim=1)
            loss = lazy_triplet_loss(anchor_desc, pos_desc, negs, s.margin, mask, s.distance)
            with torch.no_grad():
                d_pos = distances(anchor_desc, pos_desc[:, None, :], s.distance)
                d_neg = distances(anchor_desc, negs, s.distance).masked_fill(~mask, float("inf"))
                active = (d_neg < d_pos + s.margin).any(1).float().mean().item()
        with self.timer("backward"):
            if loss.item() > 0.0 or self.env.world > 1:  # a zero loss has a zero gradient: no backward pass
                self.scaler.scale(loss / s.accumulate_steps).backward()
        return {"loss": float(loss.item()), "active": active, "modality": modality}

    def _step_inputs(self, anchors: np.ndarray, modality: str, map_ids: np.ndarray) -> tuple:
        """TripletForward's arguments: augmented inputs, or their cached trunk prefixes (feature cache)."""
        if self.features is not None:
            anchor_prefix = self.features.anchors(anchors, modality, self.rng)
            map_prefix = self.features.scans(map_ids, self.rng)
            return None, None, None, _on_device(anchor_prefix, self.device), _on_device(map_prefix, self.device)
        image = depth = None
        if "image" in modality:
            image = torch.stack([self.frames.augmented_image(i, self.generator) for i in anchors]).to(self.device)
        if "depth" in modality:
            depth = torch.stack([self.frames.augmented_depth(i, self.rng) for i in anchors]).to(self.device)
        map_depth = torch.stack([self.frames.augmented_depth(i, self.rng) for i in map_ids]).to(self.device)
        return image, depth, map_depth

    # ---- checkpoints ----
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": self.generator.get_state(),
            "numpy_rng": torch.tensor(np.frombuffer(_numpy_rng_bytes(self.rng), dtype=np.uint8)),
            "best_val": torch.tensor(self.best_val, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["torch_rng"])
        self.rng = _numpy_rng_from_bytes(state["numpy_rng"].numpy().tobytes())
        self.step = int(state["step"])
        self.best_val = float(state.get("best_val", -math.inf))

    def save(self) -> None:
        """Trainer state first, then the model in the shipped layout; both atomic."""
        if not self.env.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        atomic_write(self.out_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))
        self.save_model(self.model, self.out_dir)

    def save_best(self) -> None:
        """The model of this step as OUT/best (shipped layout) and OUT/best.json (step, recall); both atomic."""
        if not self.env.is_main:
            return
        (self.out_dir / BEST_DIR).mkdir(parents=True, exist_ok=True)
        self.save_model(self.model, self.out_dir / BEST_DIR)
        record = {"step": self.step, "val_recall@1": self.val_recall, "val_revisit_recall@1": self.val_revisit,
                  "score": self.best_val}
        atomic_write_text(self.out_dir / BEST_FILE, json.dumps(record) + "\n")

    def _validate_and_keep_best(self, progress: bool) -> None:
        score = self.validate(progress)
        if score > self.best_val:
            self.best_val = score
            self.save_best()

    def resume(self) -> bool:
        path = self.out_dir / STATE_FILE
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: say which
            raise ValueError(f"{path}: cannot read the training state ({e})") from None
        self.load_state_dict(state)
        return True

    # ---- the loop ----
    def fit(self, progress: bool = True) -> dict:
        from tqdm import tqdm

        s = self.settings
        log_path = self.out_dir / LOG_FILE
        if self.env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            new_log = not log_path.is_file() or self.step == 0
            log_file = log_path.open("w" if new_log else "a", newline="")
            writer = csv.DictWriter(log_file, fieldnames=LOG_FIELDS)
            if new_log:
                writer.writeheader()
        started = time.monotonic()
        _set_train_mode(self.model, s.freeze_batchnorm)
        bar = tqdm(total=s.max_steps, initial=self.step, desc="train", disable=not (progress and self.env.is_main))
        last = {"loss": math.nan}
        try:
            while self.step < s.max_steps:
                if self.cache_query is None or self.step % s.steps_per_epoch == 0:
                    self.refresh_cache(progress)
                last = self.train_step()
                every = s.validate_every or s.steps_per_epoch
                if self.validation is not None and (self.step % every == 0 or self.step == s.max_steps):
                    self._validate_and_keep_best(progress)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}", cache_r1=f"{self.cache_recall:.2f}")
                if self.env.is_main:
                    writer.writerow({
                        "step": self.step, "epoch": (self.step - 1) // s.steps_per_epoch, "loss": f"{last['loss']:.5f}",
                        "active": f"{last['active']:.3f}", "lr": f"{self.scheduler.get_last_lr()[0]:.3g}",
                        "modality": last["modality"], "cache_recall@1": f"{self.cache_recall:.4f}",
                        "val_recall@1": f"{self.val_recall:.4f}", "val_revisit_recall@1": f"{self.val_revisit:.4f}",
                        "seconds": f"{time.monotonic() - started:.1f}",
                    })
                    log_file.flush()
                if self.step % s.checkpoint_every == 0 or self.step == s.max_steps:
                    self.save()
        finally:
            bar.close()
            if self.env.is_main:
                log_file.close()
        return {"steps": self.step, "final_loss": last["loss"], "seconds": time.monotonic() - started}


def _on_device(prefix, device: torch.device):
    return type(prefix)(*(None if t is None else t.to(device) for t in prefix))


def _numpy_rng_bytes(rng: np.random.Generator) -> bytes:
    import json

    return json.dumps(rng.bit_generator.state).encode()


def _numpy_rng_from_bytes(data: bytes) -> np.random.Generator:
    import json

    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(data.decode())
    return rng
