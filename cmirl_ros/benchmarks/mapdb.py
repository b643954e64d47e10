"""`cmirl bench mapdb`: map search latency, recall against exact search, memory and build time.

Descriptors are trajectory-like: each route is a random walk on the unit sphere, so neighbouring
keyframes are alike as in real maps; queries are noisy copies of random entries. A query counts
as found when the index's top-1 lies within `--route-window` keyframes (along the same route) of
exact search's top-1. Latency is single-query (one query per call), as the localizer searches.
With `--e2e`, also the per-query breakdown preprocess / encode / search of the full localizer
on CPU with a real model.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from cmirl_ros.benchmarks.synthetic import normalize, trajectory_descriptors

HELP = "map database: search latency p50/p99, recall vs exact, bytes/entry, build time (+ --e2e)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--entries", type=int, default=100_000, help="map size N")
    parser.add_argument("--dim", type=int, default=256, help="descriptor size D")
    parser.add_argument("--index", default="auto", help="flat | hnsw | ivfpq | auto (comma list to compare)")
    parser.add_argument("--route-length", type=int, default=1000, help="keyframes per synthetic route")
    parser.add_argument("--step", type=float, default=0.15, help="random-walk step between keyframes")
    parser.add_argument("--noise", type=float, default=0.6, help="query noise (relative to a unit vector)")
    parser.add_argument("--queries", type=int, default=1000, help="queries timed one by one and scored")
    parser.add_argument("--baseline-queries", type=int, default=50, help="single queries timed on exact flat search")
    parser.add_argument("--route-window", type=int, default=5, help="top-1 within this many keyframes counts as found")
    parser.add_argument("--threads", type=int, default=2, help="FAISS/BLAS threads")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW beam width at search (default: IndexConfig)")
    parser.add_argument("--save", type=Path, default=None,
                        help="also save the first index's map here, reload it, and time both (replaced if present)")
    parser.add_argument("--e2e", action="store_true", help="also time preprocess/encode/search with a real model")
    parser.add_argument("--model", default="cmirl_lite", help="model for --e2e")
    parser.add_argument("--e2e-threads", type=int, default=1,
                        help="torch threads for --e2e (on a shared, busy machine 2 spinning threads inflate latency)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")


def _percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return round(float(np.percentile(ms, 50)), 4), round(float(np.percentile(ms, 99)), 4)


def _time_single_queries(db, queries: np.ndarray) -> list[float]:
    times = []
    for q in queries:
        start = time.perf_counter()
        db.search(q[None], 1)
        times.append(time.perf_counter() - start)
    return times


def bench_index(kind: str, descriptors, keyframes, queries, exact_top1, args):
    """(map, figures) for one index type."""
    from cmirl_ros.mapdb import IndexConfig, MapDatabase

    config = IndexConfig(type=kind, **({"hnsw_ef_search": args.ef_search} if args.ef_search else {}))
    start = time.perf_counter()
    db = MapDatabase(descriptors, keyframes, index_config=config)
    build_s = time.perf_counter() - start
    times = _time_single_queries(db, queries)
    _, top1 = db.search(queries, 1)
    top1 = top1[:, 0]
    same_route = top1 // args.route_length == exact_top1 // args.route_length
    found = same_route & (np.abs(top1 - exact_top1) <= args.route_window)
    p50, p99 = _percentiles_ms(times)
    memory = db.bytes_per_entry()
    return db, {
        "index": db.index_type,
        "search_ms_p50": p50,
        "search_ms_p99": p99,
        "recall_vs_exact": round(float(found.mean()), 4),
        "top1_identical": round(float((top1 == exact_top1).mean()), 4),
        "bytes_per_entry": memory["total"],
        "index_bytes_per_entry": memory["index"],
        "keyframe_table_bytes_per_entry": memory["keyframes"],
        "build_s": round(build_s, 2),
    }


def save_and_reload(db, directory: Path, queries: np.ndarray) -> dict:
    """Seconds to save (atomic, checksummed) and load (checksums verified) the map, and whether
    the reloaded map answers the queries identically."""
    from cmirl_ros.mapdb import MapDatabase

    start = time.perf_counter()
    db.save(directory, overwrite=True)
    saved = time.perf_counter()
    loaded = MapDatabase.load(directory)
    loaded_at = time.perf_counter()
    identical = all(np.array_equal(a, b) for a, b in zip(db.search(queries, 5), loaded.search(queries, 5)))
    size = sum(f.stat().st_size for f in directory.iterdir())
    return {"save_s": round(saved - start, 2), "load_s": round(loaded_at - saved, 2),
            "disk_bytes_per_entry": round(size / len(db), 1), "identical_results": identical}


def synthetic_keyframes(entries: int):
    from cmirl_ros.mapdb import Keyframes

    poses = np.tile(np.eye(4), (entries, 1, 1))
    poses[:, 0, 3] = np.arange(entries)
    names = np.char.zfill(np.arange(entries).astype(str), 6)  # like KITTI's 000123 file stems
    return Keyframes.from_poses(poses, np.arange(entries) * 0.1, "kitti-00", names)


def run(args: argparse.Namespace) -> int:
    import faiss
    from tqdm import tqdm

    from cmirl_ros.mapdb import IndexConfig, MapDatabase

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed + 1)
    descriptors = trajectory_descriptors(args.entries, args.dim, args.route_length, args.step, args.seed)
    keyframes = synthetic_keyframes(args.entries)
    sources = rng.integers(0, args.entries, args.queries)
    queries = normalize(descriptors[sources] + args.noise / np.sqrt(args.dim)
                        * rng.standard_normal((args.queries, args.dim), dtype=np.float32))

    exact = MapDatabase(descriptors, keyframes, index_config=IndexConfig(type="flat"))
    _, exact_ids = exact.search(queries, 1)
    baseline_p50, baseline_p99 = _percentiles_ms(_time_single_queries(exact, queries[: args.baseline_queries]))
    del exact
    results = {
        "entries": args.entries, "dim": args.dim, "threads": args.threads, "queries": args.queries,
        "route_length": args.route_length, "step": args.step, "noise": args.noise,
        "exact_flat": {"search_ms_p50": baseline_p50, "search_ms_p99": baseline_p99},
        "indexes": {},
    }
    print(f"exact flat search, N={args.entries} D={args.dim}: p50 {baseline_p50} ms, p99 {baseline_p99} ms")
    kinds = [kind.strip() for kind in args.index.split(",")]
    headline_map = None
    for kind in tqdm(kinds, desc="indexes", disable=len(kinds) == 1):
        db, figures = bench_index(kind, descriptors, keyframes, queries, exact_ids[:, 0], args)
        figures["speedup_vs_flat_p50"] = round(baseline_p50 / max(figures["search_ms_p50"], 1e-9), 1)
        results["indexes"][kind] = figures
        if headline_map is None:
            headline_map = db
        print(json.dumps({kind: figures}))
    # The headline keys describe the first index listed; --save and --e2e use that map too.
    results.update(results["indexes"][kinds[0]])
    if args.save:
        results["save_load"] = save_and_reload(headline_map, args.save, queries)
        print(json.dumps({"save_load": results["save_load"]}))
    if args.e2e:
        from cmirl_ros.benchmarks.end_to_end import end_to_end

        results["e2e"] = end_to_end(args.model, headline_map, threads=args.e2e_threads)
        print(json.dumps({"e2e": results["e2e"]}))
    results["load_average_1min"] = round(os.getloadavg()[0], 2)  # other work on the machine skews latency
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
