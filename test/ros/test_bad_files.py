"""Damaged map and model files against a live node: `~/reload_map` keeps the old map whatever the new
directory holds, and a node started on a damaged file says so in one ERROR line and exits."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from cmirl_ros.ros.localizer_node import WAITING_LOG
from test_node_lifecycle import state, transition

NODE_PARAMS = {"device": "cpu", "verify": "none", "qos": "reliable", "num_threads": 2, "diagnostics_period": 0.0}


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _counts_without_keyframes(directory: Path) -> None:
    _edit_manifest(directory, lambda m: m["counts"].pop("keyframes"))


def _files_as_a_list(directory: Path) -> None:
    _edit_manifest(directory, lambda m: m.update(files=sorted(m["files"])))


def _descriptor_header_edited_with_its_checksum(directory: Path) -> None:
    """An unbalanced bracket in the .npy header (same length), the manifest's checksum updated to match."""
    path = directory / "descriptors.npy"
    data = bytearray(path.read_bytes())
    header_end = data.index(b"\n")
    closing = data.rindex(b")", 0, header_end)
    data[closing:closing + 1] = b" "
    path.write_bytes(bytes(data))
    digest = hashlib.sha256(bytes(data)).hexdigest()
    _edit_manifest(directory, lambda m: m["files"]["descriptors.npy"].update(sha256=digest))


DAMAGES = {
    "counts without keyframes": _counts_without_keyframes,
    "files as a list": _files_as_a_list,
    "descriptor header edited with its checksum": _descriptor_header_edited_with_its_checksum,
}


def damaged_copy(lite_map: Path, where: Path, damage) -> Path:
    copy = where / "map"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(lite_map, copy)
    damage(copy)
    return copy


def model_without_config(lite_checkpoint: Path, where: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = lite_checkpoint / "model.safetensors"
    with safe_open(str(source), framework="pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if k != "config"}
    target = where / "no_config_model"
    target.mkdir()
    save_file(load_file(str(source)), str(target / "model.safetensors"), metadata=metadata)
    return target


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "[ERROR]" in line]


def test_reload_map_keeps_the_old_map_whatever_the_directory_holds(sim_root, lite_checkpoint, lite_map, ros_workdir,
                                                                    live_localizer):
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.conversions import numpy_to_image, seconds_to_stamp
    from cmirl_ros.topics import IMAGE

    live_map = ros_workdir / "map"
    shutil.copytree(lite_map, live_map)
    process, node, client = live_localizer({**NODE_PARAMS, "model": str(lite_checkpoint), "map": str(live_map)},
                                           "cmirl_reload_test")
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    images = node.create_publisher(Image, IMAGE, reliable)
    matches = []
    node.create_subscription(PoseWithCovarianceStamped, "/localizer/match", matches.append, 10)
    assert client.spin_until(lambda: images.get_subscription_count() > 0, 10)
    image = KittiSequence(sim_root, "00")[3].image

    def answered(seconds: float) -> bool:
        count = len(matches)
        images.publish(numpy_to_image(image, "rgb8", stamp=seconds_to_stamp(seconds), frame_id="camera"))
        return client.spin_until(lambda: len(matches) > count, 30)

    assert answered(1.0)
    for k, (name, damage) in enumerate(DAMAGES.items()):
        damaged_copy(lite_map, ros_workdir, damage)
        reply = client.call(Trigger, "/localizer/reload_map", Trigger.Request())
        assert not reply.success, name
        assert "keeping the current map" in reply.message and str(live_map) in reply.message, reply.message
        assert process.process.poll() is None, f"{name}: the node died:\n{process.log()[-3000:]}"
        assert answered(2.0 + k), f"{name}: no answer after the failed reload"
    damaged_copy(lite_map, ros_workdir, lambda directory: None)
    assert client.call(Trigger, "/localizer/reload_map", Trigger.Request()).success


@pytest.mark.parametrize("bad", ["map", "model"])
def test_plain_node_started_on_a_damaged_file_logs_one_error_and_exits(bad, lite_checkpoint, lite_map, ros_workdir,
                                                                       refused_start):
    if bad == "map":
        model, map_dir = lite_checkpoint, damaged_copy(lite_map, ros_workdir, _counts_without_keyframes)
        named = str(map_dir)
    else:
        model, map_dir = model_without_config(lite_checkpoint, ros_workdir), lite_map
        named = str(model)
    code, errors, log = refused_start({**NODE_PARAMS, "model": str(model), "map": str(map_dir)})
    assert code != 0, log
    assert len(errors) == 1 and "configure failed" in errors[0] and named in errors[0], log
    assert "Traceback" not in log, log


def test_managed_node_configure_on_a_damaged_map_fails_cleanly(lite_checkpoint, lite_map, ros_workdir, live_localizer):
    from lifecycle_msgs.msg import Transition

    map_dir = damaged_copy(lite_map, ros_workdir, _files_as_a_list)
    process, node, client = live_localizer({**NODE_PARAMS, "managed": True, "model": str(lite_checkpoint),
                                            "map": str(map_dir)}, "cmirl_bad_configure_test", ready=WAITING_LOG)
    assert not transition(client, Transition.TRANSITION_CONFIGURE)
    assert state(client) == "unconfigured"
    assert process.process.poll() is None
    errors = error_lines(process.log())
    assert len(errors) == 1 and "configure failed" in errors[0] and str(map_dir) in errors[0], process.log()


def test_reload_map_reports_any_exception_of_the_loader():
    """Whatever a loader raises (here what a damaged .npy header gave: a tokenize error), the
    service answers failure naming the directory; in-process, with a stand-in localizer."""
    import tokenize

    import rclpy
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger

    from cmirl_ros.ros.localizer_node import LocalizerNode

    class FailingLocalizer:
        def reload(self, path):
            raise tokenize.TokenError("EOF in multi-line statement", (1, 0))

    rclpy.init()
    try:
        node = LocalizerNode(parameter_overrides=[Parameter("map", value="/maps/new_map")])
        node._localizer = FailingLocalizer()
        reply = node._on_reload_map(Trigger.Request(), Trigger.Response())
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
    assert not reply.success
    assert "/maps/new_map" in reply.message and "TokenError" in reply.message, reply.message
