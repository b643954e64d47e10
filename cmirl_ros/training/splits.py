"""Training and validation data of a training config, and the guard that keeps test frames out of both.

`data:` (and `validation:`) is one mapping or a list of them (several simulated worlds or
conditions): `{dataset, root, seq, frames, stride, world}`. Frames of entries with the same
`world` label (default: the root) share places; frames of different worlds never do.

Test frames (`TEST_FRAMES`: the evaluation trajectories of the papers' protocols and the indoor
query frames) may never be used for training or for choices: a config selecting any of them is
refused. Simulated sequences are checked by the trajectory and source frames they were rendered
from (`sim.json`), whatever their sequence name.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmirl_ros.datasets import open_dataset
from cmirl_ros.training.data import StridedDataset


@dataclass(frozen=True)
class TestRange:
    kind: str  # dataset layout: kitti | rgbd
    sequence: str  # KITTI sequence / trajectory, or the start of an RGB-D root's name
    start: int = 0
    stop: int | None = None  # excluded; None = to the end

    def covers(self, kind: str, sequence: str, frames: np.ndarray) -> np.ndarray:
        matches = sequence == self.sequence if kind == "kitti" else sequence.startswith(self.sequence)
        if kind != self.kind or not matches:
            return np.zeros(len(frames), bool)
        return (frames >= self.start) & (frames < (np.inf if self.stop is None else self.stop))


TEST_FRAMES = (
    TestRange("kitti", "00", 3000),  # 00 frames 3000-4540: the CMIRL paper's test part
    TestRange("kitti", "02"), TestRange("kitti", "05"), TestRange("kitti", "06"), TestRange("kitti", "08"),
    TestRange("rgbd", "7scenes-redkitchen-seq01", 400, 600),  # the indoor evaluation queries
)


def _leaves(dataset) -> list:
    if hasattr(dataset, "parts"):
        return [leaf for part in dataset.parts for leaf in _leaves(part)]
    return [dataset]


def _unwrapped(dataset):
    while hasattr(dataset, "base"):
        dataset = dataset.base
    return dataset


def source_frames(dataset) -> tuple[str, str, np.ndarray]:
    """(layout, sequence, source frame numbers) of one dataset; a simulated sequence maps back through sim.json."""
    base = _unwrapped(dataset)
    frames = np.asarray(dataset.frame_ids, dtype=np.int64)
    seq_dir = getattr(base, "seq_dir", None)
    if seq_dir is not None:
        sim_file = Path(seq_dir) / "sim.json"
        if sim_file.is_file():
            sim = json.loads(sim_file.read_text())
            start, _, step = sim["source_frames"]
            return "kitti", str(sim["trajectory_name"]), start + frames * step
        return "kitti", Path(seq_dir).name, frames
    root = getattr(base, "root", None)
    return base.name.split("-", 1)[0], "" if root is None else Path(root).name, frames


def check_no_test_frames(dataset, role: str) -> None:
    """Refuse a training or validation selection that holds any declared test frame."""
    for leaf in _leaves(dataset):
        kind, sequence, frames = source_frames(leaf)
        for test in TEST_FRAMES:
            hit = frames[test.covers(kind, sequence, frames)]
            if len(hit):
                raise ValueError(
                    f"{role} data {leaf.name}: selects {len(hit)} test frames of {kind} {sequence} (source frames "
                    f"{hit.min()}-{hit.max()}; test: {test.start}-{'end' if test.stop is None else test.stop - 1}); "
                    f"test frames are never used for training or choices"
                )


def check_disjoint(training, validation) -> None:
    """Validation frames must not be training frames (same files: same root, sequence and frame)."""
    def keys(dataset) -> set:
        out = set()
        for leaf in _leaves(dataset):
            root = Path(getattr(_unwrapped(leaf), "root", leaf.name)).resolve()
            out |= {(str(root), leaf.name, int(f)) for f in leaf.frame_ids}
        return out

    shared = keys(training) & keys(validation)
    if shared:
        frames = sorted(f for _, _, f in shared)
        raise ValueError(f"validation shares {len(shared)} frames with training (frames {frames[0]}-{frames[-1]})")


class MultiDataset:
    """Several datasets as one (dataset interface); `worlds` labels every frame with its world."""

    def __init__(self, parts: list, worlds: list[str]):
        if len({part.ground_axes for part in parts}) > 1:
            raise ValueError("data: all entries must be of one layout (their ground axes differ)")
        self.parts = parts
        self.name = "+".join(part.name for part in parts)
        self.calib = parts[0].calib
        self.ground_axes = parts[0].ground_axes
        self.poses = np.concatenate([np.asarray(part.poses) for part in parts])
        self.stamps = np.concatenate([np.asarray(part.stamps) for part in parts])
        self.frame_ids = [f for part in parts for f in part.frame_ids]
        self.worlds = np.concatenate([np.full(len(part), index) for index, part in enumerate(parts)])
        labels = {label: k for k, label in enumerate(dict.fromkeys(worlds))}
        self.worlds = np.array([labels[worlds[k]] for k in self.worlds])
        self._rows = [(k, i) for k, part in enumerate(parts) for i in range(len(part))]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int):
        part, row = self._rows[i]
        return self.parts[part][row]


def data_entries(spec, role: str) -> list[dict]:
    """A `data:` / `validation:` value (one mapping or a list of them) -> a list of entries."""
    entries = spec if isinstance(spec, list) else [spec]
    if not entries or not all(isinstance(e, dict) and e.get("root") for e in entries):
        raise ValueError(f"{role}: expected a mapping with a 'root' or a list of them, got {spec!r}")
    return [dict(e) for e in entries]


def open_entries(entries: list[dict], role: str, resolve_root) -> tuple[object, list[argparse.Namespace]]:
    """Open every entry (stride applied), check it holds no test frame; several entries make a MultiDataset."""
    parts, worlds, used = [], [], []
    for entry in entries:
        args = argparse.Namespace(
            dataset=entry.get("dataset", "kitti"), root=resolve_root(entry["root"]),
            seq=None if entry.get("seq") is None else str(entry["seq"]), frames=entry.get("frames"),
            stride=int(entry.get("stride", 1)),
        )
        dataset = open_dataset(args)
        if args.stride > 1:
            dataset = StridedDataset(dataset, args.stride)
        parts.append(dataset)
        worlds.append(str(entry.get("world", Path(args.root).resolve())))
        if "world" in entry:  # recorded in the run's train_config.yaml: it decides which frames are positives
            args.world = str(entry["world"])
        used.append(args)
    dataset = parts[0] if len(parts) == 1 else MultiDataset(parts, worlds)
    check_no_test_frames(dataset, role)
    return dataset, used
