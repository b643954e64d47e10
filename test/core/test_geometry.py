"""Sensor geometry on synthetic inputs with known answers."""
import numpy as np
import pytest

from cmirl_ros.geometry import (
    Calibration,
    DensifyConfig,
    PinholeCamera,
    ProjectionStats,
    densify,
    invert_transform,
    make_transform,
    matrix_to_quaternion,
    place_matches,
    project_to_depth,
    quaternion_to_matrix,
    revisit_mask,
    time_exclusion,
    travelled_distance,
)
from cmirl_ros.preprocess import Preprocessing

CAM = PinholeCamera.from_params(100.0, 100.0, 49.5, 29.5, 100, 60)


def test_projection_nearest_point_wins_and_drops_invalid():
    points = np.array(
        [
            [0.0, 0.0, 10.0, 1.0],  # centre pixel, far
            [0.0, 0.0, 5.0, 1.0],  # same ray, nearer: must win
            [0.0, 0.0, -5.0, 1.0],  # behind the camera
            [100.0, 0.0, 5.0, 1.0],  # outside the image
            [np.nan, 0.0, 5.0, 1.0],  # NaN: dropped and counted
        ],
        dtype=np.float32,
    )
    stats = ProjectionStats()
    depth = project_to_depth(points, np.eye(4), CAM, stats)
    assert depth.shape == (60, 100)
    v, u = np.nonzero(depth)
    assert (v.tolist(), u.tolist()) == ([29], [49]) or (v.tolist(), u.tolist()) == ([30], [50])
    assert depth[v[0], u[0]] == pytest.approx(5.0)
    assert stats.nan_dropped == 1 and stats.behind == 1 and stats.outside == 1 and stats.kept == 2


def test_projection_pixel_matches_pinhole_model():
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-3, 3, (200, 2)), rng.uniform(4, 20, 200)]
    T = make_transform(quaternion_to_matrix([0.01, -0.02, 0.03, 1.0]), [0.1, -0.2, 0.3])
    depth = project_to_depth(pts, T, CAM)
    cam_pts = pts @ T[:3, :3].T + T[:3, 3]
    u = np.floor(100 * cam_pts[:, 0] / cam_pts[:, 2] + 49.5 + 0.5).astype(int)
    v = np.floor(100 * cam_pts[:, 1] / cam_pts[:, 2] + 29.5 + 0.5).astype(int)
    inside = (u >= 0) & (u < 100) & (v >= 0) & (v < 60)
    for ui, vi, zi in zip(u[inside], v[inside], cam_pts[inside, 2]):
        assert depth[vi, ui] <= zi + 1e-4  # the pixel holds this point or a nearer one


def test_empty_and_malformed_clouds_are_refused():
    with pytest.raises(ValueError, match="empty point cloud"):
        project_to_depth(np.zeros((0, 4), np.float32), np.eye(4), CAM)
    with pytest.raises(ValueError, match=r"\(N,3\) or \(N,4\)"):
        project_to_depth(np.zeros((10, 2), np.float32), np.eye(4), CAM)


def test_densify_fills_between_scan_lines_and_keeps_measurements():
    sparse = np.zeros((64, 128), np.float32)
    sparse[::4, ::3] = 12.0  # scan-line pattern of a flat wall at 12 m
    sparse[20:40:4, 40:70:3] = 6.0  # a nearer object
    dense, valid = densify(sparse, DensifyConfig(max_depth=80.0))
    assert valid[8:, :].all()
    measured = sparse > 0
    np.testing.assert_array_equal(dense[measured], sparse[measured])
    assert abs(dense[30, 55] - 6.0) < 0.5  # inside the object: foreground depth, not background
    assert abs(dense[50, 100] - 12.0) < 0.5


def test_camera_crop_resize_keeps_rays():
    cam = PinholeCamera.from_params(718.856, 718.856, 607.1928, 185.2157, 1241, 376)
    virtual = cam.cropped(top=177).resized(800, 128)
    ray = np.array([[1.5, 0.8, 10.0]])
    u0, v0 = cam.project(ray)[0][0]
    u1, v1 = virtual.project(ray)[0][0]
    assert u1 == pytest.approx((u0 + 0.5) * 800 / 1241 - 0.5)
    assert v1 == pytest.approx((v0 - 177 + 0.5) * 128 / 199 - 0.5)


def test_preprocessing_depth_and_image_share_the_virtual_camera():
    pre = Preprocessing(height=32, width=100, crop_top=0.5)
    calib = Calibration(CAM, np.eye(4))
    image = np.zeros((60, 100, 3), np.uint8)
    image[45, 70] = 255  # a bright pixel in the kept bottom half
    x = pre.image(image)
    assert x.shape == (3, 32, 100)
    depth = pre.sparse_depth(np.array([[(70 - 49.5) * 8 / 100, (45 - 29.5) * 8 / 100, 8.0]]), calib)
    assert depth.shape == (1, 32, 100)
    v, u = np.unravel_index(np.argmax(depth[0]), depth[0].shape)
    vb, ub = np.unravel_index(np.argmax(x[0]), x[0].shape)
    assert abs(int(v) - int(vb)) <= 1 and abs(int(u) - int(ub)) <= 1


def test_rigid_helpers():
    R = quaternion_to_matrix([0.2, -0.1, 0.3, 0.9])
    T = make_transform(R, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(invert_transform(T) @ T, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(matrix_to_quaternion(R)), R, atol=1e-12)


def _straight_line_poses(n, step):
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 2, 3] = np.arange(n) * step  # driving along z (forward in the KITTI camera frame)
    return poses


def test_place_matches_uses_ground_axes_and_angle():
    poses = _straight_line_poses(3, 4.0)
    poses[1, 1, 3] = 50.0  # 50 m "down" in a y-down frame: ignored on the ground plane
    same = place_matches(poses, poses, radius=5.0, axes=(0, 2))
    assert same[0, 1] and not same[0, 2]
    turned = poses.copy()
    turned[1, :3, :3] = quaternion_to_matrix([0, np.sin(np.pi / 4), 0, np.cos(np.pi / 4)])  # 90 deg yaw
    assert not place_matches(turned, turned, 5.0, (0, 2), max_angle_deg=30.0)[0, 1]


def test_revisit_and_time_exclusion():
    out = _straight_line_poses(10, 10.0)
    poses = np.concatenate([out, out[::-1]])  # drive out and back
    stamps = np.arange(20, dtype=float) * 10.0
    revisits = revisit_mask(poses, stamps, radius=5.0, exclude_seconds=15.0, axes=(0, 2))
    assert not revisits[:10].any()
    assert revisits[11:].all()  # frame 10 is only 10 s after frame 9 at the same spot: excluded
    assert time_exclusion(stamps[:2], stamps, 10.0).sum() == 2 + 3
    assert travelled_distance(poses, (0, 2))[-1] == pytest.approx(180.0)
