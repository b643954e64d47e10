"""Record topics of the live graph into a rosbag2 (mcap) directory, as raw CDR.

Run as a process (`python -m cmirl_ros.ros.recorder OUT TOPIC...`): topics are subscribed as
soon as they appear in the graph (their type is taken from the graph), each message is stored
with its receive time, and SIGINT / SIGTERM end the recording and close the bag.
"""
from __future__ import annotations

import argparse
import sys
import time

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy

from cmirl_ros.ros.interfaces import interfaces_typestore, message_class

READY_LOG = "recorder ready"


class Recorder:
    def __init__(self, node, writer, topics: list[str]):
        self.node, self.writer = node, writer
        self.pending = set(topics)
        self.counts = {topic: 0 for topic in topics}
        self._store = interfaces_typestore()
        self._subscriptions = []
        node.create_timer(0.1, self._discover)

    def _discover(self) -> None:
        for topic, types in self.node.get_topic_names_and_types():
            if topic not in self.pending or not types:
                continue
            cls = message_class(types[0])
            if cls is None:
                continue
            connection = self.writer.add_connection(topic, types[0], typestore=self._store)
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            self._subscriptions.append(self.node.create_subscription(
                cls, topic, lambda raw, c=connection: self._write(c, raw), qos, raw=True))
            self.pending.discard(topic)
            print(f"recording {topic}", flush=True)

    def _write(self, connection, raw: bytes) -> None:
        self.writer.write(connection, time.time_ns(), raw)
        self.counts[connection.topic] += 1


def main(argv: list[str] | None = None) -> int:
    from rosbags.rosbag2 import StoragePlugin, Writer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="bag directory to create")
    parser.add_argument("topics", nargs="+")
    args, ros_args = parser.parse_known_args(argv)
    rclpy.init(args=[sys.argv[0], *ros_args])
    node = rclpy.create_node("cmirl_recorder")
    writer = Writer(args.out, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    recorder = Recorder(node, writer, args.topics)
    print(f"{READY_LOG}: {', '.join(args.topics)}", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        writer.close()
        node.destroy_node()
        rclpy.try_shutdown()
        print(f"recorded {recorder.counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
