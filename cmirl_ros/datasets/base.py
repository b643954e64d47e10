"""The frame record every dataset yields, the dataset registry, and the shared CLI flags."""
from __future__ import annotations

import abc
import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmirl_ros.geometry import Calibration
from cmirl_ros.geometry.frames import FrameConvention
from cmirl_ros.registry import Registry

DATASETS: Registry = Registry("dataset")


@dataclass
class Frame:
    index: int
    stamp: float  # seconds
    image: np.ndarray | None  # (H,W,3) uint8 RGB
    points: np.ndarray | None  # (N,4) float32 x, y, z, intensity in the range-sensor frame
    T_world_cam: np.ndarray  # (4,4) pose of the query camera
    calib: Calibration
    name: str  # source file stem, for tables and debugging


class Dataset(abc.ABC):
    """A sequence of frames; `poses` and `stamps` are available without loading any sensor file."""

    name: str
    calib: Calibration
    stamps: np.ndarray  # (N,)
    poses: np.ndarray  # (N,4,4) T_world_cam, in the dataset's own world
    ground_axes: tuple[int, ...] | None  # axes of the ground plane of that world for place distances; None = 3D
    frame_convention: FrameConvention  # that world, and the transform into the map frame maps store
    frame_ids: list[int]  # source frame numbers (what --frames selects on)

    def __len__(self) -> int:
        return len(self.frame_ids)

    @abc.abstractmethod
    def __getitem__(self, i: int) -> Frame:
        """Load frame i (the i-th selected frame) from disk."""


def parse_frames(spec: str | None, flag: str = "--frames") -> slice:
    """'A:B' -> slice(A, B) over source frame numbers (either end may be empty); an empty range is refused."""
    if not spec:
        return slice(None)
    start, sep, stop = spec.partition(":")
    if not sep:
        raise ValueError(f"{flag} expects A:B (for example 0:3000), got {spec!r}")
    try:
        frames = slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise ValueError(f"{flag} expects integers A:B, got {spec!r}") from None
    if frames.start is not None and frames.stop is not None and frames.stop <= frames.start:
        raise ValueError(f"{flag} {spec} is an empty range (A:B selects frames A..B-1, so B must exceed A)")
    return frames


def select_frames(frame_ids: list[int], frames: slice) -> list[int]:
    lo = -np.inf if frames.start is None else frames.start
    hi = np.inf if frames.stop is None else frames.stop
    return [f for f in frame_ids if lo <= f < hi]


def add_dataset_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=DATASETS.names(), default="kitti", help="dataset layout")
    group.add_argument("--root", type=Path, required=required, help="dataset root directory (or bag path)")
    group.add_argument("--seq", default=None, help="sequence id (kitti: 00..21)")
    group.add_argument("--frames", default=None, help="frame range A:B (source frame numbers, B excluded)")


def open_dataset(args: argparse.Namespace, flag: str = "--frames") -> Dataset:
    """The dataset the shared flags select (`args.frames` is what `flag` gave); no frames is an error."""
    dataset = DATASETS.get(args.dataset)(root=args.root, seq=args.seq, frames=parse_frames(args.frames, flag))
    if len(dataset) == 0:
        where = f"{flag} {args.frames}: no frames of {dataset.name} in that range" if args.frames else f"{args.root}: no frames"
        raise ValueError(where)
    return dataset
