"""The node with its default parameters, image-only: verify auto is sequence verification, so a
query's match is published on ~/match only once the matches of the last sequence_length queries
agree with the motion; until then only its ranked ~/candidates are."""
from __future__ import annotations

import numpy as np
import pytest

from cmirl_ros.topics import IMAGE

STEP_S = 0.125  # between queries (exact in binary, so stamps compare equal after the round trip)


def test_default_node_publishes_a_match_only_once_the_sequence_confirms_it(sim_root, lite_checkpoint, lite_map,
                                                                          live_localizer):
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.ros.conversions import numpy_to_image, seconds_to_stamp
    from cmirl_ros.ros.interfaces import candidates_type
    from cmirl_ros.ros.localizer_node import UNVERIFIED_LOG
    from cmirl_ros.sensor_decoding import stamp_to_seconds
    from sensor_msgs.msg import Image

    # No verify, no sequence_* parameter: the node's defaults.
    process, node, client = live_localizer({"model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu",
                                            "qos": "reliable", "num_threads": 2, "diagnostics_period": 0.2},
                                           "cmirl_sequence_default_test")
    assert UNVERIFIED_LOG not in process.log() and "verify sequence" in process.log()
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    images = node.create_publisher(Image, IMAGE, reliable)
    matches, candidates, diagnostics = {}, {}, []
    node.create_subscription(PoseWithCovarianceStamped, "/localizer/match",
                             lambda m: matches.setdefault(stamp_to_seconds(m.header.stamp), m), reliable)
    node.create_subscription(candidates_type(), "/localizer/candidates",
                             lambda m: candidates.setdefault(stamp_to_seconds(m.header.stamp), m), reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    assert client.spin_until(lambda: images.get_subscription_count() > 0, 10)

    # One place queried again and again: whatever the (untrained) model's top-1, it repeats, which
    # stamps-only verification reads as a consistent run (standing still); the core tests in
    # test/core/test_sequence.py hold back jumps out of reach.
    image = KittiSequence(sim_root, "00")[5].image

    def query(stamp: float) -> bool:
        """Send the image; True when the node published a ~/match for it (its top candidate's pose)."""
        images.publish(numpy_to_image(image, "rgb8", stamp=seconds_to_stamp(stamp), frame_id="camera"))
        assert client.spin_until(lambda: stamp in candidates, 30), (stamp, process.log()[-2000:])
        client.spin_until(lambda: stamp in matches, 2.0)  # a match follows its candidates within milliseconds
        if stamp not in matches:
            return False
        p, q = matches[stamp].pose.pose.position, candidates[stamp].poses[0].position  # no tf: the camera's pose
        assert (p.x, p.y, p.z) == pytest.approx((q.x, q.y, q.z), abs=1e-9)
        return True

    # sequence_length 3: the first two queries are not confirmed yet, the third confirms the run.
    assert [query(100.0 + STEP_S * k) for k in range(3)] == [False, False, True]
    # A pause longer than sequence_max_gap (5 s) starts a new run: confirmed again only at its third query.
    assert [query(110.0 + STEP_S * k) for k in range(3)] == [False, False, True]
    diagnostics.clear()
    assert client.spin_until(lambda: diagnostics, 5)
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    assert values["verify"] == "sequence (stamps)" and int(values["answered"]) == 2 and int(values["unverified"]) == 4


def test_sequence_odometry_confirms_only_matches_that_follow_the_odometry(sim_root, sim_calib_file, lite_checkpoint,
                                                                          lite_map, live_localizer):
    """sequence_odometry: the path check over tf odom -> base_link (the camera on the base from
    calib_file). One image again and again keeps its top-1 keyframe in place: a standing robot's
    odometry confirms that at the third query, a moving one's (10 m per query) never does, and a query
    whose stamp tf does not cover is counted and publishes nothing."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from cmirl_ros.datasets.kitti import KittiSequence
    from cmirl_ros.geometry.camera import make_transform
    from cmirl_ros.ros.bag_writer import transform_stamped
    from cmirl_ros.ros.conversions import numpy_to_image, seconds_to_stamp
    from cmirl_ros.ros.interfaces import candidates_type, tf_message_type
    from cmirl_ros.sensor_decoding import stamp_to_seconds

    process, node, client = live_localizer({"model": str(lite_checkpoint), "map": str(lite_map), "device": "cpu",
                                            "qos": "reliable", "num_threads": 2, "diagnostics_period": 0.2,
                                            "calib_file": str(sim_calib_file), "sequence_odometry": True},
                                           "cmirl_sequence_odometry_test")
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    images = node.create_publisher(Image, IMAGE, reliable)
    tf = node.create_publisher(tf_message_type(), "/tf", reliable)
    matches, candidates, diagnostics = {}, {}, []
    node.create_subscription(PoseWithCovarianceStamped, "/localizer/match",
                             lambda m: matches.setdefault(stamp_to_seconds(m.header.stamp), m), reliable)
    node.create_subscription(candidates_type(), "/localizer/candidates",
                             lambda m: candidates.setdefault(stamp_to_seconds(m.header.stamp), m), reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    assert client.spin_until(lambda: images.get_subscription_count() > 0 and tf.get_subscription_count() > 0, 10)
    image = KittiSequence(sim_root, "00")[5].image
    standing = [100.0 + STEP_S * k for k in range(3)]
    moving = [101.0 + STEP_S * k for k in range(3)]
    odometry = [(s, np.eye(4)) for s in standing] + [(s, make_transform(np.eye(3), np.array([10.0 * (k + 1), 0, 0])))
                                                     for k, s in enumerate(moving)]
    tf.publish(tf_message_type()(transforms=[transform_stamped(seconds_to_stamp(s), "odom", "base_link", T)
                                             for s, T in odometry]))

    def query(stamp: float) -> bool:
        images.publish(numpy_to_image(image, "rgb8", stamp=seconds_to_stamp(stamp), frame_id="camera"))
        assert client.spin_until(lambda: stamp in candidates, 30), (stamp, process.log()[-2000:])
        client.spin_until(lambda: stamp in matches, 2.0)
        return stamp in matches

    assert [query(s) for s in standing] == [False, False, True]
    assert [query(s) for s in moving] == [False, False, False]
    assert not query(101.5)  # no odometry at this stamp
    diagnostics.clear()
    assert client.spin_until(lambda: diagnostics, 5)
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    assert values["verify"] == "sequence (odometry)" and int(values["sequence_no_odometry"]) == 1, values
