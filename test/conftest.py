"""Shared fixtures: real data beside the checkout, and an isolated DDS domain per test session."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    # Each test session gets its own DDS domain and a loopback-only FastDDS profile, so
    # parallel runs never see each other's topics and nothing leaves the machine.
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(ROOT / "config" / "fastdds_local.xml")
    os.environ.setdefault("CMIRL_TORCH_THREADS", "2")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (present in CI; see ../shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kitti_meta(shared_data) -> Path:
    return shared_data / "kitti-odometry-meta"


@pytest.fixture(scope="session")
def sevenscenes(shared_data) -> Path:
    return shared_data / "7scenes-redkitchen-seq01-frames0000-0599"


@pytest.fixture(scope="session")
def dgp_scene(shared_data) -> Path:
    return shared_data / "tri-dgp-driving-scene01"
