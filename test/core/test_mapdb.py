"""Map database: round trip, validation of damaged maps, model mismatch, exclusion, keyframes, merge."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cmirl_ros.mapdb import IndexConfig, Keyframes, MapDatabase, select_keyframes
from cmirl_ros.benchmarks.synthetic import trajectory_descriptors
from cmirl_ros.mapdb.storage import atomic_directory

FINGERPRINT = "test_model-0123456789abcdef"


def make_map(count=600, dim=32, index="flat", session="seq", seed=0, stamp_step=0.1) -> MapDatabase:
    descriptors = trajectory_descriptors(count, dim, route_length=100, step=0.3, seed=seed)
    poses = np.tile(np.eye(4), (count, 1, 1))
    poses[:, 0, 3] = np.arange(count)
    angles = np.linspace(0, np.pi, count)
    poses[:, 0, 0] = poses[:, 2, 2] = np.cos(angles)
    poses[:, 0, 2], poses[:, 2, 0] = np.sin(angles), -np.sin(angles)
    keyframes = Keyframes.from_poses(poses, np.arange(count) * stamp_step, session, [f"{i:06d}" for i in range(count)])
    manifest = {"model": {"name": "test_model", "fingerprint": FINGERPRINT}, "preprocessing": {"height": 8}}
    return MapDatabase(descriptors, keyframes, manifest, index_config=IndexConfig(type=index))


@pytest.fixture(scope="module")
def saved_map(tmp_path_factory):
    mapdb = make_map(index="hnsw")
    path = tmp_path_factory.mktemp("maps") / "map"
    mapdb.save(path)
    return mapdb, path


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_round_trip_gives_identical_search_results(tmp_path, index):
    mapdb = make_map(index=index)
    queries = mapdb.descriptors[::7] + 0.05 * np.random.default_rng(1).standard_normal((86, 32)).astype(np.float32)
    before = mapdb.search(queries, 5)
    mapdb.save(tmp_path / "map")
    loaded = MapDatabase.load(tmp_path / "map", expect_fingerprint=FINGERPRINT)
    after = loaded.search(queries, 5)
    assert loaded.index_type == index
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(loaded.descriptors, mapdb.descriptors)
    np.testing.assert_array_equal(loaded.keyframes.poses(), mapdb.keyframes.poses())
    np.testing.assert_array_equal(loaded.keyframes.stamps, mapdb.keyframes.stamps)
    assert loaded.keyframes.source_frames[42] == "000042"
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["counts"]["keyframes"] == 600 and manifest["descriptor"]["dim"] == 32
    assert manifest["index"]["type"] == index and manifest["index"]["bytes_per_entry"]["total"] > 0


def test_keyframe_pose_round_trips_through_quaternion():
    mapdb = make_map(count=50)
    T = mapdb.keyframes.pose(30)
    angle = np.pi * 30 / 49
    np.testing.assert_allclose(T[:3, 3], [30, 0, 0])
    np.testing.assert_allclose(T[0, 0], np.cos(angle), atol=1e-12)
    np.testing.assert_allclose(T[0, 2], np.sin(angle), atol=1e-12)


def _corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (lambda d: (d / "manifest.json").unlink(), FileNotFoundError, "manifest.json: map manifest missing"),
        (lambda d: (d / "manifest.json").write_text("{broken"), ValueError, "manifest.json: corrupted manifest"),
        (lambda d: (d / "descriptors.npy").unlink(), FileNotFoundError, "descriptors.npy: map file missing"),
        (lambda d: (d / "keyframes.csv").unlink(), FileNotFoundError, "keyframes.csv: map file missing"),
        (lambda d: (d / "index.faiss").unlink(), FileNotFoundError, "index.faiss: map file missing"),
        (lambda d: _corrupt(d / "descriptors.npy"), ValueError, "descriptors.npy: corrupted (sha256"),
        (lambda d: _corrupt(d / "keyframes.csv"), ValueError, "keyframes.csv: corrupted (sha256"),
        (lambda d: _corrupt(d / "index.faiss"), ValueError, "index.faiss: corrupted (sha256"),
        (lambda d: (d / "index.faiss").write_bytes(b"short"), ValueError, "index.faiss: corrupted (size"),
    ],
)
def test_each_damaged_file_gives_its_error(saved_map, tmp_path, damage, error, message):
    import shutil

    mapdb, original = saved_map
    damaged = tmp_path / "map"
    shutil.copytree(original, damaged)
    damage(damaged)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        MapDatabase.load(damaged)
    MapDatabase.load(original)  # the source map is untouched


def test_wrong_format_version_is_refused(saved_map, tmp_path):
    import shutil

    _, original = saved_map
    shutil.copytree(original, tmp_path / "map")
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "map" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest.json: map format version 99 is not supported"):
        MapDatabase.load(tmp_path / "map")


def test_a_map_from_before_the_map_frame_is_refused_with_the_rebuild_command(saved_map, tmp_path):
    """A version-1 map (keyframe poses in the dataset's own world, no frame_convention): one line
    naming the directory and saying how to rebuild it; also through the CLI (exit 2)."""
    import shutil

    from cmirl_ros.cli import main

    _, original = saved_map
    old = tmp_path / "old_map"
    shutil.copytree(original, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["frame_convention"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as refused:
        MapDatabase.load(old)
    message = str(refused.value)
    assert str(old) in message and "before the map frame" in message and "\n" not in message
    assert f"cmirl map build --dataset ... --out {old} --overwrite" in message
    assert main(["map", "info", str(old)]) == 2


def test_frame_convention_is_saved_and_merges_only_alike(tmp_path):
    from cmirl_ros.geometry.frames import KITTI_CAMERA0, T_MAP_KITTI_WORLD

    given = make_map(count=20)
    assert given.frame_convention.source_world == "map" and np.array_equal(given.frame_convention.T_map_world, np.eye(4))
    kitti = make_map(count=20)
    kitti.manifest["frame_convention"] = KITTI_CAMERA0.to_manifest()
    kitti.save(tmp_path / "kitti")
    loaded = MapDatabase.load(tmp_path / "kitti").frame_convention
    np.testing.assert_array_equal(loaded.T_map_world, T_MAP_KITTI_WORLD)
    assert loaded.ground_axes == (0, 1) and loaded.map_frame == "z-up (REP 103)"
    with pytest.raises(ValueError, match="different frame_convention"):
        MapDatabase.merge([given, kitti])


def test_missing_map_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: map directory not found"):
        MapDatabase.load(tmp_path / "nowhere")


def test_model_mismatch_is_refused(saved_map):
    _, path = saved_map
    with pytest.raises(ValueError, match="model mismatch.*test_model"):
        MapDatabase.load(path, expect_fingerprint="other_model-ffffffffffffffff")
    assert MapDatabase.load(path, expect_fingerprint=FINGERPRINT).fingerprint == FINGERPRINT


def test_save_never_clobbers_without_overwrite(tmp_path):
    first, second = make_map(count=100), make_map(count=200, seed=5)
    first.save(tmp_path / "map")
    with pytest.raises(ValueError, match="already exists"):
        second.save(tmp_path / "map")
    assert len(MapDatabase.load(tmp_path / "map")) == 100
    second.save(tmp_path / "map", overwrite=True)
    assert len(MapDatabase.load(tmp_path / "map")) == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]  # no temp or old dirs left


def test_failed_write_leaves_existing_map_and_no_temp(tmp_path):
    make_map(count=100).save(tmp_path / "map")
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "map", overwrite=True) as temp:
            (temp / "partial").write_text("x")
            raise RuntimeError("disk full")
    assert len(MapDatabase.load(tmp_path / "map")) == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_temporal_exclusion_removes_self_matches(index):
    mapdb = make_map(index=index)
    queries = mapdb.descriptors[100:110]
    stamps = mapdb.keyframes.stamps[100:110]
    _, plain = mapdb.search(queries, 3)
    assert np.array_equal(plain[:, 0], np.arange(100, 110))  # without the guard each query finds itself
    scores, ids = mapdb.search(queries, 3, exclude_stamp=stamps, exclude_seconds=2.0)
    assert (ids >= 0).all() and np.isfinite(scores).all()  # still k results after over-fetching
    gaps = np.abs(mapdb.keyframes.stamps[ids] - stamps[:, None])
    assert (gaps > 2.0).all()
    assert (np.diff(scores, axis=1) <= 0).all()


def test_exclusion_applies_to_the_query_session_only():
    a, b = make_map(count=300, session="run_a"), make_map(count=300, session="run_b")
    merged = MapDatabase.merge([a, b])
    query = a.descriptors[50]
    _, ids = merged.search(query, 1, exclude_stamp=5.0, exclude_seconds=1.0, exclude_session="run_b")
    assert ids[0, 0] == 50  # run_a's entry at the same stamp is another session: kept
    _, ids = merged.search(query, 1, exclude_stamp=5.0, exclude_seconds=1.0, exclude_session="run_a")
    assert abs(merged.keyframes.stamps[ids[0, 0]] - 5.0) > 1.0 or merged.keyframes.sessions[ids[0, 0]] == "run_b"


def test_keyframe_selection_on_a_known_trajectory():
    poses = np.tile(np.eye(4), (101, 1, 1))
    poses[:, 0, 3] = np.arange(101) * 0.5  # 50 m straight line in 0.5 m steps
    assert list(select_keyframes(poses, 5.0)) == list(range(0, 101, 10))
    assert len(select_keyframes(poses, 0.0)) == 101
    # Vertical motion (KITTI's y axis) does not count on ground axes (x, z).
    lifted = poses.copy()
    lifted[:, 1, 3] = np.arange(101) * 10.0
    assert len(select_keyframes(lifted, 5.0, axes=(0, 2))) == 11
    # Turning on the spot: 90 degrees in 1-degree steps makes a keyframe every 30 degrees.
    turning = np.tile(np.eye(4), (91, 1, 1))
    for i, a in enumerate(np.radians(np.arange(91))):
        turning[i, :3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    assert list(select_keyframes(turning, 5.0, angle_deg=30.0)) == [0, 30, 60, 90]
    assert list(select_keyframes(turning, 5.0)) == [0]


def test_merge_of_shards_equals_one_map(tmp_path):
    whole = make_map(count=600)
    kf = whole.keyframes
    halves = [
        MapDatabase(whole.descriptors[s], Keyframes(kf.stamps[s], kf.sessions[s], kf.source_frames[s], kf.positions[s],
                                                    kf.quaternions[s], kf.frame_ids[s]), whole.manifest)
        for s in (slice(0, 250), slice(250, 600))
    ]
    for i, half in enumerate(halves):
        half.save(tmp_path / f"shard{i}")
    merged = MapDatabase.merge([MapDatabase.load(tmp_path / f"shard{i}") for i in range(2)])
    queries = whole.descriptors[::11]
    np.testing.assert_array_equal(merged.search(queries, 4)[1], whole.search(queries, 4)[1])
    assert merged.manifest["model"]["fingerprint"] == FINGERPRINT


def test_merge_refuses_other_models():
    a, b = make_map(count=100), make_map(count=100)
    b.manifest["model"] = {"name": "other", "fingerprint": "other-1"}
    with pytest.raises(ValueError, match="different model"):
        MapDatabase.merge([a, b])


def test_auto_index_switches_to_hnsw_above_threshold():
    small = make_map(count=200, index="auto")
    assert small.index_type == "flat"
    config = IndexConfig(type="auto", auto_threshold=100)
    assert MapDatabase(small.descriptors, small.keyframes, index_config=config).index_type == "hnsw"


def test_ivfpq_refuses_too_few_entries():
    with pytest.raises(ValueError, match="too few"):
        make_map(count=600, dim=64, index="ivfpq")


def test_unknown_index_type_is_named():
    with pytest.raises(ValueError, match="unknown index type 'annoy'"):
        IndexConfig(type="annoy")


def test_hnsw_recall_on_trajectory_descriptors():
    """A small version of `cmirl bench mapdb`: HNSW top-1 agrees with exact search."""
    mapdb = make_map(count=3000, dim=64, index="hnsw")
    exact = MapDatabase(mapdb.descriptors, mapdb.keyframes, index_config=IndexConfig(type="flat"))
    rng = np.random.default_rng(3)
    queries = mapdb.descriptors[rng.integers(0, 3000, 200)] + 0.06 * rng.standard_normal((200, 64)).astype(np.float32)
    agree = mapdb.search(queries, 1)[1][:, 0] == exact.search(queries, 1)[1][:, 0]
    assert agree.mean() >= 0.95


def test_map_merge_and_info_cli(tmp_path):
    from cmirl_ros.cli import main

    make_map(count=150, session="a").save(tmp_path / "a")
    make_map(count=250, session="b", seed=2).save(tmp_path / "b")
    assert main(["map", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ab")]) == 0
    merged = MapDatabase.load(tmp_path / "ab", expect_fingerprint=FINGERPRINT)
    assert len(merged) == 400 and list(merged.keyframes.sessions[[0, 149, 150]]) == ["a", "a", "b"]
    assert merged.keyframes.source_frames[150] == "000000"
    assert main(["map", "info", str(tmp_path / "ab"), "--json", str(tmp_path / "info.json")]) == 0
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["keyframes"] == 400 and info["sessions"] == ["a", "b"] and info["bytes_per_entry"]["index"] == pytest.approx(128, abs=0.5)
    assert main(["map", "merge", str(tmp_path / "a"), str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_bench_mapdb_writes_the_contract_keys(tmp_path):
    from cmirl_ros.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "mapdb", "--entries", "4000", "--dim", "32", "--index", "hnsw", "--queries", "100",
                 "--route-length", "200", "--threads", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for key in ("search_ms_p50", "search_ms_p99", "recall_vs_exact", "bytes_per_entry", "build_s"):
        assert key in figures
    assert figures["recall_vs_exact"] >= 0.9 and figures["index"] == "hnsw"
    assert 0 < figures["search_ms_p50"] <= figures["search_ms_p99"]


def test_search_pads_when_the_map_is_smaller_than_k():
    mapdb = make_map(count=3)
    scores, ids = mapdb.search(mapdb.descriptors[:2], 5)
    assert scores.shape == ids.shape == (2, 5)
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all() and (ids[:, :3] >= 0).all()


def test_keyframe_selection_on_real_kitti_poses(kitti_meta):
    from cmirl_ros.geometry import KITTI_GROUND_AXES, read_kitti_poses
    from cmirl_ros.geometry.poses import travelled_distance

    poses = read_kitti_poses(kitti_meta / "poses" / "00.txt")
    path = travelled_distance(poses, KITTI_GROUND_AXES)
    assert 3600 < path[-1] < 3800  # 3.72 km
    keys = select_keyframes(poses, 2.0, axes=KITTI_GROUND_AXES)
    gaps = np.diff(path[keys])
    assert (gaps >= 2.0 - 1e-9).all()
    max_step = np.diff(path).max()
    assert (gaps < 2.0 + max_step).all()  # never skips a frame that already made the distance
    assert path[-1] / (2.0 + max_step) <= len(keys) <= path[-1] / 2.0 + 1


def test_keyframe_table_round_trip_and_bad_rows(tmp_path):
    keyframes = make_map(count=300, session="run, with comma").keyframes
    keyframes.write_csv(tmp_path / "k.csv")
    again = Keyframes.read_csv(tmp_path / "k.csv")
    np.testing.assert_array_equal(again.poses(), keyframes.poses())
    np.testing.assert_array_equal(again.stamps, keyframes.stamps)
    assert list(again.source_frames) == list(keyframes.source_frames) and again.source_frames.dtype == "<U6"
    assert again.sessions[5] == "run, with comma" and again.frame_ids[5] == "map"
    lines = (tmp_path / "k.csv").read_text().splitlines()
    (tmp_path / "gap.csv").write_text("\n".join(lines[:100] + lines[101:]) + "\n")
    with pytest.raises(ValueError, match="gap.csv: keyframe ids must be the row numbers"):
        Keyframes.read_csv(tmp_path / "gap.csv")
    (tmp_path / "bad.csv").write_text("\n".join(lines[:50] + ["50,notanumber"] + lines[51:]) + "\n")
    with pytest.raises(ValueError, match="bad.csv: malformed keyframe table"):
        Keyframes.read_csv(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text(lines[0] + "\n")
    assert len(Keyframes.read_csv(tmp_path / "empty.csv")) == 0
