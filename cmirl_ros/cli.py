"""`cmirl`: the one command-line tool.

Each subcommand lives in its own module exposing ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Modules keep heavy imports (torch, faiss) inside ``run`` so that
``cmirl --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from cmirl_ros.formats import one_line

COMMANDS = {
    "sim": "cmirl_ros.sim.cli",
    "train": "cmirl_ros.training.cli",
    "eval": "cmirl_ros.evaluation.cli",
    "map": "cmirl_ros.mapdb.cli",
    "localize": "cmirl_ros.localization.cli",
    "bag": "cmirl_ros.ros.bag_cli",
    "demo": "cmirl_ros.ros.demo",
    "bench": "cmirl_ros.benchmarks",
    "config": "cmirl_ros.options",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmirl", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        # argparse %-formats help strings (not descriptions): a literal % ("Recall@1%") must be doubled.
        sub = subparsers.add_parser(name, help=module.HELP.replace("%", "%%"), description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (OSError, ValueError) as e:
        # Bad input (a bad file raises a ValueError naming it; an unwritable or missing path an
        # OSError): one clear line naming the file and the problem, no traceback.
        print(f"cmirl {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
