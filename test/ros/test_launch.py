"""launch/localize.launch.py against a minimal stand-in for `launch` / `launch_ros` (not installable here).

The stand-in records what the file declares; the test resolves it the way launch_ros would
(launch arguments -> node command line), then starts a real process that builds the node from
that command line and reports the parameters and topic names it ends up with.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from cmirl_ros.options import OPTIONS
from cmirl_ros.ros.localizer_node import PARAMETERS

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILE = ROOT / "launch" / "localize.launch.py"


class Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Recorded):
    pass


class PathJoinSubstitution(Recorded):
    pass


class FindPackageShare(Recorded):
    pass


class ParameterValue(Recorded):
    pass


class DeclareLaunchArgument(Recorded):
    @property
    def name(self):
        return self.args[0]


class Node(Recorded):
    pass


class LaunchDescription(Recorded):
    @property
    def entities(self):
        return self.args[0]


def install_stand_in(monkeypatch):
    modules = {
        "launch": {"LaunchDescription": LaunchDescription},
        "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration, "PathJoinSubstitution": PathJoinSubstitution},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Node},
        "launch_ros.substitutions": {"FindPackageShare": FindPackageShare},
        "launch_ros.parameter_descriptions": {"ParameterValue": ParameterValue},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)


def load_description(monkeypatch) -> LaunchDescription:
    install_stand_in(monkeypatch)
    spec = importlib.util.spec_from_file_location("localize_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def resolve(value, arguments: dict) -> str:
    """Evaluate a recorded substitution; FindPackageShare('cmirl_ros') = the source tree (the install
    layout copies config/ to share/cmirl_ros/config)."""
    if isinstance(value, str):
        return value
    if isinstance(value, LaunchConfiguration):
        return arguments[value.args[0]]
    if isinstance(value, FindPackageShare):
        assert value.args == ("cmirl_ros",)
        return str(ROOT)
    if isinstance(value, PathJoinSubstitution):
        return str(Path(*(resolve(part, arguments) for part in value.args[0])))
    if isinstance(value, ParameterValue):
        return resolve(value.args[0], arguments)
    raise TypeError(f"unexpected substitution {value!r}")


def node_command_line(description: LaunchDescription, overrides: dict) -> list[str]:
    declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    arguments = {d.name: d.kwargs["default_value"] for d in declared if "default_value" in d.kwargs}
    arguments = {name: resolve(value, arguments) for name, value in arguments.items()}
    arguments.update(overrides)
    missing = [d.name for d in declared if d.name not in arguments]
    assert not missing, f"launch arguments without default not given: {missing}"
    (node,) = [e for e in description.entities if isinstance(e, Node)]
    kw = node.kwargs
    argv = ["--ros-args", "-r", f"__node:={kw['name']}"]
    namespace = resolve(kw["namespace"], arguments)
    if namespace:  # launch_ros makes a relative namespace absolute
        argv += ["-r", f"__ns:=/{namespace.lstrip('/')}"]
    for entry in kw["parameters"]:
        if isinstance(entry, dict):
            for name, value in entry.items():
                argv += ["-p", f"{name}:={resolve(value, arguments)}"]
        else:
            argv += ["--params-file", resolve(entry, arguments)]
    for source, target in kw["remappings"]:
        argv += ["-r", f"{source}:={resolve(target, arguments)}"]
    return argv


def test_launch_file_declares_the_localizer_node(monkeypatch):
    description = load_description(monkeypatch)
    declared = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert {"params_file", "model", "map", "use_sim_time", "namespace"} <= declared
    (node,) = [e for e in description.entities if isinstance(e, Node)]
    assert node.kwargs["package"] == "cmirl_ros" and node.kwargs["executable"] == "localizer"
    assert node.kwargs["name"] == "localizer"
    sources = [source for source, _ in node.kwargs["remappings"]]
    assert sources == [PARAMETERS["image_topic"], PARAMETERS["camera_info_topic"], PARAMETERS["points_topic"]]


def test_params_file_lists_every_node_parameter():
    data = yaml.safe_load((ROOT / "config" / "localize.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    assert set(params) == set(PARAMETERS) | {"use_sim_time"}
    for name, default in PARAMETERS.items():
        assert params[name] == default, f"config/localize.yaml: {name} = {params[name]!r}, node default {default!r}"


PROBE = """
import json, sys, rclpy
from cmirl_ros.ros.localizer_node import LocalizerNode, PARAMETERS
rclpy.init(args=sys.argv)
node = LocalizerNode()
values = {name: node.get_parameter(name).value for name in list(PARAMETERS) + ["use_sim_time"]}
descriptions = {name: node.describe_parameter(name).description for name in PARAMETERS}
topics = {name: node.resolve_topic_name(values[name]) for name in ("image_topic", "camera_info_topic", "points_topic")}
print(json.dumps({"fqn": node.get_fully_qualified_name(), "params": values, "descriptions": descriptions, "topics": topics,
                  "match": node.resolve_topic_name("~/match")}, default=list))
node.destroy_node()
rclpy.shutdown()
"""


def test_resolved_launch_configures_a_real_node(monkeypatch, tmp_path):
    description = load_description(monkeypatch)
    argv = node_command_line(description, {"map": str(tmp_path / "map"), "model": "cmirl_lite", "use_sim_time": "true",
                                           "namespace": "robot1", "image_topic": "/kitti/image"})
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["fqn"] == "/robot1/localizer"
    params = report["params"]
    assert params["map"] == str(tmp_path / "map") and params["model"] == "cmirl_lite"
    assert params["use_sim_time"] is True
    # Everything not given on the command line: the option tree's defaults, through the params file.
    given = {"map", "model", "use_sim_time"}
    assert {k: v for k, v in params.items() if k not in given} == {k: v for k, v in PARAMETERS.items() if k not in given}
    assert report["descriptions"] == {name: OPTIONS[name].help for name in PARAMETERS}
    # Remapped by its launch argument, or the relative default in the node's namespace.
    assert report["topics"] == {"image_topic": "/kitti/image", "camera_info_topic": "/robot1/camera/camera_info",
                                "points_topic": "/robot1/lidar/points"}
    assert report["match"] == "/robot1/localizer/match"


def test_map_argument_is_required(monkeypatch):
    description = load_description(monkeypatch)
    with pytest.raises(AssertionError, match="map"):
        node_command_line(description, {})
