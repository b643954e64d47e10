"""Replay a rosbag2 recording into the live ROS graph: rosbags reads raw CDR, rclpy publishes it as is.

No deserialisation on the way: the bytes in the bag are exactly what the publisher sends.
Message types resolve from the installed interface packages only (`interfaces.message_class`),
the generated tf2_msgs and cmirl_ros_interfaces included (`make interfaces`); topics of any other type
(whatever a crafted bag names) are skipped with a notice, and a bag with nothing playable is refused.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from cmirl_ros.datasets.bag import resolve_bag_path
from cmirl_ros.ros.interfaces import PACKAGES as GENERATED_PACKAGES
from cmirl_ros.ros.interfaces import message_class


@dataclass
class PlayStats:
    published: dict = field(default_factory=dict)  # topic -> count
    skipped_topics: list = field(default_factory=list)
    wall_seconds: float = 0.0


def _qos_for(topic: str) -> QoSProfile:
    if topic == "/tf_static":  # tf2's static QoS; depth 100 so that a late subscriber gets every recorded message
        return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    if topic == "/tf":  # tf2's dynamic QoS
        return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def wait_for_subscribers(publishers: dict, topics: dict[str, int], timeout: float) -> list[str]:
    """Block until each topic has its count of matched subscribers; returns those still short of it."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = [t for t, count in topics.items() if publishers[t].get_subscription_count() < count]
        if not waiting or time.monotonic() > deadline:
            return waiting
        time.sleep(0.05)


def play(node, path: str | Path, rate: float = 1.0, loop: bool = False, clock: bool = False,
         topics: list[str] | None = None, wait_for: list[str] | dict[str, int] | None = None, wait_timeout: float = 30.0,
         log=print) -> PlayStats:
    """Publish the bag's messages with their original spacing divided by `rate`.

    `clock`: also publish /clock with the bag time of each message (for nodes with use_sim_time).
    `wait_for`: topics that must have a subscriber before playback starts (so nothing is lost), or
    {topic: how many subscribers} when several processes must all see the first message.
    """
    from rosbags.rosbag2 import Reader
    from rosgraph_msgs.msg import Clock

    if rate <= 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    stats = PlayStats()
    with Reader(resolve_bag_path(path)) as reader:
        publishers, connections = {}, []
        for connection in reader.connections:
            if topics and connection.topic not in topics:
                continue
            cls = message_class(connection.msgtype)
            if cls is None:
                stats.skipped_topics.append(f"{connection.topic} ({connection.msgtype})")
                hint = ": run `make interfaces`" if connection.msgtype.split("/")[0] in GENERATED_PACKAGES else ""
                log(f"bag play: skipping {connection.topic}: {connection.msgtype} is not a message type of an "
                    f"installed interface package{hint}")
                continue
            if connection.topic not in publishers:
                publishers[connection.topic] = node.create_publisher(cls, connection.topic, _qos_for(connection.topic))
            connections.append(connection)
        if not connections:
            skipped = f"; not installed message types: {', '.join(stats.skipped_topics)}" if stats.skipped_topics else ""
            raise ValueError(f"{path}: nothing to play (topics: {', '.join(c.topic for c in reader.connections)}{skipped})")
        clock_publisher = node.create_publisher(Clock, "/clock", 10) if clock else None
        if wait_for:
            waitable = {**publishers, **({"/clock": clock_publisher} if clock_publisher else {})}
            unknown = [t for t in wait_for if t not in waitable]
            if unknown:
                raise ValueError(f"{path}: cannot wait for {', '.join(unknown)}: not played")
            counts = wait_for if isinstance(wait_for, dict) else dict.fromkeys(wait_for, 1)
            missing = wait_for_subscribers(waitable, counts, wait_timeout)
            if missing:
                raise RuntimeError(f"no subscriber on {', '.join(missing)} after {wait_timeout:.0f} s")
        started = time.monotonic()
        while True:
            _play_once(reader, connections, publishers, clock_publisher, rate, stats)
            if not loop:
                break
        stats.wall_seconds = time.monotonic() - started
        flush(publishers.values())
    return stats


def flush(publishers, timeout_s: float = 2.0) -> None:
    """Wait until reliable subscribers have acknowledged what was published: a player that exits right
    after its last message would otherwise take the messages still in flight with it."""
    from rclpy.duration import Duration

    for publisher in publishers:
        publisher.wait_for_all_acked(Duration(seconds=timeout_s))


def _play_once(reader, connections, publishers, clock_publisher, rate: float, stats: PlayStats) -> None:
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    first_time = None
    start_wall = time.monotonic()
    for connection, bag_time, raw in reader.messages(connections=connections):
        if first_time is None:
            first_time = bag_time
        due = start_wall + (bag_time - first_time) * 1e-9 / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if clock_publisher is not None:
            clock_publisher.publish(Clock(clock=Time(sec=bag_time // 1_000_000_000, nanosec=bag_time % 1_000_000_000)))
        publishers[connection.topic].publish(bytes(raw))
        stats.published[connection.topic] = stats.published.get(connection.topic, 0) + 1
