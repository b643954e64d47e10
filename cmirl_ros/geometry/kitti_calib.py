"""KITTI odometry `calib.txt`: P0..P3 (3x4 projections of the rectified cameras) and Tr (velodyne -> cam0)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmirl_ros.atomic import atomic_write_text
from cmirl_ros.geometry.camera import Calibration, PinholeCamera, make_transform

KITTI_IMAGE_SIZE = (1241, 376)  # width, height of the odometry benchmark's colour images (seq 00-02)
_REQUIRED_KEYS = ("P0", "P1", "P2", "P3", "Tr")


@dataclass(frozen=True)
class KittiCalib:
    P: dict[str, np.ndarray]  # "P0".."P3" -> (3,4)
    Tr: np.ndarray  # (4,4) T_cam0_velo
    image_size: tuple[int, int] = KITTI_IMAGE_SIZE

    @property
    def camera2(self) -> PinholeCamera:
        return PinholeCamera(self.P["P2"][:, :3], *self.image_size)

    @property
    def T_cam0_cam2(self) -> np.ndarray:
        """Pose of camera 2 in camera 0. Rectified cameras share a rotation; P2[:,3] = K @ t_cam2_cam0."""
        t_cam2_cam0 = np.linalg.solve(self.P["P2"][:, :3], self.P["P2"][:, 3])
        return make_transform(np.eye(3), -t_cam2_cam0)

    @property
    def T_cam2_velo(self) -> np.ndarray:
        T_cam2_cam0 = make_transform(np.eye(3), np.linalg.solve(self.P["P2"][:, :3], self.P["P2"][:, 3]))
        return T_cam2_cam0 @ self.Tr

    def calibration(self) -> Calibration:
        """Camera 2 (the colour camera the papers use) and the velodyne -> camera 2 transform."""
        return Calibration(self.camera2, self.T_cam2_velo)


# The real calibration of KITTI odometry sequences 00-02 (recording 2011-10-03), from
# ../shared/data/kitti-odometry-meta/calib/2011_10_03_seq00-02.txt, embedded so the simulator and
# the benchmarks work without the shared data. The one source of KITTI's intrinsics in the code.
KITTI_00_02_P = {
    "P0": [718.856, 0.0, 607.1928, 0.0, 0.0, 718.856, 185.2157, 0.0, 0.0, 0.0, 1.0, 0.0],
    "P1": [718.856, 0.0, 607.1928, -386.1448, 0.0, 718.856, 185.2157, 0.0, 0.0, 0.0, 1.0, 0.0],
    "P2": [718.856, 0.0, 607.1928, 45.38225, 0.0, 718.856, 185.2157, -0.1130887, 0.0, 0.0, 1.0, 0.003779761],
    "P3": [718.856, 0.0, 607.1928, -337.2877, 0.0, 718.856, 185.2157, 2.369057, 0.0, 0.0, 1.0, 0.004915215],
}
KITTI_00_02_TR = [
    4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02,
    -7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02,
    9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01,
]


def kitti_00_02_calib() -> KittiCalib:
    """Sequences 00-02 at their native 1241x376; `.camera2` is the colour camera the papers use."""
    P = {k: np.array(v, np.float64).reshape(3, 4) for k, v in KITTI_00_02_P.items()}
    Tr = np.vstack([np.array(KITTI_00_02_TR).reshape(3, 4), [0, 0, 0, 1]])
    return KittiCalib(P, Tr, KITTI_IMAGE_SIZE)


def read_kitti_calib(path: str | Path, image_size: tuple[int, int] = KITTI_IMAGE_SIZE) -> KittiCalib:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: calibration file not found")
    values: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            raise ValueError(f"{path}:{lineno}: expected 'KEY: 12 numbers', got {line[:60]!r}")
        try:
            numbers = np.array([float(x) for x in rest.split()])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: non-numeric value in {key.strip()}") from None
        if numbers.size != 12:
            raise ValueError(f"{path}:{lineno}: {key.strip()} has {numbers.size} numbers, expected 12")
        values[key.strip()] = numbers.reshape(3, 4)
    missing = [k for k in _REQUIRED_KEYS if k not in values]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)} (a KITTI odometry calib.txt has P0..P3 and Tr)")
    Tr = np.vstack([values["Tr"], [0, 0, 0, 1]])
    return KittiCalib({k: values[k] for k in ("P0", "P1", "P2", "P3")}, Tr, tuple(image_size))


def format_kitti_calib(calib: KittiCalib) -> str:
    rows = [(k, calib.P[k]) for k in ("P0", "P1", "P2", "P3")] + [("Tr", calib.Tr[:3])]
    return "".join(f"{k}: " + " ".join(f"{v:.12e}" for v in m.reshape(-1)) + "\n" for k, m in rows)


def write_kitti_calib(path: str | Path, calib: KittiCalib) -> None:
    atomic_write_text(path, format_kitti_calib(calib))
