"""PlaceModel of every shipped config: shapes, unit norm, gradients, ablation switches, components."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from cmirl_ros.geometry import (
    Calibration,
    DensifyConfig,
    PinholeCamera,
    densify,
    invert_transform,
    make_transform,
    quaternion_to_matrix,
)
from cmirl_ros.models import build_model, load_model_config
from cmirl_ros.models.aggregation import NMF, MultiScaleNetVLAD, NetVLAD, NetVLADWithNMF, SingleScaleNetVLAD
from cmirl_ros.models.alignment import ACMA, RigidAlignment, normalize_depth, warp_sparse
from cmirl_ros.models.encoders import DualStreamEncoder, SharedEncoder
from cmirl_ros.models.fusion import ConcatFusion, CrossModalAttentionFusion, MeanFusion
from cmirl_ros.models.place_model import architecture

CONFIGS = ["cmirl_b4", "cmirl_lite", "modalink", "cmirl_no_acma", "cmirl_no_cmaf", "cmirl_single_scale"]
SUBSETS = [("image",), ("depth",), ("image", "depth")]
HEIGHT, WIDTH = 64, 256


def lidar_like_depth(batch: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> torch.Tensor:
    """Sparse metric depth: every other row of the lower 60 %, a third of the columns, 2-60 m."""
    generator = torch.Generator().manual_seed(seed)
    depth = 2.0 + 58.0 * torch.rand(batch, 1, height, width, generator=generator)
    keep = torch.rand(batch, 1, height, width, generator=generator) < 0.33
    keep[:, :, : int(0.4 * height)] = False
    keep[:, :, 1::2] = False
    return depth * keep


def inputs(subset, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    data = {"image": torch.randn(batch, 3, HEIGHT, WIDTH, generator=generator), "depth": lidar_like_depth(batch, seed=seed)}
    return {key: data[key] for key in subset}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", CONFIGS)
def test_descriptor_shape_and_unit_norm_for_every_modality_subset(name):
    model = build_model(name, load_pretrained=False).eval()
    assert model.name == name
    assert model.preprocessing.height == 128 and model.preprocessing.width == 800
    with torch.no_grad():
        outputs = {subset: model(**inputs(subset)) for subset in SUBSETS}
    for subset, descriptor in outputs.items():
        assert descriptor.shape == (2, model.descriptor_dim), subset
        assert descriptor.dtype == torch.float32
        assert torch.allclose(descriptor.norm(dim=1), torch.ones(2), atol=1e-5), subset
        assert torch.isfinite(descriptor).all()
    # Different inputs give different descriptors, and each subset its own.
    assert not torch.allclose(outputs[("image",)][0], outputs[("image",)][1])
    assert not torch.allclose(outputs[("image",)], outputs[("image", "depth")])


@pytest.mark.parametrize("name", CONFIGS)
def test_backward_reaches_every_trainable_parameter(name):
    model = build_model(name, load_pretrained=False).train()
    # timm zero-initialises the last BatchNorm of each ResNet block, which closes the untrained
    # residual branch (zero gradient behind it); open it as pretrained weights would.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and not torch.any(module.weight != 0):
                module.weight.fill_(1.0)
    target = torch.randn(model.descriptor_dim, generator=torch.Generator().manual_seed(1))
    # Every subset: the "missing" embeddings only act when their modality is absent.
    loss = sum((model(**inputs(subset)) * target).sum() for subset in SUBSETS)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    without_gradient = [n for n, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    assert without_gradient == []


def _modules_of(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def _architecture_differences(a: dict, b: dict) -> set[str]:
    return {key for key in set(a) | set(b) if a.get(key) != b.get(key)}


def test_cmirl_lite_is_the_paper_graph():
    model = build_model("cmirl_lite", load_pretrained=False)
    assert isinstance(model.alignment, ACMA)
    assert isinstance(model.encoder, DualStreamEncoder)
    assert isinstance(model.fusion, CrossModalAttentionFusion)
    assert isinstance(model.aggregation, MultiScaleNetVLAD) and model.aggregation.scales == [1, 2, 4]
    assert len(_modules_of(model, nn.MultiheadAttention)) == 2  # both directions (eq. 10, 11)
    # Separate weights per stream.
    assert model.encoder.rgb.trunk.conv_stem.weight.data_ptr() != model.encoder.depth.trunk.conv_stem.weight.data_ptr()


def test_ablation_no_acma_swaps_alignment_for_rigid_completion():
    base, ablation = (build_model(n, load_pretrained=False) for n in ("cmirl_lite", "cmirl_no_acma"))
    assert _architecture_differences(architecture(base.config), architecture(ablation.config)) == {"alignment"}
    assert isinstance(ablation.alignment, RigidAlignment)
    assert not any(name.startswith("alignment.") for name, _ in ablation.named_parameters())
    assert any(name.startswith("alignment.") for name, _ in base.named_parameters())
    sparse = lidar_like_depth(1)
    rigid = ablation.dense_depth(sparse)
    expected, _ = densify(sparse[0, 0].numpy(), ablation.alignment.densify_config)
    np.testing.assert_array_equal(rigid[0, 0].numpy(), expected)
    learned = base.dense_depth(sparse)
    assert not torch.allclose(learned, rigid)


def test_ablation_no_cmaf_swaps_attention_for_concatenation():
    base, ablation = (build_model(n, load_pretrained=False) for n in ("cmirl_lite", "cmirl_no_cmaf"))
    assert _architecture_differences(architecture(base.config), architecture(ablation.config)) == {"fusion"}
    assert isinstance(ablation.fusion, ConcatFusion)
    assert _modules_of(ablation, nn.MultiheadAttention) == []
    assert ablation.fusion.out_channels == base.fusion.out_channels


def test_ablation_single_scale_keeps_one_netvlad():
    base, ablation = (build_model(n, load_pretrained=False) for n in ("cmirl_lite", "cmirl_single_scale"))
    assert _architecture_differences(architecture(base.config), architecture(ablation.config)) == {"aggregation"}
    assert isinstance(ablation.aggregation, SingleScaleNetVLAD)
    assert len(_modules_of(ablation, NetVLAD)) == 1 and len(_modules_of(base, NetVLAD)) == 3
    assert base.aggregation.out_dim == 3 * ablation.aggregation.out_dim


def test_modalink_shares_one_encoder_and_adds_the_nmf_branch():
    model = build_model("modalink", load_pretrained=False)
    assert isinstance(model.encoder, SharedEncoder) and isinstance(model.fusion, MeanFusion)
    assert isinstance(model.alignment, RigidAlignment)
    assert isinstance(model.aggregation, NetVLADWithNMF)
    assert model.encoder.rgb_channels == 256
    assert model.aggregation.out_dim == 256 * 64 + 16 * 64  # 256x64 + Kx64 as in ModaLink
    image = inputs(("image",))["image"]
    with torch.no_grad():  # one trunk: an image fed as "depth features" gives the same map
        assert torch.equal(model.encoder.encode_image(image), model.encoder.encode_depth(image))


def test_inputs_are_validated():
    model = build_model("cmirl_single_scale", load_pretrained=False).eval()
    with pytest.raises(ValueError, match="image, a depth map, or both"):
        model()
    with pytest.raises(ValueError, match=r"\(B,1,H,W\)"):
        model(depth=torch.zeros(1, 3, HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="share batch and size"):
        model(image=torch.zeros(1, 3, HEIGHT, WIDTH), depth=torch.zeros(1, 1, HEIGHT, WIDTH // 2))


def test_depth_input_is_normalised_by_max_range():
    depth = torch.tensor([[[[0.0, 40.0, 80.0, 200.0]]]])
    one = normalize_depth(depth, 80.0, 1)
    assert one.shape == (1, 1, 1, 4)
    assert one.flatten().tolist() == [0.0, 0.5, 1.0, 1.0]
    three = normalize_depth(depth, 80.0, 3)
    assert three.shape == (1, 3, 1, 4) and torch.equal(three[:, 2], one[:, 0])


def test_warp_moves_sparse_depth_by_the_predicted_shift():
    depth = torch.zeros(1, 1, 16, 64)
    depth[0, 0, 8, 20] = 12.0
    shift_px = 4
    delta = torch.tensor([[2.0 * shift_px / 64, 0.0, 0.0, 0.0]])  # grid units: 2/W per pixel
    weighted, weight = warp_sparse(depth, delta)
    # The sample of output pixel u is read at u + 4: the point now sits at column 16.
    assert weight[0, 0, 8, 16] == pytest.approx(1.0, abs=1e-4)
    assert (weighted / weight.clamp_min(1e-6))[0, 0, 8, 16] == pytest.approx(12.0, abs=1e-3)
    assert weight.sum() == pytest.approx(1.0, abs=1e-4)
    identity_weighted, identity_weight = warp_sparse(depth, torch.zeros(1, 4))
    assert torch.allclose(identity_weighted, depth, atol=1e-4) and identity_weight[0, 0, 8, 20] == pytest.approx(1.0)


def test_acma_view_adjustment_is_bounded():
    acma = ACMA(max_depth=80.0, max_shift=0.1, max_roll_deg=5.0, max_log_scale=0.1)
    with torch.no_grad():
        acma.view.head.bias.fill_(100.0)  # saturate tanh
    delta = acma.view(torch.randn(2, 3, HEIGHT, WIDTH))
    bounds = torch.tensor([0.1, 0.1, np.radians(5.0), 0.1], dtype=torch.float32)
    assert torch.allclose(delta, bounds.expand(2, 4), rtol=1e-4)


def test_acma_interpolation_fills_a_constant_surface_exactly():
    acma = ACMA(max_depth=80.0).eval()
    sparse = (lidar_like_depth(1) > 0).float() * 25.0
    with torch.no_grad():
        dense = acma(sparse)
    lower = dense[0, 0, int(0.45 * HEIGHT):]
    assert torch.allclose(lower, torch.full_like(lower, 25.0), atol=1e-3)
    # Where no level of the pyramid saw data it stays empty rather than inventing depth.
    assert (dense >= 0).all() and dense[0, 0, 0].max() <= 25.0 + 1e-3


def test_netvlad_kmeans_initialisation_recovers_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=generator), dim=1) * 5
    labels = torch.arange(4).repeat_interleave(64)
    points = centres[labels] + 0.05 * torch.randn(256, 16, generator=generator)
    feature_map = points.T.reshape(1, 16, 16, 16)  # 256 locations of one map
    vlad = NetVLAD(16, clusters=4)
    vlad.init_from_features(feature_map)
    x = torch.nn.functional.normalize(feature_map, dim=1)
    assignment = vlad.assign(x).flatten(2)[0].argmax(0)
    for cluster in range(4):  # every true cluster lands in exactly one NetVLAD cluster
        assert assignment[labels == cluster].unique().numel() == 1
    assert assignment.unique().numel() == 4
    assert vlad(feature_map).norm().item() == pytest.approx(1.0, abs=1e-5)


def test_model_init_centroids_changes_the_aggregation():
    model = build_model("cmirl_single_scale", load_pretrained=False).eval()
    before = model.aggregation.vlad.centroids.clone()
    model.init_centroids(**inputs(("image", "depth"), batch=4))
    assert not torch.allclose(before, model.aggregation.vlad.centroids)


def test_model_init_centroids_from_subsets_covers_single_modality_features():
    model = build_model("cmirl_single_scale", load_pretrained=False).eval()
    batch = inputs(("image", "depth"), batch=4)
    with torch.no_grad():
        depth_only = torch.nn.functional.normalize(model.local_features(depth=batch["depth"]), dim=1)
        points = depth_only.transpose(0, 1).flatten(1).T

    def mean_best_similarity():
        return (points @ model.aggregation.vlad.centroids.T).max(1).values.mean().item()

    model.init_centroids(**batch)
    fused_only = mean_best_similarity()
    model.init_centroids(**batch, subsets=("image", "depth", "image+depth"))
    # Centres fitted on image+depth features alone sit away from the depth-only map side's features.
    assert mean_best_similarity() > fused_only + 0.01


def test_nmf_memberships_are_non_negative_and_deterministic():
    nmf = NMF(dim=32, clusters=6, iterations=6)
    features = torch.randn(2, 32, 4, 16)
    first, second = nmf(features), nmf(features)
    assert first.shape == (2, 6, 4, 16)
    assert (first >= 0).all() and torch.equal(first, second)


def test_config_base_merge_and_errors(tmp_path):
    config = load_model_config("cmirl_no_cmaf")
    assert config["fusion"] == {"name": "concat", "out_dim": 128}  # replaced whole: the name changed
    assert config["encoder"] == load_model_config("cmirl_lite")["encoder"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: cmirl_lite\nname: bad\nfusoin: {name: concat}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*fusoin"):
        load_model_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("base: cmirl_lite\nname: unknown\nfusion: {name: magic}\n")
    with pytest.raises(ValueError, match="unknown fusion 'magic'; choose one of: cmaf, concat, mean"):
        build_model(unknown, load_pretrained=False)
    option = tmp_path / "option.yaml"
    option.write_text("base: cmirl_lite\nname: option\naggregation: {clusterz: 8}\n")
    with pytest.raises(ValueError, match="clusterz"):
        build_model(option, load_pretrained=False)
    with pytest.raises(FileNotFoundError, match="no models config 'nonexistent'"):
        load_model_config("nonexistent")
    as_dict = load_model_config({"base": "cmirl_lite", "name": "wide", "descriptor_dim": 512})
    assert as_dict["descriptor_dim"] == 512 and as_dict["fusion"] == load_model_config("cmirl_lite")["fusion"]


def test_acma_interpolation_fills_real_kinect_depth(sevenscenes):
    """Untrained ACMA completion (dT = identity) on a real depth map thinned to 10 % of its pixels."""
    raw = cv2.imread(str(sevenscenes / "frame-000100.depth.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
    depth = np.where(raw == 65535, 0.0, raw / 1000.0)[::4, ::4].astype(np.float32)  # 120x160 metres
    valid = depth > 0
    keep = valid & (np.random.default_rng(0).random(depth.shape) < 0.1)
    held_out = valid & ~keep
    with torch.no_grad():
        dense = ACMA(max_depth=10.0)(torch.from_numpy(np.where(keep, depth, 0.0))[None, None].float())[0, 0].numpy()
    error = np.abs(dense[held_out] - depth[held_out])
    assert (dense[held_out] > 0).all()
    assert np.median(error) < 0.05  # metres, on a scene at 0.8-2.9 m (measured: 0.030; IP-Basic 0.011)


def _dgp_front_camera_frame(scene):
    """A real LiDAR sweep and front-camera image of the DGP scene with their calibration."""
    calibration = json.loads(next((scene / "calibration").glob("*.json")).read_text())

    def sensor_to_vehicle(name: str) -> np.ndarray:
        extrinsics = calibration["extrinsics"][calibration["names"].index(name)]
        q, t = extrinsics["rotation"], extrinsics["translation"]
        return make_transform(quaternion_to_matrix([q["qx"], q["qy"], q["qz"], q["qw"]]), np.array([t["x"], t["y"], t["z"]]))

    k = calibration["intrinsics"][calibration["names"].index("CAMERA_01")]
    K = np.array([[k["fx"], 0.0, k["cx"]], [0.0, k["fy"], k["cy"]], [0.0, 0.0, 1.0]])
    calib = Calibration(PinholeCamera(K, 1936, 1216), invert_transform(sensor_to_vehicle("CAMERA_01")) @ sensor_to_vehicle("LIDAR"))
    points = np.load(sorted((scene / "point_cloud" / "LIDAR").glob("*.npz"))[0])["data"].astype(np.float32)
    rgb = cv2.cvtColor(cv2.imread(str(sorted((scene / "rgb" / "CAMERA_01").glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB)
    return points, rgb, calib


def test_real_lidar_and_camera_through_preprocessing_and_model(dgp_scene):
    points, rgb, calib = _dgp_front_camera_frame(dgp_scene)
    model = build_model("cmirl_lite").eval()
    sparse = torch.from_numpy(model.preprocessing.sparse_depth(points, calib))[None]
    image = torch.from_numpy(model.preprocessing.image(rgb))[None]
    assert (sparse > 0).float().mean() > 0.01
    with torch.no_grad():
        dense = model.dense_depth(sparse, image)[0, 0].numpy()
        descriptors = [model(image=image), model(depth=sparse), model(image=image, depth=sparse)]
    # Untrained ACMA (dT ~ identity) and classical IP-Basic agree on real LiDAR depth
    # (measured: median relative difference 4.5 %).
    reference, valid = densify(sparse[0, 0].numpy(), DensifyConfig(max_depth=model.preprocessing.max_depth))
    both = (dense > 0) & valid
    assert both.mean() > 0.9
    assert np.median(np.abs(dense[both] - reference[both]) / reference[both]) < 0.1
    for descriptor in descriptors:
        assert torch.isfinite(descriptor).all() and descriptor.norm().item() == pytest.approx(1.0, abs=1e-5)
