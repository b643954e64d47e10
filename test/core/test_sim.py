"""The simulator writes KITTI-layout sequences whose camera and LiDAR agree, deterministically."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from cmirl_ros.cli import main as cmirl
from cmirl_ros.datasets.kitti import KittiSequence
from cmirl_ros.geometry import project_to_depth, read_kitti_poses, revisit_mask
from cmirl_ros.sim import DEMO_SIM, SimConfig, Simulator, simulate_sequence
from cmirl_ros.sim.conditions import CONDITIONS
from cmirl_ros.sim.trajectory import loop_trajectory, revisit_weight
from cmirl_ros.sim.world import WORLD_VERSION

# Small images and frames on the route's first street: fast, and the LiDAR scan stays full size.
SMALL = SimConfig(trajectory="loop", frames="100:106:2", width=320, height=97, seed=3, workers=1)


@pytest.fixture(scope="module")
def simulator():
    return Simulator(SMALL)


@pytest.fixture(scope="module")
def written(tmp_path_factory, simulator):
    root = tmp_path_factory.mktemp("sim")
    simulate_sequence(SMALL, root, "07", progress=False, simulator=simulator)
    return root


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_exactly_the_kitti_layout(written):
    seq = written / "sequences" / "07"
    assert sorted(p.name for p in (seq / "image_2").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert sorted(p.name for p in (seq / "velodyne").iterdir()) == ["000000.bin", "000001.bin", "000002.bin"]
    assert (seq / "calib.txt").is_file() and (written / "poses" / "07.txt").is_file()
    assert len((seq / "times.txt").read_text().split()) == 3
    assert json.loads((seq / "sim.json").read_text())["world_version"] == WORLD_VERSION
    with Image.open(seq / "image_2" / "000000.png") as img:
        assert img.size == (320, 97) and img.mode == "RGB"


def test_an_interrupted_run_leaves_no_completion_marker(tmp_path, written, simulator, monkeypatch):
    import shutil

    import cmirl_ros.sim.sequence as sequence

    shutil.copytree(written, tmp_path / "root")  # a complete earlier run is being overwritten

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(sequence, "write_frame", fail)
    with pytest.raises(OSError):
        simulate_sequence(SMALL, tmp_path / "root", "07", progress=False, simulator=simulator)
    assert not (tmp_path / "root" / "poses" / "07.txt").exists()
    assert not (tmp_path / "root" / "sequences" / "07" / "times.txt").exists()


def test_written_poses_equal_the_requested_trajectory(written):
    expected = loop_trajectory().poses[100:106:2]
    np.testing.assert_allclose(read_kitti_poses(written / "poses" / "07.txt"), expected, atol=1e-6)


def test_loads_through_the_kitti_reader_with_hdl64_scans(written):
    ds = KittiSequence(written, "07")
    assert len(ds) == 3
    frame = ds[1]
    assert frame.image.shape == (97, 320, 3)
    assert frame.points.dtype == np.float32 and frame.points.shape[1] == 4
    assert 100_000 < len(frame.points) < 140_000  # an HDL-64E sweep in a town: ~120k returns
    assert 0.0 <= frame.points[:, 3].min() and frame.points[:, 3].max() < 1.0
    rings = np.degrees(np.arctan2(frame.points[:, 2], np.linalg.norm(frame.points[:, :2], axis=1)))
    assert rings.max() < 2.5 and rings.min() > -25.5  # the HDL-64E's vertical field of view
    # The reader's camera is the written camera 2, scaled to the image size.
    assert ds.calib.camera.width == 320 and abs(ds.calib.camera.fx - 718.856 * 320 / 1241) < 1e-6


def test_lidar_projected_with_written_calib_matches_rendered_depth(written, simulator):
    ds = KittiSequence(written, "07")
    for i, index in enumerate(simulator.frames):
        frame = ds[i]
        lidar_depth = project_to_depth(frame.points, frame.calib.T_cam_sensor, frame.calib.camera)
        camera_depth = simulator.render_image(index).depth
        both = (lidar_depth > 0) & (camera_depth > 0)
        assert both.sum() > 2000
        rel = np.abs(lidar_depth[both] - camera_depth[both]) / camera_depth[both]
        # Edges differ (the sensors sit 27 cm apart and pixels are coarse); surfaces agree.
        assert np.median(rel) < 0.01
        assert np.mean(rel < 0.05) > 0.9


def test_lidar_with_a_wrong_extrinsic_does_not_match(written, simulator):
    """The consistency check above can fail: a 1 m error in Tr breaks it."""
    frame = KittiSequence(written, "07")[0]
    T = frame.calib.T_cam_sensor.copy()
    T[0, 3] += 1.0
    lidar_depth = project_to_depth(frame.points, T, frame.calib.camera)
    camera_depth = simulator.render_image(simulator.frames[0]).depth
    both = (lidar_depth > 0) & (camera_depth > 0)
    rel = np.abs(lidar_depth[both] - camera_depth[both]) / camera_depth[both]
    assert np.mean(rel < 0.05) < 0.8


def test_same_seed_gives_byte_identical_files_with_any_worker_count(tmp_path, written, simulator):
    simulate_sequence(replace(SMALL, workers=2), tmp_path, "07", progress=False)
    assert _files(tmp_path) == _files(written)


def test_another_seed_builds_another_town(simulator):
    other = Simulator(replace(SMALL, seed=4))
    a, b = simulator.render_image(100).image, other.render_image(100).image
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_conditions_change_images_not_poses_or_clouds(simulator):
    index = simulator.frames[0]
    day_image, day_cloud = simulator.render_image(index).image, simulator.scan(index)
    for name in ("low_light", "shadows", "fog", "rain", "snow"):
        other = Simulator(replace(SMALL, condition=name), world=simulator.world)
        np.testing.assert_array_equal(other.poses, simulator.poses)
        image = other.render_image(index).image
        assert np.abs(image.astype(int) - day_image.astype(int)).mean() > 4, name
        cloud = other.scan(index)
        if name in ("low_light", "shadows"):
            assert cloud.tobytes() == day_cloud.tobytes(), name
        else:  # weather only removes returns (more with range) and adds centimetres of noise
            assert len(cloud) < len(day_cloud), name
            gap = cKDTree(day_cloud[:, :3]).query(cloud[:, :3])[0]
            assert np.percentile(gap, 99) < 0.2, name
    fog = Simulator(replace(SMALL, condition="fog"), world=simulator.world).scan(index)
    assert np.linalg.norm(fog[:, :3], axis=1).max() < np.linalg.norm(day_cloud[:, :3], axis=1).max()


def test_viewpoint_moves_only_the_revisits():
    base = Simulator(replace(SMALL, frames=None))
    moved = Simulator(replace(SMALL, frames=None, condition="viewpoint"), world=base.world)
    shift = np.linalg.norm(moved.poses[:, :3, 3] - base.poses[:, :3, 3], axis=1)
    weight = revisit_weight(base.poses, base.stamps)
    assert np.all(shift[weight == 0] == 0)
    assert shift.max() == pytest.approx(2.0, abs=1e-6)
    assert (shift > 1.9).sum() > 100


def test_loop_route_revisits_after_the_exclusion_window():
    traj = loop_trajectory()
    length = np.linalg.norm(np.diff(traj.poses[:, [0, 2], 3], axis=0), axis=1).sum()
    assert 800 < length < 1200
    revisits = revisit_mask(traj.poses, traj.stamps, radius=5.0, exclude_seconds=30.0, axes=(0, 2))
    assert revisits.sum() > 150
    demo = Simulator(DEMO_SIM, world=None)
    assert 250 <= len(demo.frames) <= 400 and demo.camera.width <= 640


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """A crude global descriptor: a zero-mean, unit-norm 32x12 grey thumbnail."""
    grey = np.asarray(Image.fromarray(image).convert("L").resize((32, 12), Image.BILINEAR), np.float32).ravel()
    grey -= grey.mean()
    return grey / np.linalg.norm(grey)


def test_revisits_look_alike_but_not_identical_and_places_differ():
    from cmirl_ros.sim.contact_sheet import first_visit

    sim = Simulator(SimConfig(trajectory="loop", width=160, height=48, workers=1))
    xz = sim.poses[:, [0, 2], 3]
    for revisit in (700, 740, 940):  # straight stretches of the second pass
        first = first_visit(sim, revisit)
        assert np.linalg.norm(xz[first] - xz[revisit]) < 2.0 and sim.stamps[revisit] - sim.stamps[first] > 30
        query, match = sim.render_image(revisit).image, sim.render_image(first).image
        assert np.abs(query.astype(int) - match.astype(int)).mean() > 2  # moved cars, other light
        elsewhere = [i for i in range(0, 640, 16) if np.linalg.norm(xz[i] - xz[revisit]) > 30]
        q = _thumbnail(query)
        others = max(float(_thumbnail(sim.render_image(i).image) @ q) for i in elsewhere)
        assert float(_thumbnail(match) @ q) > others


def test_revisits_see_moved_cars(simulator):
    first, later = simulator.world.mesh_at(0), simulator.world.mesh_at(2)
    assert len(simulator.world.slots) > 20
    assert len(first.faces) != len(later.faces) or not np.array_equal(first.vertices, later.vertices)
    np.testing.assert_array_equal(first.faces[: len(simulator.world.static.faces)], simulator.world.static.faces)


def test_every_condition_is_known():
    assert set(CONDITIONS) == {"day", "low_light", "shadows", "fog", "rain", "snow", "viewpoint"}


def test_real_kitti_trajectory_and_times(kitti_meta, tmp_path):
    config = SimConfig(trajectory=str(kitti_meta / "poses" / "05.txt"), frames="10:12", width=160, height=48,
                       calib=str(kitti_meta / "calib" / "2011_09_30_seq04-10.txt"), workers=1)
    simulate_sequence(config, tmp_path, "05", progress=False)
    ds = KittiSequence(tmp_path, "05")
    real_times = np.loadtxt(kitti_meta / "times" / "05.txt")[10:12]
    np.testing.assert_allclose(ds.stamps, real_times, atol=1e-5)
    np.testing.assert_allclose(read_kitti_poses(tmp_path / "poses" / "05.txt"),
                               read_kitti_poses(kitti_meta / "poses" / "05.txt")[10:12], atol=1e-6)
    assert len(ds[0].points) > 50_000


def test_cli_writes_a_sequence_and_rejects_bad_input(tmp_path, capsys):
    assert cmirl(["sim", "--frames", "0:2", "--width", "64", "--height", "32", "--workers", "1", "--quiet",
                  "--out", str(tmp_path), "--seq", "00"]) == 0
    assert len(list((tmp_path / "sequences" / "00" / "velodyne").glob("*.bin"))) == 2
    assert cmirl(["sim", "--trajectory", str(tmp_path / "missing.txt"), "--out", str(tmp_path), "--seq", "01"]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert cmirl(["sim", "--condition", "hail", "--out", str(tmp_path), "--seq", "01"]) == 2
    assert cmirl(["sim", "--frames", "5:2", "--out", str(tmp_path), "--seq", "01"]) == 2
    assert cmirl(["sim", "--frames", "0:2"]) == 2  # neither --out/--seq nor --contact-sheet


def test_contact_sheet_shows_every_condition(tmp_path):
    out = tmp_path / "sheet.png"
    assert cmirl(["sim", "--contact-sheet", str(out), "--width", "124", "--height", "38"]) == 0
    with Image.open(out) as img:
        assert img.size[0] == 3 * 620 and img.size[1] > 3 * 150
        tiles = np.asarray(img).reshape(3, img.size[1] // 3, 3, 620, 3)
    means = tiles.mean(axis=(1, 3, 4)).ravel()
    assert len(set(np.round(means).tolist())) >= 7  # the conditions look different


def test_bench_reports_throughput(tmp_path):
    out = tmp_path / "bench.json"
    assert cmirl(["bench", "sim", "--frames", "2", "--width", "64", "--height", "32", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["fps_1_worker"] > 0 and figures["fps_2_workers"] > 0
    assert figures["points_per_scan_median"] > 100_000 and figures["cpu_s_per_frame_median"] > 0
