"""Simulated sequences in the KITTI odometry layout: `Simulator` renders frames, `simulate_sequence` writes them.

Layout written (exactly KITTI's, so every reader treats it as KITTI):
    ROOT/sequences/XX/image_2/NNNNNN.png   camera 2 (colour), RGB
    ROOT/sequences/XX/velodyne/NNNNNN.bin  float32 x, y, z, intensity in the LiDAR frame
    ROOT/sequences/XX/calib.txt            P0..P3 (scaled to the image size), Tr
    ROOT/sequences/XX/times.txt            seconds
    ROOT/poses/XX.txt                      T_world_cam0, 12 numbers a line
plus ROOT/sequences/XX/sim.json with the configuration that produced it.
"""
from __future__ import annotations

import json
import multiprocessing
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cmirl_ros.geometry import KittiCalib, read_kitti_calib, write_kitti_calib, write_kitti_poses
from cmirl_ros.atomic import atomic_write_text
from cmirl_ros.geometry.kitti_calib import kitti_00_02_calib
from cmirl_ros.sim.conditions import get_condition
from cmirl_ros.sim.render import CameraImage, LidarModel, Renderer, camera_rays, render_camera, scan_lidar
from cmirl_ros.sim.trajectory import apply_viewpoint_change, load_trajectory, parse_frames, revisit_weight
from cmirl_ros.sim.world import CAR_EPOCH_S, WORLD_VERSION, World, build_world


def scaled_calib(calib: KittiCalib, width: int, height: int) -> KittiCalib:
    """The calibration of the same cameras resampled to width x height (pixel-corner convention,
    as `PinholeCamera.resized`); the extrinsics implied by P are unchanged."""
    sx, sy = width / calib.image_size[0], height / calib.image_size[1]
    A = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    return KittiCalib({k: A @ P for k, P in calib.P.items()}, calib.Tr, (int(width), int(height)))


@dataclass(frozen=True)
class SimConfig:
    trajectory: str = "loop"  # "loop" or a KITTI poses file
    calib: str | None = None  # a KITTI calib.txt; None = the real KITTI 00-02 calibration
    frames: str | None = None  # "A:B" or "A:B:STEP" of the trajectory; None = all
    condition: str = "day"
    width: int = 1241
    height: int = 376
    seed: int = 0
    workers: int = 2

    def __post_init__(self):
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image size {self.width}x{self.height} is too small (at least 16x16)")
        if self.workers < 1:
            raise ValueError(f"--workers {self.workers}: need at least 1")


# The embedded default the demo generates: the loop route (revisits ~60 s apart), every
# third frame (0.3 s, 3 m apart: 319 frames), at half KITTI resolution.
DEMO_SIM = SimConfig(trajectory="loop", frames="0::3", width=620, height=188)


@dataclass
class SimFrame:
    image: np.ndarray  # (H,W,3) uint8 RGB of camera 2
    depth: np.ndarray  # (H,W) float32 camera-2 z-depth, 0 = sky (not written; for checks)
    points: np.ndarray  # (N,4) float32 LiDAR frame


class Simulator:
    """Renders any frame of a configured trajectory; the world is built once from the whole trajectory."""

    def __init__(self, config: SimConfig, world: World | None = None):
        self.config = config
        self.condition = get_condition(config.condition)
        trajectory = load_trajectory(config.trajectory)
        self.name = trajectory.name
        self.stamps = trajectory.stamps
        self.frames = parse_frames(config.frames, len(trajectory.poses))
        base = read_kitti_calib(config.calib) if config.calib else kitti_00_02_calib()
        self.calib = scaled_calib(base, config.width, config.height)
        self.world = world if world is not None else build_world(trajectory.poses, config.seed)
        self.poses = trajectory.poses
        if self.condition.viewpoint_lateral_m or self.condition.viewpoint_yaw_deg:
            weight = revisit_weight(trajectory.poses, trajectory.stamps)
            self.poses = apply_viewpoint_change(trajectory.poses, weight, self.condition.viewpoint_lateral_m,
                                                self.condition.viewpoint_yaw_deg)
        self.camera = self.calib.camera2
        self.T_cam0_cam2 = self.calib.T_cam0_cam2
        # Tr maps LiDAR points into camera 0 (T_cam0_velo), so it is also the LiDAR's pose in camera 0.
        self.T_cam0_lidar = self.calib.Tr
        self.lidar = LidarModel()
        self._rays = None
        self._lidar_dirs = None
        self._renderer: tuple[int, Renderer] | None = None

    def epoch(self, index: int) -> int:
        return int(self.stamps[index] // CAR_EPOCH_S)

    def _renderer_for(self, index: int) -> Renderer:
        # Built lazily (and per process) because an Embree scene cannot cross a fork.
        epoch = self.epoch(index)
        if self._renderer is None or self._renderer[0] != epoch:
            self._renderer = (epoch, Renderer(self.world.mesh_at(epoch)))
        return self._renderer[1]

    def release_scene(self) -> None:
        """Drop the Embree scene (worker processes forked after this build their own)."""
        self._renderer = None

    def render_image(self, index: int) -> CameraImage:
        if self._rays is None:
            self._rays = camera_rays(self.camera)
        rng = np.random.default_rng([self.config.seed, index, 1])
        T_world_cam2 = self.poses[index] @ self.T_cam0_cam2
        return render_camera(self._renderer_for(index), T_world_cam2, self.camera, self._rays, self.condition,
                             float(self.stamps[index]), rng)

    def scan(self, index: int) -> np.ndarray:
        if self._lidar_dirs is None:
            self._lidar_dirs = self.lidar.directions()
        rng = np.random.default_rng([self.config.seed, index, 2])
        weather_rng = np.random.default_rng([self.config.seed, index, 3])
        T_world_lidar = self.poses[index] @ self.T_cam0_lidar
        return scan_lidar(self._renderer_for(index), T_world_lidar, self.lidar, self._lidar_dirs, self.condition,
                          rng, weather_rng)

    def render(self, index: int) -> SimFrame:
        """Frame `index` of the whole trajectory (not of the selected range)."""
        camera = self.render_image(index)
        return SimFrame(camera.image, camera.depth, self.scan(index))


def write_frame(sequence_dir: Path, out_index: int, frame: SimFrame) -> None:
    """image_2/NNNNNN.png and velodyne/NNNNNN.bin of one frame."""
    name = f"{out_index:06d}"
    # PNG level 1: a third less CPU than the default for files of about the same size (noisy images).
    if not cv2.imwrite(str(sequence_dir / "image_2" / f"{name}.png"), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"{sequence_dir / 'image_2' / name}.png: could not write the image")
    frame.points.astype(np.float32).tofile(sequence_dir / "velodyne" / f"{name}.bin")


_WORKER: tuple[Simulator, Path] | None = None  # the per-process simulator of a pool (inherited by fork)


def _render_chunk(chunk: list[tuple[int, int]]) -> int:
    simulator, sequence_dir = _WORKER
    for out_index, index in chunk:
        write_frame(sequence_dir, out_index, simulator.render(index))
    return len(chunk)


def simulate_sequence(config: SimConfig, out_root: str | Path, seq: str, progress: bool = True,
                      simulator: Simulator | None = None) -> Path:
    """Render the configured frames and write them as KITTI sequence `seq` under `out_root`; returns the sequence dir.

    `poses/XX.txt` and `times.txt` are removed first and written last, so their presence marks a
    complete sequence (an interrupted run leaves none).
    """
    if not seq or "/" in seq:
        raise ValueError(f"--seq {seq!r}: expected a sequence name such as 00")
    simulator = simulator or Simulator(config)
    out_root = Path(out_root)
    sequence_dir = out_root / "sequences" / seq
    poses_path = out_root / "poses" / f"{seq}.txt"
    for marker in (poses_path, sequence_dir / "times.txt", sequence_dir / "sim.json"):
        marker.unlink(missing_ok=True)
    for sub in ("image_2", "velodyne"):
        (sequence_dir / sub).mkdir(parents=True, exist_ok=True)
    frames = list(simulator.frames)
    _render_frames(simulator, sequence_dir, frames, progress)
    write_kitti_calib(sequence_dir / "calib.txt", simulator.calib)
    # Provenance; the worker count is left out because it never changes the output.
    provenance = {k: v for k, v in asdict(simulator.config).items() if k != "workers"}
    provenance.update(world_version=WORLD_VERSION, trajectory_name=simulator.name,
                      source_frames=[frames[0], frames[-1] + 1, simulator.frames.step])
    atomic_write_text(sequence_dir / "sim.json", json.dumps(provenance, indent=2) + "\n")
    atomic_write_text(sequence_dir / "times.txt", "".join(f"{simulator.stamps[i]:.6e}\n" for i in frames))
    write_kitti_poses(poses_path, simulator.poses[frames])
    return sequence_dir


def _render_frames(simulator: Simulator, sequence_dir: Path, frames: list[int], progress: bool) -> None:
    global _WORKER
    jobs = list(enumerate(frames))
    chunks = [jobs[i:i + 8] for i in range(0, len(jobs), 8)]  # contiguous chunks keep one car epoch per scene build
    bar = tqdm(total=len(jobs), desc=f"sim {simulator.name} -> {sequence_dir.name} ({simulator.config.condition})",
               unit="frame", disable=not progress)
    _WORKER = (simulator, sequence_dir)
    try:
        workers = max(1, min(simulator.config.workers, len(chunks)))
        if workers == 1:
            for chunk in chunks:
                bar.update(_render_chunk(chunk))
        else:
            simulator.release_scene()
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for done in pool.imap(_render_chunk, chunks):
                    bar.update(done)
    finally:
        _WORKER = None
        bar.close()


def with_overrides(config: SimConfig, **changes) -> SimConfig:
    """`config` with the non-None `changes` applied (CLI flags over a base config)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
