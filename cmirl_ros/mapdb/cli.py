"""`cmirl map build|merge|info|export`: build a map database from a dataset, merge shards, inspect a map,
export its keyframe clouds as one PLY."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "map database: build from a dataset, merge shards, show info, export the point cloud"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cmirl_ros.datasets import add_dataset_args
    from cmirl_ros.mapdb.clouds import DEFAULT_VOXEL_M

    sub = parser.add_subparsers(dest="map_command", required=True)
    build = sub.add_parser("build", help="build a map from a dataset's scans", description=_build.__doc__)
    add_dataset_args(build)
    build.add_argument("--model", default="cmirl_lite", help="shipped model name, checkpoint path or model config")
    build.add_argument("--device", default="auto", help="auto | cpu | cuda")
    build.add_argument("--keyframe-distance", type=float, default=0.0, help="metres travelled between keyframes (0 = every frame)")
    build.add_argument("--keyframe-angle", type=float, default=0.0, help="degrees turned that also make a keyframe (0 = off)")
    build.add_argument("--batch-size", type=int, default=8)
    build.add_argument("--frame-id", default="map", help="map frame id of the stored poses")
    build.add_argument("--tokens", action="store_true",
                       help="also store local depth tokens (about 16 KB a keyframe) for --rerank cross_attention")
    build.add_argument("--cloud-voxel", type=float, default=DEFAULT_VOXEL_M,
                       help="store each keyframe's scan downsampled with this voxel edge in metres, for "
                            f"--verify registration (default {DEFAULT_VOXEL_M}, see docs/mapdb.md; 0 = no clouds)")
    _add_output_args(build)
    build.set_defaults(map_run=_build)

    merge = sub.add_parser("merge", help="merge maps built in shards", description=_merge.__doc__)
    merge.add_argument("maps", nargs="+", type=Path, help="map directories, in order")
    _add_output_args(merge)
    merge.set_defaults(map_run=_merge)

    info = sub.add_parser("info", help="validate a map and print its summary", description=_info.__doc__)
    info.add_argument("map", type=Path)
    info.add_argument("--json", type=Path, default=None, help="also write the summary here")
    info.set_defaults(map_run=_info)

    export = sub.add_parser("export", help="write the merged keyframe clouds (map frame) as a binary PLY",
                            description=_export.__doc__)
    export.add_argument("map", type=Path)
    export.add_argument("--out", type=Path, required=True, help="PLY file to write")
    export.add_argument("--voxel", type=float, default=None,
                        help="merge overlapping keyframes on this voxel grid (m; default: the map's cloud voxel, 0 = keep all)")
    export.set_defaults(map_run=_export)


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", default="auto", help="flat | hnsw | ivfpq | auto (flat below 20k entries, else hnsw)")
    parser.add_argument("--out", type=Path, required=True, help="map directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing map (atomically)")


def run(args: argparse.Namespace) -> int:
    return args.map_run(args)


def _build(args: argparse.Namespace) -> int:
    """Build a map: keyframes by travelled distance/angle, one depth descriptor per keyframe scan."""
    from cmirl_ros.datasets import open_dataset
    from cmirl_ros.mapdb.build import build_map
    from cmirl_ros.mapdb.index import IndexConfig
    from cmirl_ros.mapdb.tokens import DEFAULT_GRID
    from cmirl_ros.models import load_model

    _refuse_existing(args.out, args.overwrite)
    dataset = open_dataset(args)
    model = load_model(args.model, device=args.device)
    mapdb = build_map(dataset, model, args.keyframe_distance, args.keyframe_angle, IndexConfig(type=args.index),
                      batch_size=args.batch_size, frame_id=args.frame_id, tokens_grid=DEFAULT_GRID if args.tokens else None,
                      cloud_voxel=args.cloud_voxel or None)
    mapdb.manifest["source"].update(root=str(args.root), seq=args.seq, frame_range=args.frames, kind=args.dataset)
    mapdb.save(args.out, overwrite=args.overwrite)
    clouds = "" if mapdb.clouds is None else f", clouds {mapdb.clouds.nbytes / 2**20:.1f} MiB"
    print(f"wrote {args.out}: {len(mapdb)} keyframes of {len(dataset)} frames, index {mapdb.index_type}{clouds}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    """Merge shard maps (same model and preprocessing) into one; ids are renumbered in order."""
    from cmirl_ros.mapdb import IndexConfig, MapDatabase

    _refuse_existing(args.out, args.overwrite)
    merged = MapDatabase.merge([MapDatabase.load(path) for path in args.maps], IndexConfig(type=args.index))
    merged.save(args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {len(merged)} keyframes from {len(args.maps)} maps, index {merged.index_type}")
    return 0


def _info(args: argparse.Namespace) -> int:
    """Load a map (checksums verified) and print what it holds and its memory per entry."""
    from cmirl_ros.mapdb import MapDatabase

    mapdb = MapDatabase.load(args.map)
    manifest = mapdb.manifest
    summary = {
        "map": str(args.map),
        "format_version": manifest["format_version"],
        "created_utc": manifest.get("created_utc"),
        "model": {k: manifest.get("model", {}).get(k) for k in ("name", "fingerprint")},
        "keyframes": len(mapdb),
        "sessions": sorted(set(mapdb.keyframes.sessions.tolist())),
        "frame_convention": manifest["frame_convention"],
        "descriptor": manifest["descriptor"],
        "index": mapdb.index_type,
        "tokens": None if mapdb.tokens is None else list(mapdb.tokens.shape[1:]),
        "bytes_per_entry": mapdb.bytes_per_entry(),
        "clouds": _clouds_summary(mapdb),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _clouds_summary(mapdb) -> dict | None:
    clouds = mapdb.clouds
    if clouds is None:
        return None
    return {"voxel_m": clouds.voxel_m, "points": int(len(clouds.points)),
            "points_per_keyframe": round(len(clouds.points) / max(len(clouds), 1), 1),
            "bytes": clouds.nbytes, "bytes_per_keyframe": round(clouds.nbytes / max(len(clouds), 1), 1)}


def _export(args: argparse.Namespace) -> int:
    """Merge every keyframe cloud into the map frame (T_map_cam @ T_cam_sensor) and write a binary PLY."""
    from cmirl_ros.mapdb import MapDatabase
    from cmirl_ros.mapdb.export import merged_cloud, write_ply

    mapdb = MapDatabase.load(args.map)
    if mapdb.clouds is None:
        raise ValueError(f"{args.map}: the map has no keyframe clouds; rebuild it with `cmirl map build --cloud-voxel V`")
    voxel = mapdb.clouds.voxel_m if args.voxel is None else args.voxel
    points = merged_cloud(mapdb, voxel or None)
    write_ply(args.out, points)
    print(f"wrote {args.out}: {len(points)} points from {len(mapdb)} keyframe clouds")
    return 0


def _refuse_existing(out: Path, overwrite: bool) -> None:
    # Fail before the (long) build rather than at save time.
    from cmirl_ros.mapdb.storage import check_target

    check_target(out, overwrite)
