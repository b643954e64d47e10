#!/usr/bin/env python3
"""Soak + overload of the localizer node: `python bench/soak.py [--duration 600] [--rate 10]
[--overload-rate 60] ...`, the same as `cmirl bench soak ...` (see cmirl_ros/ros/soak_bench.py)."""
import sys

from cmirl_ros.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "soak", *sys.argv[1:]]))
