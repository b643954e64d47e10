"""Benchmarks that print their figures (medians, ratios against a same-run baseline) and write JSON."""
from __future__ import annotations

import argparse
import importlib

HELP = "benchmarks: model, mapdb, geometry, sim, node, verify"

BENCHES = {
    "model": "cmirl_ros.models.benchmark",
    "mapdb": "cmirl_ros.mapdb.benchmark",
    "geometry": "cmirl_ros.geometry.benchmark",
    "sim": "cmirl_ros.sim.benchmark",
    "node": "cmirl_ros.ros.benchmark",
    "verify": "cmirl_ros.localization.verify_benchmark",
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
