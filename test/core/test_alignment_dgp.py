"""Edge-alignment score: a synthetic scene with a known answer, and the real DGP driving scene."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cmirl_ros.geometry import PinholeCamera, invert_transform, make_transform, quaternion_to_matrix
from cmirl_ros.geometry.alignment import edge_alignment_score


def _rotated(T: np.ndarray, axis: int, degrees: float) -> np.ndarray:
    """T followed by a rotation about a camera axis (x: +deg moves the scan up, y: right, z: optical axis)."""
    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return make_transform(R, np.zeros(3)) @ T


# --- synthetic: a bright box 10 m away in front of a textured wall 30 m away ---------------

def _synthetic_scene(seed: int = 0):
    rng = np.random.default_rng(seed)
    f, width, height = 200.0, 320, 240  # a wide (77 degree) view, so that a roll moves the box edges
    camera = PinholeCamera.from_params(f, f, (width - 1) / 2, (height - 1) / 2, width, height)
    box = (1.0, 6.0, -4.0, 2.0)  # x0, x1, y0, y1 at z = 10 m, off-centre
    # A scattered scan (no rings), like the DGP LiDAR, slightly wider than the view.
    n = 20000
    rays = np.column_stack([rng.uniform(-0.9, 0.9, n), rng.uniform(-0.7, 0.7, n), np.ones(n)])
    at_box = rays * 10.0
    on_box = (at_box[:, 0] > box[0]) & (at_box[:, 0] < box[1]) & (at_box[:, 1] > box[2]) & (at_box[:, 1] < box[3])
    points_cam = np.where(on_box[:, None], at_box, rays * 30.0)
    v, u = np.mgrid[0:height, 0:width]
    x, y = (u - camera.cx) / f * 10.0, (v - camera.cy) / f * 10.0
    inside = (x > box[0]) & (x < box[1]) & (y > box[2]) & (y < box[3])
    texture = cv2.GaussianBlur(rng.uniform(0, 80, (height, width)).astype(np.float32), (0, 0), 1.0)
    image = np.clip(np.where(inside, 170.0, 60.0) + texture, 0, 255).astype(np.uint8)
    T_cam_lidar = make_transform(quaternion_to_matrix([0.5, -0.5, 0.5, -0.5]), [0.1, 1.2, -1.5])
    points = (points_cam - T_cam_lidar[:3, 3]) @ T_cam_lidar[:3, :3]  # into the LiDAR frame
    return points, np.dstack([image] * 3), T_cam_lidar, camera


def test_synthetic_true_extrinsic_beats_every_two_degree_rotation():
    points, image, T, camera = _synthetic_scene()
    true = edge_alignment_score(points, image, T, camera)
    assert true > 0.95  # measured 0.99
    for axis in range(3):
        for degrees in (2.0, -2.0):
            perturbed = edge_alignment_score(points, image, _rotated(T, axis, degrees), camera)
            # A roll moves the box edges by only a few pixels (measured drop 0.005); pitch and yaw by 0.15+.
            assert true - perturbed > (0.0 if axis == 2 else 0.1), (axis, degrees, true, perturbed)


def test_rejects_mismatched_image_and_empty_view():
    points, image, T, camera = _synthetic_scene()
    with pytest.raises(ValueError, match="camera is 320x240"):
        edge_alignment_score(points, image[:100], T, camera)
    with pytest.raises(ValueError, match="project into the image"):
        edge_alignment_score(points, image, _rotated(T, 1, 180.0), camera)


# --- real: the TRI-DGP driving scene, LiDAR into CAMERA_01 --------------------------------

@pytest.fixture(scope="module")
def dgp_front(dgp_scene):
    """(camera, shipped T_cam_lidar, [(points, rgb)] for the 3 samples) of the DGP scene."""
    calibration = json.loads(next((dgp_scene / "calibration").glob("*.json")).read_text())

    def sensor_to_vehicle(name: str) -> np.ndarray:
        extrinsics = calibration["extrinsics"][calibration["names"].index(name)]
        q, t = extrinsics["rotation"], extrinsics["translation"]
        return make_transform(quaternion_to_matrix([q["qx"], q["qy"], q["qz"], q["qw"]]), [t["x"], t["y"], t["z"]])

    k = calibration["intrinsics"][calibration["names"].index("CAMERA_01")]
    camera = PinholeCamera.from_params(k["fx"], k["fy"], k["cx"], k["cy"], 1936, 1216)
    T = invert_transform(sensor_to_vehicle("CAMERA_01")) @ sensor_to_vehicle("LIDAR")
    scans = sorted((dgp_scene / "point_cloud" / "LIDAR").glob("*.npz"))
    images = sorted((dgp_scene / "rgb" / "CAMERA_01").glob("*.jpg"))
    assert len(scans) == len(images) == 3
    samples = [(np.load(s)["data"], cv2.cvtColor(cv2.imread(str(i)), cv2.COLOR_BGR2RGB)) for s, i in zip(scans, images)]
    return camera, T, samples


# The data shows the shipped extrinsic about 1 degree off: the score peaks at a further
# -1.0 deg about camera x and -0.75 deg about y on all three samples (0.75-0.76 against
# 0.68-0.70), and the lane vanishing point independently puts the image horizon 0.6 deg
# below the LiDAR ground plane's. So 2-degree rotations *towards* that optimum
# (-x, -y) land nearer to it than the shipped extrinsic and are not asserted against;
# rotations about the optical axis (z) leave the score on a plateau up to +5 deg with
# this 48-degree camera and are not asserted either.
SHIPPED_BEATS = [(0, +2.0), (1, +2.0), (0, +5.0), (0, -5.0), (1, +5.0), (1, -5.0)]
OPTIMUM = [(0, -1.0), (1, -0.75)]


def _with(T, rotations):
    for axis, degrees in rotations:
        T = _rotated(T, axis, degrees)
    return T


def test_real_shipped_extrinsic_beats_rotations_away_from_the_data_optimum(dgp_front):
    camera, T, samples = dgp_front
    for index, (points, rgb) in enumerate(samples):
        shipped = edge_alignment_score(points, rgb, T, camera)
        assert shipped > 0.65, index  # measured 0.68-0.70; chance is 0.5
        for axis, degrees in SHIPPED_BEATS:
            perturbed = edge_alignment_score(points, rgb, _rotated(T, axis, degrees), camera)
            assert shipped > perturbed, (index, axis, degrees, shipped, perturbed)


def test_real_scan_aligns_best_about_one_degree_from_the_shipped_extrinsic(dgp_front):
    camera, T, samples = dgp_front
    corrected = _with(T, OPTIMUM)
    for index, (points, rgb) in enumerate(samples):
        best = edge_alignment_score(points, rgb, corrected, camera)
        assert best > edge_alignment_score(points, rgb, T, camera) + 0.03, index  # measured +0.05..+0.07
        for axis in (0, 1):
            for degrees in (2.0, -2.0):
                perturbed = edge_alignment_score(points, rgb, _rotated(corrected, axis, degrees), camera)
                assert best > perturbed + 0.02, (index, axis, degrees, best, perturbed)
