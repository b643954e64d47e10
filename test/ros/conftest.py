"""Fixtures of the ROS tests: a small simulated sequence, its bag, and a map built from it.

The model is `cmirl_lite` untrained (ImageNet-initialised, no shipped weights needed): these tests
check the ROS plumbing (transport, timing, stamps, frames, and that the node answers exactly what
the offline localizer answers), not retrieval quality.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

MODEL = "cmirl_lite"
SEQ = "00"
# ~4 s of the loop route at 10 Hz, third-KITTI resolution: quick to render, encode and replay.
SIM_FRAMES = "0:40"
SIM_SIZE = (416, 126)


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory) -> Path:
    from cmirl_ros.sim.sequence import SimConfig, simulate_sequence

    root = tmp_path_factory.mktemp("sim")
    config = SimConfig(trajectory="loop", frames=SIM_FRAMES, width=SIM_SIZE[0], height=SIM_SIZE[1], workers=1)
    simulate_sequence(config, root, SEQ, progress=False)
    return root


@pytest.fixture(scope="session")
def sim_calib_file(sim_root) -> Path:
    return sim_root / "sequences" / SEQ / "calib.txt"


@pytest.fixture(scope="session")
def sim_bag(sim_root, tmp_path_factory) -> Path:
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.bag_writer import write_bag_from_dataset

    return write_bag_from_dataset(KittiSequence(sim_root, SEQ), tmp_path_factory.mktemp("bag") / "sim.mcap", progress=False)


@pytest.fixture(scope="session")
def lite_checkpoint(tmp_path_factory) -> Path:
    """The untrained model saved once, so the map builder and every node process use the same
    weights (a config name is initialised afresh, with new random heads, in each process)."""
    import torch

    from cmirl_ros.models import load_model
    from cmirl_ros.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model") / MODEL
    save_checkpoint(load_model(MODEL, device="cpu"), directory)
    return directory


@pytest.fixture(scope="session")
def lite_model(lite_checkpoint):
    import torch

    from cmirl_ros.models import load_model

    torch.set_num_threads(int(os.environ.get("CMIRL_TORCH_THREADS", "2")))
    return load_model(lite_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def lite_map(sim_root, lite_model, tmp_path_factory) -> Path:
    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.mapdb import build_map

    mapdb = build_map(KittiSequence(sim_root, SEQ), lite_model, keyframe_distance=2.0, progress=False)
    return mapdb.save(tmp_path_factory.mktemp("map") / "map")


@pytest.fixture
def ros_workdir(tmp_path) -> Path:
    """Where a test's processes write their logs (kept by pytest for a failed test)."""
    return tmp_path


@pytest.fixture
def live_localizer(ros_workdir):
    """`live_localizer(params, node_name)` -> (process, node, client): a localizer process that has
    logged `ready` (default: READY_LOG), and a test-side rclpy node with a `Client`. At teardown both
    stop, and the localizer must have exited cleanly on SIGINT, without a traceback."""
    import rclpy

    from cmirl_ros.ros.localizer_node import READY_LOG
    from cmirl_ros.ros.processes import start_localizer
    from test_node_lifecycle import Client

    started = []

    def start(params: dict, node_name: str, ready: str = READY_LOG):
        process = start_localizer(params, ros_workdir)
        rclpy.init()
        node = rclpy.create_node(node_name)
        started.append((process, node))
        process.wait_for(ready, 120)
        return process, node, Client(rclpy, node)

    yield start
    for process, node in started:
        node.destroy_node()
        rclpy.try_shutdown()
        code = process.stop(signal.SIGINT)
        assert code == 0 and "Traceback" not in process.log(), process.log()[-3000:]


@pytest.fixture
def refused_start(ros_workdir):
    """`refused_start(params, workdir=ros_workdir)` -> (exit code, ERROR lines, log) of a plain localizer
    started with `params`, which should fail to configure and exit."""
    from cmirl_ros.ros.processes import start_localizer

    def start(params: dict, workdir: Path = ros_workdir):
        process = start_localizer(params, workdir)
        try:
            code = process.process.wait(timeout=120)
        finally:
            process.stop()
        log = process.log()
        return code, [line for line in log.splitlines() if "[ERROR]" in line], log

    return start
