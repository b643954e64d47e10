"""Ctrl-C as `ros2 launch` delivers it: the `localizer` entry point runs under a pseudo-terminal
(launch's emulate_tty=True), SIGINT goes to the process alone (not its group), and launch escalates
to SIGTERM 5 s later. The node must be gone within 2 s, idle or answering queries, plain or managed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from cmirl_ros.ros.localizer_node import READY_LOG
from cmirl_ros.ros.processes import write_params_file
from cmirl_ros.topics import IMAGE
from test_node_lifecycle import Client, transition

EXIT_WITHIN_S = 2.0


def entry_point_command() -> list[str]:
    """What the installed `localizer` console script runs (the executable launch starts)."""
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "localizer"]
    module, function = entry.value.split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


class PtyProcess:
    """A child whose stdin/stdout/stderr are a pseudo-terminal, drained into a log as launch does."""

    def __init__(self, args: list[str], log_path: Path):
        self.log_path = log_path
        master, slave = os.openpty()
        environment = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=environment)
        os.close(slave)
        self._master = master
        self._output = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                return
            if not data:
                return
            self._output.extend(data)

    def log(self) -> str:
        return self._output.decode(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.process.poll() is None, f"exited with {self.process.returncode}:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"no '{text}' within {timeout} s:\n{self.log()[-3000:]}"
            time.sleep(0.05)

    def interrupt(self) -> float:
        """SIGINT to the process only; seconds until it exited (launch's SIGTERM comes at 5 s)."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        return time.monotonic() - start

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=2)
        os.close(self._master)
        self.log_path.write_text(self.log())


@pytest.mark.parametrize("managed", [False, True], ids=["plain", "managed"])
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_node_exits_within_2_s_of_sigint_under_a_pty(managed, busy, sim_root, lite_checkpoint, lite_map, ros_workdir):
    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from lifecycle_msgs.msg import Transition
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.conversions import numpy_to_image, seconds_to_stamp

    params = {"managed": managed, "model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu",
              "verify": "none", "qos": "reliable", "num_threads": 2, "diagnostics_period": 0.1}
    params_file = write_params_file(ros_workdir / "params.yaml", params)
    process = PtyProcess(entry_point_command() + ["--ros-args", "--params-file", str(params_file)],
                         ros_workdir / "localizer.log")
    rclpy.init()
    node = rclpy.create_node("cmirl_sigint_test")
    client = Client(rclpy, node)
    try:
        if managed:
            process.wait_for("waiting for configure", 120)
            assert transition(client, Transition.TRANSITION_CONFIGURE)
            assert transition(client, Transition.TRANSITION_ACTIVATE)
        process.wait_for(READY_LOG, 120)
        if busy:  # images at 30 Hz, far faster than inference: the worker is mid-query at the signal
            images = node.create_publisher(Image, IMAGE, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
            matches = []
            node.create_subscription(PoseWithCovarianceStamped, "/localizer/match", matches.append, 10)
            image = KittiSequence(sim_root, "00")[3].image
            stop = threading.Event()

            def publish() -> None:
                k = 0
                while not stop.is_set():
                    images.publish(numpy_to_image(image, "rgb8", stamp=seconds_to_stamp(1.0 + k / 30), frame_id="camera"))
                    k += 1
                    time.sleep(1 / 30)

            publisher = threading.Thread(target=publish, daemon=True)
            publisher.start()
            assert client.spin_until(lambda: len(matches) >= 3, 60), "the node never got busy"
            elapsed = process.interrupt()
            stop.set()
            publisher.join()
        else:
            time.sleep(1.0)
            elapsed = process.interrupt()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        process.close()
    log = process.log()
    assert elapsed < EXIT_WITHIN_S, f"exit took {elapsed:.2f} s after SIGINT:\n{log[-3000:]}"
    assert process.process.returncode == 0, log[-3000:]
    assert "Traceback" not in log and "Fatal Python error" not in log, log[-3000:]
