"""Node benchmark (same as `cmirl bench node`): python bench/node_bench.py [--model NAME] [--json PATH]."""
import argparse
import sys

from cmirl_ros.ros import benchmark

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=benchmark.HELP)
    benchmark.add_arguments(parser)
    sys.exit(benchmark.run(parser.parse_args()))
