"""`cmirl sim`: render a simulated camera + LiDAR sequence in the KITTI odometry layout, or a contact sheet."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "simulate a camera + LiDAR driving sequence (KITTI layout) in a procedural town"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trajectory", default=None,
                        help="'loop' (built-in ~1 km route with revisits) or a KITTI poses file (default: loop)")
    parser.add_argument("--calib", default=None, help="KITTI calib.txt (default: the real KITTI 00-02 calibration)")
    parser.add_argument("--frames", default=None, help="frames of the trajectory, A:B or A:B:STEP (default: all)")
    parser.add_argument("--condition", default=None,
                        help="day | low_light | shadows | fog | rain | snow | viewpoint (default: day)")
    parser.add_argument("--width", type=int, default=None, help="image width (default 1241)")
    parser.add_argument("--height", type=int, default=None, help="image height (default 376)")
    parser.add_argument("--seed", type=int, default=None, help="world and noise seed (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default 2)")
    parser.add_argument("--demo", action="store_true",
                        help="start from the embedded demo preset (loop, every 3rd frame, 620x188); flags override it")
    parser.add_argument("--out", type=Path, default=None, help="output root (ROOT/sequences/XX, ROOT/poses/XX.txt)")
    parser.add_argument("--seq", default=None, help="sequence name to write, e.g. 00")
    parser.add_argument("--contact-sheet", type=Path, default=None, metavar="PNG",
                        help="instead of a sequence, write a PNG of one revisited place under every condition")
    parser.add_argument("--sheet-frame", type=int, default=None,
                        help="trajectory frame shown on the contact sheet (default: the middle of the longest revisit)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cmirl_ros.sim.sequence import DEMO_SIM, SimConfig, simulate_sequence, with_overrides

    base = DEMO_SIM if args.demo else SimConfig()
    config = with_overrides(base, trajectory=args.trajectory, calib=args.calib, frames=args.frames,
                            condition=args.condition, width=args.width, height=args.height, seed=args.seed,
                            workers=args.workers)
    if args.contact_sheet is not None:
        from cmirl_ros.sim.contact_sheet import write_contact_sheet

        path = write_contact_sheet(config, args.contact_sheet, args.sheet_frame)
        print(f"wrote {path}")
        return 0
    if args.out is None or args.seq is None:
        raise ValueError("--out ROOT and --seq XX are required (or --contact-sheet PNG)")
    sequence_dir = simulate_sequence(config, args.out, args.seq, progress=not args.quiet)
    print(f"wrote {sequence_dir} and {args.out / 'poses' / f'{args.seq}.txt'}")
    return 0
