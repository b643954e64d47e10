"""The training loop on a tiny synthetic place set with a small model honouring the PlaceModel
contract: loss falls, checkpoints are atomic and complete, resume continues where it stopped."""
import csv

import numpy as np
import pytest
import torch
from torch import nn

from cmirl_ros.datasets import Frame
from cmirl_ros.geometry import Calibration, PinholeCamera
from cmirl_ros.geometry.frames import as_given
from cmirl_ros.preprocess import Preprocessing
from cmirl_ros.training.augment import AugmentConfig
from cmirl_ros.training.data import StridedDataset, TrainingFrames
from cmirl_ros.training.pairs import PairRule
from cmirl_ros.training.trainer import STATE_FILE, Trainer, TrainSettings

W, H = 32, 24


class ToyPlaces:
    """Places along a line; the image colour pattern and the wall distance both encode the place."""

    name = "toy"
    ground_axes = None
    frame_convention = as_given("toy")

    def __init__(self, n=24):
        self.calib = Calibration(PinholeCamera.from_params(20.0, 20.0, W / 2, H / 2, W, H), np.eye(4))
        self.poses = np.tile(np.eye(4), (n, 1, 1))
        self.poses[:, 0, 3] = np.arange(n) * 2.0
        self.stamps = np.arange(n, dtype=np.float64)
        self.frame_ids = list(range(n))

    def __len__(self):
        return len(self.frame_ids)

    def __getitem__(self, i):
        rng = np.random.default_rng(i // 3)  # three neighbouring frames share a place
        image = np.repeat(np.repeat(rng.integers(0, 255, (3, 4, 3), dtype=np.uint8), 8, 0), 8, 1)
        ys, xs = np.mgrid[-5:5:0.5, -5:5:0.5]
        z = 3.0 + (i // 3) * 0.7 + 0.3 * np.sin(xs * (1 + i // 3))
        points = np.stack([xs.ravel(), ys.ravel(), z.ravel(), np.zeros(xs.size)], 1).astype(np.float32)
        return Frame(i, float(i), image, points, self.poses[i], self.calib, f"{i:06d}")


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.preprocessing = Preprocessing(height=H, width=W, crop_top=0.0, max_depth=20.0)
        self.rgb = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.dep = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, 16)
        self.descriptor_dim = 16

    def forward(self, image=None, depth=None):
        feats = [enc(x) for enc, x in ((self.rgb, image), (self.dep, depth)) if x is not None]
        return nn.functional.normalize(self.head(sum(feats)), dim=1)


def _save(model, directory):
    tmp = directory / ".weights.tmp"
    torch.save(model.state_dict(), tmp)
    tmp.replace(directory / "weights.pt")


def _trainer(tmp_path, steps):
    torch.manual_seed(0)
    settings = TrainSettings(batch_size=6, max_steps=steps, steps_per_epoch=5, lr=3e-3, min_lr=1e-4,
                             checkpoint_every=5, cache_batch_size=8)
    frames = TrainingFrames(ToyPlaces(), ToyModel().preprocessing, AugmentConfig(weather_probability=0.5), 0.5)
    model = ToyModel()
    return Trainer(model, frames, PairRule(positive_distance=5.0, negative_distance=7.0), settings, tmp_path,
                   torch.device("cpu"), save_model=_save)


def test_training_lowers_loss_and_resumes(tmp_path):
    trainer = _trainer(tmp_path, steps=10)
    trainer.fit(progress=False)
    assert (tmp_path / STATE_FILE).is_file() and (tmp_path / "weights.pt").is_file()
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    assert {r["modality"] for r in rows} <= {"image", "depth", "image+depth"}

    resumed = _trainer(tmp_path, steps=30)
    assert resumed.resume() and resumed.step == 10
    torch.testing.assert_close(resumed.model.state_dict(), trainer.model.state_dict())
    resumed.fit(progress=False)
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))  # appended, not restarted
    first = np.mean([float(r["loss"]) for r in rows[:10]])
    last = np.mean([float(r["loss"]) for r in rows[-10:]])
    assert last < first
    # Recall on 24 toy frames moves in steps of 1/24 and wobbles from refresh to refresh: the best
    # refresh after the resume must beat the untrained one.
    assert max(float(r["cache_recall@1"]) for r in rows[10:]) > float(rows[0]["cache_recall@1"])


def test_no_pairs_is_a_clear_error(tmp_path):
    frames = TrainingFrames(ToyPlaces(4), ToyModel().preprocessing, AugmentConfig(), 0.0)
    with pytest.raises(ValueError, match="no frame has both a positive"):
        Trainer(ToyModel(), frames, PairRule(5.0, 100.0), TrainSettings(), tmp_path, torch.device("cpu"), _save)


def test_strided_dataset_keeps_interface():
    ds = StridedDataset(ToyPlaces(10), 3)
    assert len(ds) == 4 and ds.frame_ids == [0, 3, 6, 9]
    assert ds[1].index == 3 and ds.poses.shape == (4, 4, 4)


def _ddp_worker(rank, world, port, out_dir, result_dir):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pathlib import Path

    from cmirl_ros.training.trainer import init_distributed

    env = init_distributed(torch.device("cpu"))
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    settings = TrainSettings(batch_size=4, max_steps=4, steps_per_epoch=2, checkpoint_every=2, cache_batch_size=8)
    frames = TrainingFrames(ToyPlaces(), ToyModel().preprocessing, AugmentConfig(), 0.0)
    trainer = Trainer(ToyModel(), frames, PairRule(5.0, 7.0), settings, Path(out_dir), torch.device("cpu"), _save, env)
    trainer.fit(progress=False)
    torch.save(trainer.model.state_dict(), Path(result_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_distributed_ranks_stay_in_sync(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "out").mkdir()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "out"), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.testing.assert_close(rank0, rank1)
    rows = list(csv.DictReader((tmp_path / "out" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # one log, written by rank 0


def test_mining_warmup_draws_random_then_hardest_negatives(tmp_path):
    trainer = _trainer(tmp_path, steps=10)
    trainer.settings.mining_warmup_steps = 5
    trainer.settings.cache_negatives = 1
    trainer.refresh_cache(progress=False)
    # Make frame 23's scan the most similar to every cached image: the hardest negative for far anchors.
    trainer.cache_map[23] = trainer.cache_query.mean(0) * 100
    far = trainer.negatives[:, 23]
    picks_warm = [trainer._draw_batch() for _ in range(20)]
    trainer.step = 5
    picks_hard = [trainer._draw_batch() for _ in range(20)]

    def share_of_23(picks):
        hits = [h[0] == 23 for anchors, _, hard in picks for a, h in zip(anchors, hard) if far[a]]
        return np.mean(hits)

    assert share_of_23(picks_hard) == 1.0
    assert share_of_23(picks_warm) < 0.5


def test_trunk_lr_scale_and_centroid_modalities_settings(tmp_path):
    model = ToyModel()
    model.encoder = nn.Linear(2, 2)  # stands for a pretrained trunk
    frames = TrainingFrames(ToyPlaces(), model.preprocessing, AugmentConfig(), 0.5)
    settings = TrainSettings(lr=1e-3, trunk_lr_scale=0.1)
    trainer = Trainer(model, frames, PairRule(5.0, 7.0), settings, tmp_path, torch.device("cpu"), _save)
    lrs = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert lrs[id(model.encoder.weight)] == pytest.approx(1e-4)
    assert lrs[id(model.head.weight)] == pytest.approx(1e-3)
    assert len(lrs) == len(list(model.parameters()))
    for bad in ({"train": {"trunk_lr_scale": 0.0}}, {"train": {"centroid_modalities": ["rgb"]}},
                {"train": {"centroid_modalities": []}}):
        with pytest.raises(ValueError):
            TrainSettings.from_config(bad)
