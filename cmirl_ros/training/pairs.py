"""Positives and negatives from poses, as the CMIRL paper defines them (positive < 5 m,
negative > 20 m); indoor RGB-D adds a view-angle condition, since a camera turned
around in the same spot sees another place."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmirl_ros.geometry.poses import place_distances, view_angles_deg


@dataclass(frozen=True)
class PairRule:
    positive_distance: float = 5.0
    negative_distance: float = 20.0
    positive_angle_deg: float | None = None  # also require views within this angle
    negative_angle_deg: float | None = None  # views further apart than this are negatives too

    @classmethod
    def from_config(cls, cfg: dict) -> "PairRule":
        rule = cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})
        if rule.positive_distance >= rule.negative_distance:
            raise ValueError(
                f"pairs: positive_distance ({rule.positive_distance}) must be below negative_distance ({rule.negative_distance})"
            )
        return rule


def place_relations(poses: np.ndarray, rule: PairRule, axes=None) -> tuple[np.ndarray, np.ndarray]:
    """(positives, negatives): (N,N) bool masks over the frames of one sequence of `T_world_cam`."""
    poses = np.asarray(poses, dtype=np.float64)
    dist = place_distances(poses, poses, axes)
    positives = dist < rule.positive_distance
    negatives = dist > rule.negative_distance
    if rule.positive_angle_deg is not None or rule.negative_angle_deg is not None:
        angles = view_angles_deg(poses, poses)
        if rule.positive_angle_deg is not None:
            positives &= angles < rule.positive_angle_deg
        if rule.negative_angle_deg is not None:
            negatives |= angles > rule.negative_angle_deg
    return positives, negatives


def dataset_relations(dataset, rule: PairRule) -> tuple[np.ndarray, np.ndarray]:
    """`place_relations` of a dataset's poses; frames of different simulated worlds (a dataset's optional
    `worlds`, one label per frame) share no place: never positives, always negatives."""
    positives, negatives = place_relations(dataset.poses, rule, dataset.ground_axes)
    worlds = getattr(dataset, "worlds", None)
    if worlds is not None:
        same = np.asarray(worlds)[:, None] == np.asarray(worlds)[None, :]
        positives &= same
        negatives |= ~same
    return positives, negatives
