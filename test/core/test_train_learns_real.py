"""The loss works on real data: a short training on real 7-Scenes RGB-D frames raises
Recall@1 (images against depth scans) on frames held apart from training."""
import numpy as np
import pytest
import torch

from cmirl_ros.datasets.rgbd import RGBDSequence
from cmirl_ros.evaluation.metrics import evaluate_retrieval
from cmirl_ros.geometry import place_matches
from cmirl_ros.models import build_model, load_model_config
from cmirl_ros.training.augment import AugmentConfig
from cmirl_ros.training.data import StridedDataset, TrainingFrames
from cmirl_ros.training.pairs import PairRule
from cmirl_ros.training.trainer import Trainer, TrainSettings

pytestmark = pytest.mark.slow

RADIUS, ANGLE = 0.5, 30.0


class Offset(StridedDataset):
    """Every k-th frame starting at `first`: held-apart frames between the training ones."""

    def __init__(self, dataset, stride, first):
        super().__init__(dataset, stride)
        self.rows = list(range(first, len(dataset), stride))
        self.stamps, self.poses = np.asarray(dataset.stamps)[self.rows], np.asarray(dataset.poses)[self.rows]
        self.frame_ids = [dataset.frame_ids[r] for r in self.rows]


def _recall_at_1(model, frames: TrainingFrames) -> float:
    model.eval()
    idx = range(len(frames))
    with torch.no_grad():
        queries = model(image=torch.stack([frames.image(i) for i in idx])).numpy()
        scans = model(depth=torch.stack([frames.depth(i) for i in idx])).numpy()
    poses = frames.dataset.poses
    correct = place_matches(poses, poses, RADIUS, None, ANGLE)
    return evaluate_retrieval(queries, scans, correct).recall_at_1


def test_short_training_improves_recall_on_held_apart_frames(sevenscenes, tmp_path):
    torch.manual_seed(0)
    config = load_model_config("cmirl_lite")
    config["preprocessing"].update(height=64, width=96, crop_top=0.0, max_depth=10.0)
    model = build_model(config)
    sequence = RGBDSequence(sevenscenes)
    train = TrainingFrames(Offset(sequence, 8, 0), model.preprocessing, AugmentConfig(), cloud_probability=0.0)
    held = TrainingFrames(Offset(sequence, 8, 4), model.preprocessing, AugmentConfig(), cloud_probability=0.0)
    settings = TrainSettings(batch_size=8, max_steps=60, steps_per_epoch=20, lr=3e-4, min_lr=1e-5, seed=0,
                             cache_negatives=2, checkpoint_every=10_000, init_centroids=40)
    rule = PairRule(positive_distance=0.3, negative_distance=1.0, positive_angle_deg=30, negative_angle_deg=90)
    trainer = Trainer(model, train, rule, settings, tmp_path, torch.device("cpu"), save_model=lambda m, d: None)
    before = _recall_at_1(model, held)  # after NetVLAD's k-means initialisation, before any step
    trainer.fit(progress=False)
    after = _recall_at_1(model, held)
    print(f"held-apart Recall@1: untrained {before:.3f} -> trained {after:.3f} ({len(held)} queries)")
    assert after >= before + 0.08  # measured: 0.253 -> 0.933 (the previous trainer: 0.240 -> 0.373)
