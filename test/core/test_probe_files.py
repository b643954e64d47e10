"""Probe: every damaged map or model file (test/probe_cases.py) is refused by the loaders with the one
typed error (MapFormatError / ModelFormatError, ValueError subclasses) naming the file, and by the CLI
with exit 2 and one error line naming the file. Also: an interrupted `--overwrite` swap is recovered,
and empty frame ranges and bad YAML are one-line errors."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cmirl_ros.cli import main
from cmirl_ros.config import load_yaml
from cmirl_ros.formats import MapFormatError, ModelFormatError
from cmirl_ros.mapdb import IndexConfig, Keyframes, MapDatabase
from cmirl_ros.models import build_model, load_model, model_fingerprint, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probe_cases import MAP_CASES, MODEL_CASES, interrupt_overwrite  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = "cmirl_single_scale"
# The map and model cases of issue 14 whose CLI printed a traceback (with `map build --out` under a file).
ISSUE_MAP_CASES = ["files_as_list", "counts_without_keyframes", "index_without_config", "file_without_bytes",
                   "descriptor_header_unparsable"]
ISSUE_MODEL_CASES = ["metadata_without_config", "metadata_without_config_hash"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model(MODEL, load_pretrained=False).eval(), tmp_path_factory.mktemp("model") / MODEL).parent


@pytest.fixture(scope="module")
def fingerprint(model_dir) -> str:
    return model_fingerprint(load_model(model_dir, device="cpu"))


def tiny_map(count: int, fingerprint: str, seed: int = 0, dim: int = 32) -> MapDatabase:
    rng = np.random.default_rng(seed)
    descriptors = rng.standard_normal((count, dim)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    poses = np.tile(np.eye(4), (count, 1, 1))
    poses[:, 0, 3] = np.arange(count)
    keyframes = Keyframes.from_poses(poses, np.arange(count) * 0.1, "kitti-00", [f"{i:06d}" for i in range(count)])
    manifest = {"model": {"name": MODEL, "fingerprint": fingerprint}}
    return MapDatabase(descriptors, keyframes, manifest, index_config=IndexConfig(type="flat"))


@pytest.fixture(scope="module")
def valid_map(tmp_path_factory, fingerprint) -> Path:
    return tiny_map(40, fingerprint).save(tmp_path_factory.mktemp("map") / "map")


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory) -> Path:
    """A two-frame KITTI layout without sensor files: enough for commands to open the dataset."""
    from cmirl_ros.geometry import write_kitti_calib, write_kitti_poses
    from cmirl_ros.geometry.kitti_calib import kitti_00_02_calib

    root = tmp_path_factory.mktemp("kitti")
    sequence = root / "sequences" / "00"
    sequence.mkdir(parents=True)
    write_kitti_calib(sequence / "calib.txt", kitti_00_02_calib())
    (sequence / "times.txt").write_text("0.0\n0.1\n")
    write_kitti_poses(root / "poses" / "00.txt", np.tile(np.eye(4), (2, 1, 1)))
    return root


def damaged_copy(source: Path, tmp_path: Path, case) -> Path:
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    case.damage(copy / "model.safetensors" if (copy / "model.safetensors").is_file() else copy)
    return copy


def one_error_line(capsys, names: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and names in lines[0] and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------- maps
def test_the_valid_map_and_model_load(valid_map, model_dir, fingerprint):
    assert len(MapDatabase.load(valid_map, expect_fingerprint=fingerprint)) == 40
    assert load_model(model_dir, device="cpu").name == MODEL


@pytest.mark.parametrize("name", sorted(MAP_CASES))
def test_map_loader_raises_only_map_format_error(valid_map, tmp_path, name):
    case = MAP_CASES[name]
    damaged = damaged_copy(valid_map, tmp_path, case)
    with pytest.raises(MapFormatError) as error:
        MapDatabase.load(damaged)
    message = str(error.value)
    assert isinstance(error.value, ValueError) and case.names in message and "\n" not in message, message
    assert error.value.path.name == case.names


@pytest.mark.parametrize("name", sorted(MAP_CASES))
def test_map_info_prints_one_line_and_exits_2(valid_map, tmp_path, capsys, name):
    damaged = damaged_copy(valid_map, tmp_path, MAP_CASES[name])
    assert main(["map", "info", str(damaged)]) == 2
    assert one_error_line(capsys, MAP_CASES[name].names).startswith("cmirl map: error: ")


@pytest.mark.parametrize("name", ISSUE_MAP_CASES)
def test_localize_and_eval_on_a_damaged_map(valid_map, model_dir, kitti_root, tmp_path, capsys, name):
    damaged = damaged_copy(valid_map, tmp_path, MAP_CASES[name])
    data = ["--dataset", "kitti", "--root", str(kitti_root), "--seq", "00"]
    assert main(["localize", "--map", str(damaged), "--model", str(model_dir), "--device", "cpu", *data]) == 2
    one_error_line(capsys, MAP_CASES[name].names)
    assert main(["eval", "--map", str(damaged), "--model", str(model_dir), "--device", "cpu", "--radius", "10",
                 "--json", str(tmp_path / "eval.json"), *data]) == 2
    one_error_line(capsys, MAP_CASES[name].names)


def test_map_info_through_the_real_entry_point(valid_map, tmp_path):
    damaged = damaged_copy(valid_map, tmp_path, MAP_CASES["files_as_list"])
    cmirl = Path(sys.executable).parent / "cmirl"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([str(cmirl), "map", "info", str(damaged)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"{damaged / 'manifest.json'}: " in done.stderr


@pytest.mark.parametrize("command", ["build", "merge"])
def test_map_out_under_an_existing_file(valid_map, kitti_root, tmp_path, capsys, command):
    (tmp_path / "a_file").write_text("not a directory")
    out = tmp_path / "a_file" / "map"
    source = ["--dataset", "kitti", "--root", str(kitti_root), "--seq", "00"] if command == "build" else [str(valid_map)]
    assert main(["map", command, *source, "--out", str(out)]) == 2
    assert "a_file" in one_error_line(capsys, "a_file")
    assert (tmp_path / "a_file").read_text() == "not a directory"


def test_overwrite_refuses_to_replace_a_file_or_a_directory_that_is_no_map(valid_map, tmp_path, capsys):
    (tmp_path / "a_file").write_text("keep me")
    assert main(["map", "merge", str(valid_map), "--out", str(tmp_path / "a_file"), "--overwrite"]) == 2
    one_error_line(capsys, "a_file")
    assert (tmp_path / "a_file").read_text() == "keep me"
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_text("keep me too")
    assert main(["map", "merge", str(valid_map), "--out", str(tmp_path / "photos"), "--overwrite"]) == 2
    assert "not a map" in one_error_line(capsys, "photos")
    assert (tmp_path / "photos" / "holiday.jpg").read_text() == "keep me too"


# --------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_model_loader_raises_only_model_format_error(model_dir, tmp_path, name):
    case = MODEL_CASES[name]
    damaged = damaged_copy(model_dir, tmp_path, case)
    with pytest.raises(ModelFormatError) as error:
        load_model(damaged, device="cpu")
    message = str(error.value)
    assert isinstance(error.value, ValueError) and case.names in message and "\n" not in message, message


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_map_build_with_a_damaged_model_prints_one_line(model_dir, kitti_root, tmp_path, capsys, name):
    damaged = damaged_copy(model_dir, tmp_path, MODEL_CASES[name])
    assert main(["map", "build", "--model", str(damaged), "--device", "cpu", "--dataset", "kitti",
                 "--root", str(kitti_root), "--seq", "00", "--out", str(tmp_path / "map")]) == 2
    one_error_line(capsys, MODEL_CASES[name].names)


def test_a_flipped_weight_bit_is_named_as_such(model_dir, tmp_path):
    damaged = damaged_copy(model_dir, tmp_path, MODEL_CASES["weights_bit_flip"])
    with pytest.raises(ModelFormatError, match="weights do not match their weights_sha256"):
        load_model(damaged, device="cpu")


# ------------------------------------------------------------------------------- interrupted overwrite
def test_next_load_finishes_a_swap_interrupted_between_the_renames(tmp_path, fingerprint):
    tiny_map(40, fingerprint).save(tmp_path / "map")
    tiny_map(50, fingerprint, seed=1).save(tmp_path / "staging" / "new")
    interrupt_overwrite(tmp_path / "map", tmp_path / "staging" / "new")
    assert not (tmp_path / "map").exists()
    assert len(MapDatabase.load(tmp_path / "map")) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map", "staging"]


def test_sigkill_between_the_renames_loses_no_map(tmp_path, fingerprint):
    """A real SIGKILL of a real overwriting save, right after the old map was moved aside."""
    tiny_map(40, fingerprint).save(tmp_path / "map")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / 'test' / 'core')!r})
        from test_probe_files import tiny_map
        import cmirl_ros.mapdb.storage as storage
        real_replace = storage.os.replace
        def replace_then_die(src, dst):
            real_replace(src, dst)
            if str(dst).endswith(".map.old"):
                os.kill(os.getpid(), signal.SIGKILL)
        storage.os.replace = replace_then_die
        tiny_map(50, {fingerprint!r}, seed=1).save({str(tmp_path / 'map')!r}, overwrite=True)
    """)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not (tmp_path / "map").exists()  # the moment the issue describes
    assert len(MapDatabase.load(tmp_path / "map")) == 50  # the next load finishes the swap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]


def test_next_save_cleans_stale_temporaries_and_a_finished_swaps_leftovers(tmp_path, fingerprint):
    tiny_map(40, fingerprint).save(tmp_path / "map")
    (tmp_path / ".map.tmp-dead").mkdir()  # a build killed while writing
    (tmp_path / ".map.tmp-dead" / "descriptors.npy").write_bytes(b"partial")
    (tmp_path / ".map.old").mkdir()  # killed while deleting the replaced map
    (tmp_path / ".other.tmp-keep").mkdir()  # another map's: not ours to touch
    tiny_map(30, fingerprint).save(tmp_path / "map", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-keep", "map"]
    assert len(MapDatabase.load(tmp_path / "map")) == 30


def test_a_temporary_of_a_save_in_progress_is_left_alone(tmp_path, fingerprint):
    from cmirl_ros.mapdb.storage import atomic_directory, clean_stale_temporaries

    with atomic_directory(tmp_path / "map") as temp:
        (temp / "x").write_text("being written")
        clean_stale_temporaries(tmp_path / "map")  # what another process's save would do now
        assert (temp / "x").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]


# ------------------------------------------------------------------------------ frame ranges and YAML
@pytest.mark.parametrize("frames, problem", [("10:5", "empty"), ("5:5", "empty"), ("7:9", "no frames")])
@pytest.mark.parametrize("command", ["eval", "localize", "map build"])
def test_an_empty_frame_range_is_refused_by_every_command(valid_map, model_dir, kitti_root, tmp_path, capsys,
                                                          frames, problem, command):
    data = ["--dataset", "kitti", "--root", str(kitti_root), "--seq", "00", "--frames", frames]
    extra = {"eval": ["--model", str(model_dir), "--radius", "10", "--json", str(tmp_path / "e.json")],
             "localize": ["--map", str(valid_map), "--model", str(model_dir)],
             "map build": ["--model", str(model_dir), "--out", str(tmp_path / "m")]}[command]
    assert main([*command.split(), *data, *extra]) == 2
    assert problem in one_error_line(capsys, "--frames")


def test_eval_refuses_an_empty_map_frame_range(model_dir, kitti_root, tmp_path, capsys):
    assert main(["eval", "--model", str(model_dir), "--dataset", "kitti", "--root", str(kitti_root), "--seq", "00",
                 "--map-frames", "3:1", "--radius", "10", "--json", str(tmp_path / "e.json")]) == 2
    assert "empty" in one_error_line(capsys, "--map-frames")


def test_bad_yaml_is_one_line_naming_the_file(kitti_root, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbackbone: [unclosed\n")
    assert main(["map", "build", "--model", str(bad), "--dataset", "kitti", "--root", str(kitti_root), "--seq", "00",
                 "--out", str(tmp_path / "m")]) == 2
    line = one_error_line(capsys, "bad.yaml")
    assert f"{bad}:3:1: invalid YAML: expected ',' or ']'" in line
    with pytest.raises(ValueError) as error:
        load_yaml(bad)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------ "any content"
def _key_paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _key_paths(value, prefix + (key,))


def test_any_value_at_any_manifest_key_gives_a_map_or_map_format_error(valid_map, tmp_path):
    """Every key of a real manifest, replaced by values of every JSON type: the load succeeds (the key
    does not matter to loading) or raises MapFormatError naming the manifest or the file it describes."""
    import json

    original = json.loads((valid_map / "manifest.json").read_text())
    damaged = tmp_path / "map"
    shutil.copytree(valid_map, damaged)
    refused = 0
    for path in list(_key_paths(original)):
        for value in (None, "x", -1, 0, 10**30, 1.5, True, [], {}, [1, 2]):
            manifest = json.loads(json.dumps(original))
            node = manifest
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            (damaged / "manifest.json").write_text(json.dumps(manifest))
            try:
                MapDatabase.load(damaged)
            except MapFormatError as e:
                assert "\n" not in str(e) and e.path.parent == damaged, (path, value, e)
                refused += 1
    assert refused > 100


def test_random_npy_header_edits_with_their_checksum_give_map_format_error(valid_map, tmp_path):
    from probe_cases import DESCRIPTORS, rewrite_file

    rng = np.random.default_rng(0)
    original = (valid_map / DESCRIPTORS).read_bytes()
    damaged = tmp_path / "map"
    shutil.copytree(valid_map, damaged)
    for _ in range(200):
        data = bytearray(original)
        for position in rng.integers(0, 128, rng.integers(1, 4)):
            data[position] = rng.choice(list(b"()[]{}',:0123456789 <>fiuTFalse\n\x00\xff"))
        rewrite_file(damaged, DESCRIPTORS, bytes(data))
        try:
            MapDatabase.load(damaged)
        except MapFormatError as e:
            assert "\n" not in str(e) and e.path.name in ("descriptors.npy", "manifest.json"), e


def test_random_keyframe_table_edits_with_their_checksum_give_map_format_error(valid_map, tmp_path):
    from probe_cases import KEYFRAMES, rewrite_file

    rng = np.random.default_rng(1)
    original = (valid_map / KEYFRAMES).read_bytes()
    damaged = tmp_path / "map"
    shutil.copytree(valid_map, damaged)
    for _ in range(200):
        data = bytearray(original)
        for position in rng.integers(0, len(data), rng.integers(1, 4)):
            data[position] = rng.choice(list(b',"\n\r\x00\xff-.e0123456789naif '))
        rewrite_file(damaged, KEYFRAMES, bytes(data))
        try:
            MapDatabase.load(damaged)
        except MapFormatError as e:
            assert "\n" not in str(e) and e.path.name == "keyframes.csv", e
