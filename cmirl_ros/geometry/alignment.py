"""How well a LiDAR scan's occlusion boundaries line up with the edges of a camera image.

Used to check a LiDAR-to-camera extrinsic against real data: with the right rotation the
silhouettes of objects in the scan fall on the silhouettes in the image.

The score, and why it is built this way
---------------------------------------
1. Boundaries come from the scan alone, seen from the camera centre. Every return is
   expressed in the camera frame and reduced to its bearing (unit vector). Two returns
   whose bearings are within `neighbour_angle_deg` are neighbours: a KD-tree on bearings
   needs no scan order (the DGP sweep's file order is none: consecutive returns jump by
   tens of degrees of azimuth) and copes with its scattered, non-ring pattern. A pair is
   an *occlusion pair* when the farther range is `jump_ratio` times the nearer one and a
   *continuous pair* when the ranges agree within `continuous_ratio`. Rotating the
   extrinsic rotates all bearings rigidly, so the pairs and their labels do not change
   with the rotation being tested (the hidden-return test of 2 looks at directions in the
   image: 0.4 % of labels change for a 2+2 degree rotation): only where they land does. (Depth edges
   rendered into an image instead change with the projection and with the pixel density
   of the scan.)
2. Returns the camera cannot see are dropped. A roof LiDAR sees over and around nearby
   cars; those far returns project *inside* the car in the camera image, and the pair
   they form with the car crosses no image edge. A far return is judged hidden when the
   much nearer returns around it surround it in the image (no angular gap of 180
   degrees or more between the directions to them), the same test that also removes
   returns from behind glass.
3. Image evidence is directional and local to the pair. An occlusion boundary lies
   between the near and the far return, so the silhouette must *cross* the image segment
   joining their projections: its evidence is the largest gradient component along the
   segment direction (Sobel of the blurred grey image) over points sampled on it.
   Texture parallel to the segment does not count.
4. The score compares like with like: it is the area under the ROC curve (Mann-Whitney)
   of that evidence, occlusion pairs against continuous pairs of the same length scale in
   the same image. Dense texture (trees, road paint) raises both classes alike, so the
   score measures only whether occlusion pairs cross stronger edges than continuous ones;
   0.5 is chance, 1.0 perfect. Being rank-based it ignores image contrast and exposure.

Measured on the real TRI-DGP scene (CAMERA_01, 3 samples; test/core/test_alignment_dgp.py):
the shipped calibration scores 0.68-0.70; the score peaks at a further rotation of -1.0
degree about the camera x axis (scan moved down in the image) and -0.75 degree about y
(scan moved left), scoring 0.75-0.76 on every sample. The lane-marking vanishing point,
an independent check, puts the image horizon 0.6 degrees below the horizon of the LiDAR
ground plane: the same direction. Rotation about the optical axis is weakly observable
with this narrow (48 degree) camera: positive rotations up to 5 degrees keep the score on
a plateau.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import rankdata

from cmirl_ros.geometry.camera import PinholeCamera, transform_points
from cmirl_ros.geometry.projection import validate_points


@dataclass(frozen=True)
class EdgeAlignmentConfig:
    neighbour_angle_deg: float = 1.0  # about twice the scan's point spacing in the DGP front view
    jump_ratio: float = 1.3  # far/near range ratio that makes an occlusion pair
    continuous_ratio: float = 1.05  # ranges this close belong to one surface
    min_depth: float = 1.0  # metres in front of the camera
    image_scale: int = 2  # gradients on the image shrunk by this factor
    gradient_sigma: float = 1.0  # Gaussian blur (pixels of the shrunk image) before Sobel
    samples_per_pair: int = 12  # points sampled on each pair's image segment
    min_pairs: int = 20  # fewer pairs of either class in view -> no meaningful score


def edge_alignment_score(
    points: np.ndarray,
    image: np.ndarray,
    T_cam_lidar: np.ndarray,
    camera: PinholeCamera,
    config: EdgeAlignmentConfig = EdgeAlignmentConfig(),
) -> float:
    """ROC AUC (0.5 = chance, 1 = perfect) of image edges crossing the scan's occlusion pairs.

    points: (N,3|4) LiDAR returns in the LiDAR frame; image: (H,W,3) RGB or (H,W) grey of
    `camera`'s size; T_cam_lidar: 4x4 LiDAR -> camera. Higher means better aligned.
    """
    points = validate_points(points, "edge_alignment_score points")
    image = np.asarray(image)
    if image.shape[:2] != (camera.height, camera.width):
        raise ValueError(f"image is {image.shape[1::-1]} but the camera is {camera.width}x{camera.height}")
    in_cam = transform_points(np.asarray(T_cam_lidar, dtype=np.float64), np.asarray(points[:, :3], dtype=np.float64))
    in_cam = in_cam[in_cam[:, 2] > config.min_depth]  # NaN compares False, so NaN returns go too
    small = camera.resized(camera.width // config.image_scale, camera.height // config.image_scale)
    # Keep a margin of two neighbourhoods around the image so that every return in view
    # still has all of its neighbours (the occlusion test needs them).
    margin = 2.0 * np.tan(np.radians(config.neighbour_angle_deg)) * max(small.fx, small.fy)
    uv, _ = small.project(in_cam)
    around_view = _in_image(uv, small, margin)
    in_cam, uv = in_cam[around_view], uv[around_view]
    ranges = np.linalg.norm(in_cam, axis=1)

    near, far, occluding, continuous = _neighbour_pairs(in_cam, ranges, config)
    in_view = _in_image(uv, small, 0.0)
    labelled = in_view[near] & in_view[far] & (occluding | continuous)
    near, far, occluding = near[labelled], far[labelled], occluding[labelled]
    evidence = _crossing_strength(uv[near], uv[far], _image_gradients(image, small, config.gradient_sigma), config.samples_per_pair)

    positives, negatives = evidence[occluding], evidence[~occluding]
    if min(len(positives), len(negatives)) < config.min_pairs:
        raise ValueError(
            f"only {len(positives)} occlusion and {len(negatives)} continuous LiDAR pairs project into the image "
            f"(need {config.min_pairs} of each): check T_cam_lidar and the camera"
        )
    return _roc_auc(positives, negatives)


def _in_image(uv: np.ndarray, camera: PinholeCamera, margin: float) -> np.ndarray:
    u, v = uv[:, 0], uv[:, 1]
    return (u >= -margin) & (u <= camera.width - 1 + margin) & (v >= -margin) & (v <= camera.height - 1 + margin)


def _neighbour_pairs(in_cam: np.ndarray, ranges: np.ndarray, config: EdgeAlignmentConfig):
    """Neighbour pairs by bearing from the camera centre: (near, far, occluding, continuous)."""
    bearings = in_cam / ranges[:, None]
    tree = cKDTree(bearings)
    chord = 2.0 * np.sin(np.radians(config.neighbour_angle_deg) / 2.0)
    pairs = tree.query_pairs(chord, output_type="ndarray")
    a, b = pairs[:, 0], pairs[:, 1]
    a_nearer = ranges[a] < ranges[b]
    near, far = np.where(a_nearer, a, b), np.where(a_nearer, b, a)
    ratio = ranges[far] / ranges[near]
    occluding = ratio > config.jump_ratio
    hidden = _hidden_from_camera(in_cam, ranges, np.unique(far[occluding]), tree, chord, config.jump_ratio)
    return near, far, occluding & ~hidden[far], ratio < config.continuous_ratio


def _hidden_from_camera(in_cam, ranges, candidates, tree, chord, jump_ratio) -> np.ndarray:
    """True for far returns that nearer returns surround in the image (seen by the LiDAR only)."""
    hidden = np.zeros(len(in_cam), dtype=bool)
    plane = in_cam[:, :2] / in_cam[:, 2:3]  # normalised image coordinates
    bearings = in_cam / ranges[:, None]
    for i, neighbours in zip(candidates, tree.query_ball_point(bearings[candidates], chord)):
        neighbours = np.asarray(neighbours)
        nearer = neighbours[ranges[neighbours] * jump_ratio < ranges[i]]
        if len(nearer) < 3:
            continue
        offsets = plane[nearer] - plane[i]
        angles = np.sort(np.arctan2(offsets[:, 1], offsets[:, 0]))
        gaps = np.diff(np.append(angles, angles[0] + 2.0 * np.pi))
        hidden[i] = gaps.max() < np.pi
    return hidden


def _image_gradients(image: np.ndarray, camera: PinholeCamera, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    grey = np.asarray(image, dtype=np.float32)  # cv2 colour conversion takes no float64
    grey = grey if grey.ndim == 2 else cv2.cvtColor(grey, cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (camera.width, camera.height), interpolation=cv2.INTER_AREA)
    grey = cv2.GaussianBlur(grey, (0, 0), sigma)
    return cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)


def _crossing_strength(start: np.ndarray, end: np.ndarray, gradients, samples: int) -> np.ndarray:
    """Largest image-gradient component along each start->end segment (an edge crossing it)."""
    gx, gy = gradients
    height, width = gx.shape
    step = end - start
    direction = step / np.maximum(np.linalg.norm(step, axis=1, keepdims=True), 1e-9)
    t = np.linspace(0.0, 1.0, samples)[None, :, None]
    along = start[:, None, :] + t * step[:, None, :]
    u = np.clip(np.rint(along[..., 0]).astype(np.int64), 0, width - 1)
    v = np.clip(np.rint(along[..., 1]).astype(np.int64), 0, height - 1)
    return np.abs(gx[v, u] * direction[:, :1] + gy[v, u] * direction[:, 1:]).max(axis=1)


def _roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(positive > negative) + P(tie)/2, from the Mann-Whitney rank sum."""
    ranks = rankdata(np.concatenate([positives, negatives]))
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
