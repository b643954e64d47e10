"""Loss, mining, pair rules and augmentations on inputs with known answers."""
import numpy as np
import pytest
import torch

from cmirl_ros.training.augment import AugmentConfig, augment_image, fog, perturb_cloud, rain, snow
from cmirl_ros.training.loss import hardest_negatives, lazy_triplet_loss
from cmirl_ros.training.pairs import PairRule, place_relations


def test_lazy_triplet_takes_hardest_negative():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0]])
    negs = torch.tensor([[[0.0, 1.0], [0.8, 0.6]]])  # d = 2.0 and 0.4
    assert lazy_triplet_loss(a, p, negs, margin=0.5).item() == pytest.approx(0.1)
    mask = torch.tensor([[True, False]])  # the hard one is not a negative
    assert lazy_triplet_loss(a, p, negs, margin=0.5, negative_mask=mask).item() == pytest.approx(0.0)


def test_lazy_triplet_gradient_moves_negative_away():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.9, 0.1]])
    n = torch.tensor([[[0.95, 0.05]]], requires_grad=True)
    lazy_triplet_loss(a, p, n, margin=0.5).backward()
    assert n.grad[0, 0, 0] > 0  # gradient descent lowers x: away from the anchor


def test_euclidean_triplet_escapes_a_collapsed_descriptor_where_squared_cannot():
    # Everything at one point: the loss equals the margin either way, but only the plain
    # distance gives the anchor a gradient (the squared loss is stationary at collapse).
    collapsed = torch.tensor([[0.6, 0.8]])
    a = collapsed.clone().requires_grad_(True)
    p = collapsed + torch.tensor([[1e-3, 0.0]])
    n = (collapsed + torch.tensor([[0.0, 1e-3]]))[:, None, :]
    squared = lazy_triplet_loss(a, p, n, margin=0.5)
    squared.backward()
    assert squared.item() == pytest.approx(0.5, abs=1e-4) and a.grad.norm() < 1e-2
    a.grad = None
    plain = lazy_triplet_loss(a, p, n, margin=0.5, distance="euclidean")
    plain.backward()
    assert plain.item() == pytest.approx(0.5, abs=1e-2) and a.grad.norm() > 0.5
    with pytest.raises(ValueError, match="unknown triplet distance"):
        lazy_triplet_loss(a, p, n, margin=0.5, distance="cosine")


def test_hardest_negatives_respects_mask_and_pads():
    anchors = np.array([[1.0, 0.0]], np.float32)
    cands = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], np.float32)
    is_neg = np.array([[False, True, True]])
    np.testing.assert_array_equal(hardest_negatives(anchors, cands, is_neg, 2), [[1, 2]])
    np.testing.assert_array_equal(hardest_negatives(anchors, cands, is_neg, 4), [[1, 2, -1, -1]])


def test_place_relations_distance_and_angle():
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[:, 0, 3] = [0.0, 3.0, 30.0]
    pos, neg = place_relations(poses, PairRule(5.0, 20.0))
    assert pos[0, 1] and not pos[0, 2] and neg[0, 2] and not neg[0, 1]
    poses[1, :3, :3] = [[-1, 0, 0], [0, 1, 0], [0, 0, -1]]  # turned around
    pos, neg = place_relations(poses, PairRule(5.0, 20.0, positive_angle_deg=30, negative_angle_deg=90))
    assert not pos[0, 1] and neg[0, 1]
    with pytest.raises(ValueError, match="positive_distance"):
        PairRule.from_config({"positive_distance": 30, "negative_distance": 20})


def test_weather_effects_change_images_as_expected():
    img = torch.full((3, 32, 48), 0.2)
    g = torch.Generator().manual_seed(0)
    foggy = fog(img, 1.0)
    assert foggy[:, 0].mean() > foggy[:, -1].mean() > img.mean()  # haze thicker far away (top)
    assert rain(img, 1.0, g).max() > 0.5 and snow(img, 1.0, g).max() == 1.0
    out = augment_image(img, AugmentConfig(weather_probability=1.0), g)
    assert out.shape == img.shape and 0.0 <= out.min() and out.max() <= 1.0
    with pytest.raises(ValueError, match="unknown keys"):
        AugmentConfig.from_config({"britness": 1})


def test_perturb_cloud_is_rigid_and_bounded():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(100, 4)).astype(np.float32)
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # KITTI-like LiDAR -> camera
    out = perturb_cloud(pts, T, AugmentConfig(cloud_rotation_deg=10, cloud_translation=0.5), rng)
    d_in = np.linalg.norm(pts[:, None, :3] - pts[None, :, :3], axis=-1)
    d_out = np.linalg.norm(out[:, None, :3] - out[None, :, :3], axis=-1)
    np.testing.assert_allclose(d_in, d_out, atol=1e-4)
    np.testing.assert_array_equal(out[:, 3], pts[:, 3])
    # LiDAR z (camera -y) is the vertical: a yaw + ground translation keeps heights.
    np.testing.assert_allclose(out[:, 2], pts[:, 2], atol=1e-5)


def test_train_cli_bad_configs_are_one_line_errors(tmp_path, capsys):
    from cmirl_ros.cli import main

    no_model = tmp_path / "no_model.yaml"
    no_model.write_text("data: {root: /nowhere}\n")
    assert main(["train", "--config", str(no_model), "--out", str(tmp_path / "o")]) == 2
    assert "no_model.yaml: missing 'model'" in capsys.readouterr().err
    typo = tmp_path / "typo.yaml"
    typo.write_text("model: cmirl_lite\ntrain: {batch_sise: 4}\n")
    assert main(["train", "--config", str(typo), "--out", str(tmp_path / "o")]) == 2
    assert "unknown keys ['batch_sise']" in capsys.readouterr().err
    no_root = tmp_path / "no_root.yaml"
    no_root.write_text("model: cmirl_lite\n")
    assert main(["train", "--config", str(no_root), "--out", str(tmp_path / "o")]) == 2
    assert "no data root" in capsys.readouterr().err
    bad_distance = tmp_path / "bad_distance.yaml"
    bad_distance.write_text("model: cmirl_lite\ndata: {root: /nowhere}\nloss: {distance: cosine}\n")
    assert main(["train", "--config", str(bad_distance), "--out", str(tmp_path / "o")]) == 2
    assert "loss.distance: one of squared, euclidean" in capsys.readouterr().err
