"""`cmirl bench NAME`: benchmarks that print their figures (medians, ratios against a same-run
baseline) and write JSON.

Every benchmark is registered here. The ROS-free ones live in this package; those that run the
node need rclpy and so live in the ROS layer (`cmirl_ros/ros/`), imported by name like the rest.
"""
from __future__ import annotations

import argparse
import importlib

HELP = "benchmarks: model, mapdb, geometry, sim, inputs, node, soak, train, verify"

BENCHES = {
    "model": "cmirl_ros.benchmarks.model",
    "mapdb": "cmirl_ros.benchmarks.mapdb",
    "geometry": "cmirl_ros.benchmarks.geometry",
    "sim": "cmirl_ros.benchmarks.sim",
    "inputs": "cmirl_ros.benchmarks.inputs",
    "node": "cmirl_ros.ros.node_bench",
    "soak": "cmirl_ros.ros.soak_bench",
    "train": "cmirl_ros.benchmarks.train",
    "verify": "cmirl_ros.benchmarks.verify",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    subparsers = parser.add_subparsers(dest="bench", required=True)
    for name, module_name in BENCHES.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    return args.bench_run(args)
