"""Real FastDDS between two processes with the loopback-only profile of config/fastdds_local.xml.

A publisher process sends a KITTI-size rgb8 image (1241x376); a subscriber process checks it arrives
byte for byte. The publisher also reports its own UDP sockets: with the profile they must all be
bound to 127.0.0.1 (or the discovery multicast group), i.e. FastDDS honours the interface
whitelist and nothing listens on, or sends from, an external interface.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time

import numpy as np

TOPIC = "/cmirl_test/kitti_image"
WIDTH, HEIGHT = 1241, 376


def kitti_image() -> np.ndarray:
    return np.random.default_rng(42).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def own_udp_addresses() -> list[str]:
    """Local addresses of this process's UDP sockets, from /proc (no external tools)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = []
    with open("/proc/self/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[9] in inodes:
                ip_hex = cols[1].split(":")[0]
                addresses.append(socket.inet_ntoa(struct.pack("<I", int(ip_hex, 16))))
    return addresses


def publish() -> None:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from cmirl_ros.ros.conversions import numpy_to_image

    rclpy.init()
    node = rclpy.create_node("kitti_image_publisher")
    publisher = node.create_publisher(Image, TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    msg = numpy_to_image(kitti_image(), "rgb8", frame_id="camera")
    print(json.dumps({"udp": own_udp_addresses()}), flush=True)
    try:
        while rclpy.ok():
            publisher.publish(msg)
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def subscribe() -> None:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from cmirl_ros.sensor_decoding import image_to_numpy

    rclpy.init()
    node = rclpy.create_node("kitti_image_subscriber")
    received = []
    node.create_subscription(Image, TOPIC, received.append, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    if received:
        msg = received[0]
        pixels = image_to_numpy(msg)
        print(json.dumps({"shape": list(pixels.shape), "encoding": msg.encoding, "frame_id": msg.header.frame_id,
                          "sha256": hashlib.sha256(pixels.tobytes()).hexdigest()}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def test_kitti_image_crosses_processes_intact_over_loopback_only():
    env = dict(os.environ)
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("config/fastdds_local.xml")
    publisher = subprocess.Popen([sys.executable, __file__, "publish"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        sockets = json.loads(publisher.stdout.readline())
        result = subprocess.run([sys.executable, __file__, "subscribe"], capture_output=True, text=True, env=env, timeout=60)
    finally:
        publisher.terminate()
        publisher.wait(timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), f"no image received within 30 s; stderr: {result.stderr}"
    received = json.loads(result.stdout)
    assert received["shape"] == [HEIGHT, WIDTH, 3] and received["encoding"] == "rgb8" and received["frame_id"] == "camera"
    assert received["sha256"] == hashlib.sha256(kitti_image().tobytes()).hexdigest()
    assert sockets["udp"], "the publisher opened no UDP socket at all"
    for address in sockets["udp"]:
        ip = ipaddress.ip_address(address)
        assert ip.is_loopback or ip.is_multicast, f"FastDDS bound a UDP socket to {address}: the profile's whitelist is not honoured"


if __name__ == "__main__":
    {"publish": publish, "subscribe": subscribe}[sys.argv[1]]()
