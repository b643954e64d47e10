"""Start ROS processes (node, recorder, player) from Python and follow their logs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


def write_params_file(path: Path, params: dict) -> Path:
    """A ROS 2 parameters file applying `params` to any node (`/**`); typed by YAML, no quoting traps."""
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=True))
    return path


class RosProcess:
    """A child process whose stdout+stderr go to a log file that `wait_for` polls."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None):
        self.log_path = Path(log_path)
        self._log = self.log_path.open("w")
        environment = dict(os.environ if env is None else env)
        environment.setdefault("PYTHONUNBUFFERED", "1")
        environment.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=environment)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args[:3]} exited with {self.process.returncode} before '{text}':\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no '{text}' within {timeout:.0f} s from {self.process.args[:3]}:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Signal the process and wait; kill it if it does not exit in time. Returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def start_localizer(params: dict, workdir: Path, env: dict | None = None, ros_args: tuple[str, ...] = ()) -> RosProcess:
    """`ros_args`: more --ros-args, e.g. remappings ("-r", "from:=to")."""
    params_file = write_params_file(workdir / "localizer_params.yaml", params)
    return RosProcess([sys.executable, "-m", "cmirl_ros.ros.localizer_node", "--ros-args", "--params-file", str(params_file),
                       *ros_args], workdir / "localizer.log", env)


def start_recorder(out: Path, topics: list[str], workdir: Path, env: dict | None = None) -> RosProcess:
    return RosProcess([sys.executable, "-m", "cmirl_ros.ros.recorder", str(out), *topics], workdir / "recorder.log", env)
