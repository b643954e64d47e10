"""The training engine: the on-disk preprocessing cache, frozen trunk stages, data splits with the
test-frame guard, validation with best-checkpoint choice, and `cmirl bench train` on a tiny config."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cmirl_ros.cli import main
from cmirl_ros.preprocess import Preprocessing
from cmirl_ros.training import frame_cache
from cmirl_ros.training.augment import AugmentConfig
from cmirl_ros.training.data import StridedDataset, TrainingFrames
from cmirl_ros.training.frame_cache import CachedTrainingFrames
from cmirl_ros.training.pairs import PairRule, dataset_relations
from cmirl_ros.training.splits import MultiDataset, check_disjoint, check_no_test_frames
from cmirl_ros.training.trainer import BEST_FILE, Trainer, TrainSettings, ValidationProtocol
from test_train_loop import ToyModel, ToyPlaces, _save


def _cached(tmp_path, pre=None, variants=2, probability=1.0):
    pre = pre or ToyModel().preprocessing
    return CachedTrainingFrames(ToyPlaces(6), pre, AugmentConfig(), probability, tmp_path, variants, progress=False)


def test_cache_equals_preprocessing_and_draws_cached_cloud_motions(tmp_path):
    cached = _cached(tmp_path)
    direct = TrainingFrames(ToyPlaces(6), ToyModel().preprocessing, AugmentConfig(), 1.0)
    for i in range(6):
        assert torch.equal(cached.image(i), direct.image(i))  # bit-identical to Preprocessing.image
        assert torch.equal(cached.depth(i), direct.depth(i))
    rng = np.random.default_rng(0)
    moved = [cached.augmented_depth(0, rng) for _ in range(10)]
    assert all(not torch.equal(m, cached.depth(0)) for m in moved)  # cloud_probability 1: always moved
    assert len({m.numpy().tobytes() for m in moved}) == 2  # drawn among the 2 cached variants


def _directory(frames):
    return frames.files[0][2].parent


def test_cache_is_keyed_by_preprocessing_and_reused(tmp_path):
    first = _cached(tmp_path)
    stamp = first.files[0][2].stat().st_mtime_ns
    assert _directory(_cached(tmp_path)) == _directory(first)
    assert first.files[0][2].stat().st_mtime_ns == stamp  # reused, not rebuilt
    other = _cached(tmp_path, Preprocessing(height=24, width=32, crop_top=0.0, max_depth=5.0))
    assert _directory(other) != _directory(first)
    assert _directory(_cached(tmp_path, variants=3)) != _directory(first)
    assert not list(tmp_path.rglob("*.tmp"))


def test_interrupted_cache_build_keeps_only_whole_frames(tmp_path, monkeypatch):
    calls = []

    def failing(points, *args):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return points

    monkeypatch.setattr(frame_cache, "perturb_cloud", failing)
    with pytest.raises(KeyboardInterrupt):
        _cached(tmp_path)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["000000.npz"]  # frame 0 whole, no temporary
    monkeypatch.undo()
    assert len(list(_directory(_cached(tmp_path)).glob("*.npz"))) == 6  # the next run adds the rest


def test_frozen_trunk_blocks_give_the_same_features_without_gradients():
    from cmirl_ros.models.backbones import Backbone

    torch.manual_seed(0)
    trunk = Backbone("efficientnet_lite0", stage=3, pretrained="none").eval()
    x = torch.randn(2, 3, 32, 64)
    expected = trunk(x)
    trunk.freeze_blocks(2)
    got = trunk(x)
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    assert trunk.trunk.conv_stem.weight.grad is None and trunk.trunk.blocks[1][0].conv_dw.weight.grad is None
    assert trunk.trunk.blocks[2][0].conv_dw.weight.grad is not None


class _Seq:
    """A dataset stand-in with a KITTI sequence directory (optionally a simulated one)."""

    def __init__(self, root, seq, frames, sim=None):
        self.root = root
        self.seq_dir = root / "sequences" / seq
        self.seq_dir.mkdir(parents=True, exist_ok=True)
        if sim:
            (self.seq_dir / "sim.json").write_text(json.dumps(sim))
        self.name = f"kitti-{seq}"
        self.frame_ids = list(frames)


def test_test_frames_are_refused(tmp_path):
    check_no_test_frames(_Seq(tmp_path / "real", "00", range(0, 3000)), "training")
    with pytest.raises(ValueError, match="test frames of kitti 00"):
        check_no_test_frames(_Seq(tmp_path / "real", "00", range(2990, 3001)), "training")
    with pytest.raises(ValueError, match="kitti 02"):
        check_no_test_frames(_Seq(tmp_path / "real", "02", range(5)), "validation")
    # A render of trajectory 00 (every 5th frame from 0), named 07: frame 600 is source frame 3000.
    sim = {"trajectory_name": "00", "source_frames": [0, 4536, 5]}
    check_no_test_frames(_Seq(tmp_path / "sim", "07", range(600), sim), "training")
    with pytest.raises(ValueError, match="source frames 3000-3000"):
        check_no_test_frames(_Seq(tmp_path / "sim", "07", range(601), sim), "training")
    indoor = _Seq(tmp_path / "7scenes-redkitchen-seq01-frames0000-0599", "x", range(390, 410))
    del indoor.seq_dir
    indoor.name = "rgbd-7scenes-redkitchen-seq01-frames0000-0599"
    with pytest.raises(ValueError, match="rgbd 7scenes"):
        check_no_test_frames(indoor, "training")
    indoor.frame_ids = list(range(400))
    check_no_test_frames(indoor, "training")


def test_train_command_refuses_a_config_with_test_frames(tmp_path):
    from cmirl_ros.sim import SimConfig, simulate_sequence

    simulate_sequence(SimConfig(trajectory="loop", frames="0:4", width=32, height=16, workers=1), tmp_path, "00",
                      progress=False)
    sim = tmp_path / "sequences" / "00" / "sim.json"
    sim.write_text(json.dumps({**json.loads(sim.read_text()), "trajectory_name": "08"}))  # as if rendered from 08
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"model": "cmirl_lite", "data": {"root": str(tmp_path), "seq": "00"}}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 2


def test_worlds_share_no_place_and_validation_must_be_disjoint(tmp_path):
    a, b = ToyPlaces(6), ToyPlaces(6)
    both = MultiDataset([a, b], ["town0", "town1"])
    positives, negatives = dataset_relations(both, PairRule(5.0, 7.0))
    assert len(both) == 12 and both[7].index == 1
    assert not positives[:6, 6:].any() and negatives[:6, 6:].all()  # same poses, other world
    same_world = MultiDataset([a, b], ["town0", "town0"])  # e.g. one town under two conditions
    assert dataset_relations(same_world, PairRule(5.0, 7.0))[0][0, 6]
    train, val = _Seq(tmp_path, "00", range(0, 500)), _Seq(tmp_path, "00", range(500, 600))
    check_disjoint(train, val)
    with pytest.raises(ValueError, match="shares 10 frames"):
        check_disjoint(train, _Seq(tmp_path, "00", range(490, 600)))


def test_world_labels_are_kept_in_the_used_entries(tmp_path):
    """The used entries become the run's train_config.yaml: a world label must survive, or a rerun from the
    record would treat two renders of one town as two towns."""
    from cmirl_ros.sim import SimConfig, simulate_sequence
    from cmirl_ros.training.splits import open_entries

    simulate_sequence(SimConfig(trajectory="loop", frames="0:4", width=32, height=16, workers=1), tmp_path, "00",
                      progress=False)
    entries = [{"root": str(tmp_path), "seq": "00", "world": "town0"}, {"root": str(tmp_path), "seq": "00", "frames": "0:2"}]
    dataset, used = open_entries(entries, "training", Path)
    assert vars(used[0])["world"] == "town0" and "world" not in vars(used[1])
    assert len(dataset) == 6 and len(set(dataset.worlds.tolist())) == 2


def test_validation_recall_is_logged_and_the_best_checkpoint_kept(tmp_path):
    torch.manual_seed(0)
    pre = ToyModel().preprocessing
    frames = TrainingFrames(ToyPlaces(), pre, AugmentConfig(), 0.5)
    validation = TrainingFrames(StridedDataset(ToyPlaces(), 2), pre, AugmentConfig(), 0.0)
    settings = TrainSettings(batch_size=6, max_steps=6, steps_per_epoch=3, lr=3e-3, checkpoint_every=3,
                             cache_batch_size=8, accumulate_steps=2)
    trainer = Trainer(ToyModel(), frames, PairRule(5.0, 7.0), settings, tmp_path, torch.device("cpu"), _save,
                      validation=validation)
    trainer.fit(progress=False)
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    assert rows[0]["val_recall@1"] == "nan" and float(rows[2]["val_recall@1"]) >= 0.0
    best = json.loads((tmp_path / BEST_FILE).read_text())
    assert best["step"] in (3, 6) and best["val_recall@1"] == trainer.best_val
    assert (tmp_path / "best" / "weights.pt").is_file()
    resumed = Trainer(ToyModel(), frames, PairRule(5.0, 7.0), settings, tmp_path, torch.device("cpu"), _save,
                      validation=validation)
    assert resumed.resume() and resumed.best_val == trainer.best_val


def test_validation_protocol_ranks_against_the_training_scans_and_counts_revisits(tmp_path):
    torch.manual_seed(0)
    pre = ToyModel().preprocessing
    frames = TrainingFrames(ToyPlaces(), pre, AugmentConfig(), 0.5)
    validation = TrainingFrames(StridedDataset(ToyPlaces(), 2), pre, AugmentConfig(), 0.0)  # same 12 places
    settings = TrainSettings(batch_size=6, max_steps=2, steps_per_epoch=2, lr=3e-3, cache_batch_size=8)
    protocol = ValidationProtocol(radius=1.0, with_training_map=True, exclude_seconds=1.5)
    trainer = Trainer(ToyModel(), frames, PairRule(5.0, 7.0), settings, tmp_path, torch.device("cpu"), _save,
                      validation=validation, validation_protocol=protocol)
    # Radius 1 m (not the pair rule's 5 m): a validation frame matches only its own pose in the 24 training
    # frames and itself among the 12 validation frames; the revisit window hides both (1 s apart at most).
    assert trainer.val_positives.shape == (12, 36) and trainer.val_positives.sum() == 24
    assert (trainer.val_positives & ~trainer.val_excluded).sum() == 0
    score = trainer.validate(progress=False)
    assert 0.0 <= trainer.val_recall <= 1.0 and np.isnan(trainer.val_revisit)  # no query keeps a true revisit
    assert score == trainer.val_recall
    with pytest.raises(ValueError, match="unknown keys"):
        ValidationProtocol.from_config({"radius_m": 0.5})


TINY_MODEL = {"base": "cmirl_lite", "name": "cmirl_tiny",
              "preprocessing": {"height": 32, "width": 96, "crop_top": 0.3, "max_depth": 80.0}}


def test_bench_train_writes_its_figures(tmp_path):
    from cmirl_ros.sim import SimConfig, simulate_sequence

    simulate_sequence(SimConfig(trajectory="loop", frames="0:160:8", width=160, height=48, workers=1), tmp_path,
                      "00", progress=False)
    (tmp_path / "tiny_model.yaml").write_text(yaml.safe_dump(TINY_MODEL))
    config = {"model": "tiny_model.yaml", "data": {"root": str(tmp_path), "seq": "00"},
              "pairs": {"positive_distance": 10.0, "negative_distance": 20.0},
              "train": {"batch_size": 2, "steps_per_epoch": 5, "cache_batch_size": 4, "cloud_variants": 1}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--config", str(tmp_path / "tiny.yaml"), "--steps", "2", "--threads", "1",
                 "--json", str(out), "--cache-dir", str(tmp_path / "cache"), "--freeze-stages", "2"]) == 0
    result = json.loads(out.read_text())
    assert {"triplets_per_s", "baseline_triplets_per_s", "speedup", "breakdown_ms"} <= set(result)
    assert set(result["breakdown_ms"]) == {"data", "forward", "backward", "mining", "cache_refresh"}
    assert result["triplets_per_s"] > 0 and result["speedup"] > 0
    assert set(result["arms"]) == {"baseline", "engine", "engine_frozen_live", "engine_frozen"}
    frozen, live = result["arms"]["engine_frozen"]["levers"], result["arms"]["engine_frozen_live"]["levers"]
    assert frozen["freeze_stages"] == live["freeze_stages"] == 2 and frozen["feature_cache"] and not live["feature_cache"]


def _tiny_frozen_model(stages=2):
    from cmirl_ros.models import build_model
    from cmirl_ros.training.trainer import freeze_trunk_stages

    torch.manual_seed(0)
    model = build_model(TINY_MODEL, load_pretrained=False).eval()
    freeze_trunk_stages(model, stages)
    return model


def test_feature_cache_gives_the_live_descriptors_and_is_keyed_by_the_frozen_part(tmp_path):
    from cmirl_ros.models import Describer
    from cmirl_ros.models.place_model import TrunkPrefix
    from cmirl_ros.training.feature_cache import FeatureCache, _seeded_generator

    model = _tiny_frozen_model()
    frames = CachedTrainingFrames(ToyPlaces(4), model.preprocessing, AugmentConfig(weather_probability=1.0), 1.0,
                                  tmp_path, variants=1, progress=False)
    cache = FeatureCache(frames, model, image_variants=1, depth_variants=1, progress=False)
    ids, describer = [0, 1, 2, 3], Describer(model)
    for modality, inputs in (("image", {"images": [frames.image(i) for i in ids]}),
                             ("depth", {"depths": [frames.depth(i) for i in ids]})):
        live = describer.describe(**inputs, batch_size=4).descriptors
        cached = describer.describe(prefix=cache.clean(ids, modality), batch_size=4).descriptors
        np.testing.assert_array_equal(cached, live)  # the frozen part run live or read: the same descriptors
    # An image+depth anchor's augmented variant: its image draw and the moved scan it comes with.
    image = frames.augmented_image(2, _seeded_generator(0, 2, 0, 1))[None]
    variant = cache._fused_depth_variant(2, 1)
    depth = torch.from_numpy(frames._read(2, "depths")[variant : variant + 1])[None]
    rows = torch.from_numpy(cache.frame_rows(2))
    with torch.no_grad():
        torch.testing.assert_close(model(prefix=TrunkPrefix(rows[1:2], rows[cache.fused_row(1):cache.fused_row(1) + 1])),
                                   model(image=image, depth=depth), rtol=0, atol=1e-6)

    directory, stamp = cache.paths[0].parent, cache.paths[0].stat().st_mtime_ns
    with torch.no_grad():
        model.projection.weight.add_(1.0)  # a trained weight: the cache stays valid
    assert FeatureCache(frames, model, 1, 1, progress=False).paths[0].parent == directory
    assert cache.paths[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    with torch.no_grad():
        model.encoder.rgb.trunk.conv_stem.weight.mul_(0.5)  # a frozen weight: a new cache
    assert FeatureCache(frames, model, 1, 1, progress=False).paths[0].parent != directory
    other_k = FeatureCache(frames, _tiny_frozen_model(1), 1, 1, progress=False)
    assert other_k.paths[0].parent not in (directory,) and len(list(other_k.paths[0].parent.glob("*.npy"))) == 4
    assert not list(tmp_path.rglob("*.tmp"))
