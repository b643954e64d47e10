"""Damaged-file cases, shared by the core/CLI probe (test/core/test_probe_files.py) and the node probe.

Each case damages a COPY of a valid map directory or model file in place. A loader must refuse it
with its typed error (`MapFormatError` / `ModelFormatError`, both ValueError) whose message names
`names` (the file it is about); the CLI must print that as one line and exit 2.

    MAP_CASES:   name -> ProbeCase(damage(map_dir), names)
    MODEL_CASES: name -> ProbeCase(damage(weights_file), names)   # the .safetensors file itself
    interrupt_overwrite(map_dir, new_map_dir): the state a SIGKILL between the two renames of
        `map build --overwrite` leaves (not an error case: the next load must find a map).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MANIFEST = "manifest.json"
DESCRIPTORS = "descriptors.npy"
KEYFRAMES = "keyframes.csv"
INDEX = "index.faiss"


@dataclass(frozen=True)
class ProbeCase:
    damage: Callable[[Path], None]
    names: str  # the file name the one-line error must contain


# ---------------------------------------------------------------------------------------------- maps
def edit_manifest(map_dir: Path, edit: Callable[[dict], object]) -> None:
    path = map_dir / MANIFEST
    manifest = json.loads(path.read_text())
    result = edit(manifest)
    path.write_text(json.dumps(manifest if result is None else result))


def rewrite_file(map_dir: Path, name: str, data: bytes) -> None:
    """Replace a map file and record its new sha256 and size, so only the deeper checks can object."""
    (map_dir / name).write_bytes(data)

    def record(manifest):
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    edit_manifest(map_dir, record)


def edit_npy_header(map_dir: Path, name: str, edit: Callable[[str], str]) -> None:
    """Edit the dict text of a version-1.0 .npy header (padding kept), checksum updated."""
    data = (map_dir / name).read_bytes()
    header_len = struct.unpack("<H", data[8:10])[0]
    header = data[10 : 10 + header_len].decode("latin1")
    edited = edit(header.rstrip(" \n")).ljust(header_len - 1) + "\n"
    if len(edited) != header_len:
        raise AssertionError(f"edited header {edited!r} does not fit {header_len} bytes")
    rewrite_file(map_dir, name, data[:10] + edited.encode("latin1") + data[10 + header_len :])


def edit_keyframe_row(map_dir: Path, row: int, columns: dict[int, str | None]) -> None:
    lines = (map_dir / KEYFRAMES).read_text().splitlines()
    cells = lines[row + 1].split(",")
    for column, value in columns.items():
        cells[column] = value
    lines[row + 1] = ",".join(cell for cell in cells if cell is not None)  # None drops the cell
    rewrite_file(map_dir, KEYFRAMES, ("\n".join(lines) + "\n").encode())


def _delete(*keys: str) -> Callable[[dict], None]:
    def edit(manifest):
        node = manifest
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return edit


def _set(value, *keys: str) -> Callable[[dict], None]:
    def edit(manifest):
        node = manifest
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


MAP_CASES: dict[str, ProbeCase] = {
    # The 8 CLI cases of issue 14 that printed tracebacks (the map ones) ...
    "files_as_list": ProbeCase(lambda d: edit_manifest(d, lambda m: m.update(files=list(m["files"]))), MANIFEST),
    "counts_without_keyframes": ProbeCase(lambda d: edit_manifest(d, _delete("counts", "keyframes")), MANIFEST),
    "index_without_config": ProbeCase(lambda d: edit_manifest(d, _delete("index", "config")), MANIFEST),
    "file_without_bytes": ProbeCase(lambda d: edit_manifest(d, _delete("files", DESCRIPTORS, "bytes")), MANIFEST),
    "descriptor_header_unparsable": ProbeCase(
        lambda d: edit_npy_header(d, DESCRIPTORS, lambda h: h.replace("'shape': (", "'shape': ((")), DESCRIPTORS),
    # ... and what probing found besides.
    "descriptor_header_more_rows": ProbeCase(
        lambda d: edit_npy_header(d, DESCRIPTORS, lambda h: h.replace("'shape': (", "'shape': (9")), DESCRIPTORS),
    "descriptor_header_float64": ProbeCase(
        lambda d: edit_npy_header(d, DESCRIPTORS, lambda h: h.replace("<f4", "<f8")), DESCRIPTORS),
    "descriptor_header_fortran": ProbeCase(
        lambda d: edit_npy_header(d, DESCRIPTORS, lambda h: h.replace("False", "True ")), DESCRIPTORS),
    "manifest_is_a_list": ProbeCase(lambda d: edit_manifest(d, lambda m: [m]), MANIFEST),
    "manifest_not_utf8": ProbeCase(lambda d: (d / MANIFEST).write_bytes(b"\xff\xfe{"), MANIFEST),
    "files_missing_descriptors": ProbeCase(lambda d: edit_manifest(d, _delete("files", DESCRIPTORS)), MANIFEST),
    "file_bytes_as_text": ProbeCase(lambda d: edit_manifest(d, _set("12", "files", DESCRIPTORS, "bytes")), MANIFEST),
    "file_sha256_null": ProbeCase(lambda d: edit_manifest(d, _set(None, "files", INDEX, "sha256")), MANIFEST),
    "file_entry_a_string": ProbeCase(lambda d: edit_manifest(d, _set("x", "files", KEYFRAMES)), MANIFEST),
    "counts_a_list": ProbeCase(lambda d: edit_manifest(d, _set([1], "counts")), MANIFEST),
    "counts_keyframes_negative": ProbeCase(lambda d: edit_manifest(d, _set(-1, "counts", "keyframes")), MANIFEST),
    "counts_keyframes_wrong": ProbeCase(lambda d: edit_manifest(d, lambda m: m["counts"].update(
        keyframes=m["counts"]["keyframes"] + 1)), DESCRIPTORS),  # the first file that disagrees with it
    "descriptor_dim_text": ProbeCase(lambda d: edit_manifest(d, _set("32", "descriptor", "dim")), MANIFEST),
    "descriptor_a_number": ProbeCase(lambda d: edit_manifest(d, _set(7, "descriptor")), MANIFEST),
    "index_type_unknown": ProbeCase(lambda d: edit_manifest(d, _set("annoy", "index", "type")), MANIFEST),
    "index_config_unknown_key": ProbeCase(lambda d: edit_manifest(d, _set(1, "index", "config", "bogus")), MANIFEST),
    "index_config_m_text": ProbeCase(lambda d: edit_manifest(d, _set("x", "index", "config", "hnsw_m")), MANIFEST),
    "index_config_a_list": ProbeCase(lambda d: edit_manifest(d, _set([], "index", "config")), MANIFEST),
    "model_a_string": ProbeCase(lambda d: edit_manifest(d, _set("model", "model")), MANIFEST),
    # The map frame (format version 2): maps from before it, and damaged conventions.
    "format_version_1_without_frames": ProbeCase(lambda d: edit_manifest(d, lambda m: (
        m.update(format_version=1), m.pop("frame_convention"))[0]), MANIFEST),
    "frame_convention_missing": ProbeCase(lambda d: edit_manifest(d, _delete("frame_convention")), MANIFEST),
    "frame_convention_short": ProbeCase(lambda d: edit_manifest(d, _set([1.0] * 12, "frame_convention", "T_map_world")),
                                        MANIFEST),
    "frame_convention_not_rigid": ProbeCase(lambda d: edit_manifest(d, _set(
        [2.0, 0, 0, 0, 0, 2.0, 0, 0, 0, 0, 2.0, 0, 0, 0, 0, 1.0], "frame_convention", "T_map_world")), MANIFEST),
    "frame_convention_nan": ProbeCase(lambda d: edit_manifest(d, _set(
        [float("nan")] + [0.0] * 15, "frame_convention", "T_map_world")), MANIFEST),
    "missing_bytes": ProbeCase(lambda d: (d / DESCRIPTORS).write_bytes((d / DESCRIPTORS).read_bytes()[:-7]), DESCRIPTORS),
    "descriptors_truncated_with_checksum": ProbeCase(
        lambda d: rewrite_file(d, DESCRIPTORS, (d / DESCRIPTORS).read_bytes()[:-128]), DESCRIPTORS),
    "descriptors_not_npy": ProbeCase(lambda d: rewrite_file(d, DESCRIPTORS, b"not an array at all"), DESCRIPTORS),
    "descriptors_a_directory": ProbeCase(lambda d: ((d / DESCRIPTORS).unlink(), (d / DESCRIPTORS).mkdir()), DESCRIPTORS),
    "index_flipped_bit": ProbeCase(lambda d: _flip_middle_byte(d / INDEX), INDEX),
    "index_garbage_with_checksum": ProbeCase(lambda d: rewrite_file(d, INDEX, b"\0" * 64), INDEX),
    "keyframes_nan_position": ProbeCase(lambda d: edit_keyframe_row(d, 3, {4: "nan"}), KEYFRAMES),
    "keyframes_nan_quaternion": ProbeCase(lambda d: edit_keyframe_row(d, 3, {7: "nan"}), KEYFRAMES),
    "keyframes_zero_quaternion": ProbeCase(lambda d: edit_keyframe_row(d, 5, {7: "0", 8: "0", 9: "0", 10: "0"}), KEYFRAMES),
    "keyframes_infinite_stamp": ProbeCase(lambda d: edit_keyframe_row(d, 2, {1: "inf"}), KEYFRAMES),
    "keyframes_short_row": ProbeCase(lambda d: edit_keyframe_row(d, 2, {11: None}), KEYFRAMES),
    "keyframes_wrong_header": ProbeCase(
        lambda d: rewrite_file(d, KEYFRAMES, (d / KEYFRAMES).read_bytes().replace(b"qw", b"qq", 1)), KEYFRAMES),
    "keyframes_one_row_short": ProbeCase(lambda d: rewrite_file(
        d, KEYFRAMES, b"\n".join((d / KEYFRAMES).read_bytes().splitlines()[:-1]) + b"\n"), KEYFRAMES),
    "keyframes_not_utf8": ProbeCase(lambda d: rewrite_file(d, KEYFRAMES, b"\xff\xfe\x00garbage"), KEYFRAMES),
}


def interrupt_overwrite(map_dir: Path, new_map_dir: Path) -> None:
    """Reproduce what a SIGKILL between the two renames of an overwriting save leaves behind: the
    complete new map staged beside `map_dir`, the old one moved aside, no `map_dir`."""
    from cmirl_ros.mapdb.storage import staged_paths

    staged = staged_paths(map_dir)
    shutil.move(str(new_map_dir), staged.new)
    map_dir.rename(staged.old)


# --------------------------------------------------------------------------------------------- models
def rewrite_metadata(weights: Path, edit: Callable[[dict], None]) -> None:
    """Re-save a checkpoint's tensors with edited safetensors metadata (a string -> string map)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(weights), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    state = load_file(str(weights))
    edit(metadata)
    save_file(state, str(weights), metadata=metadata)


def flip_weight_bit(weights: Path) -> None:
    """Flip the lowest bit of one byte in the middle of the tensor data (the header stays valid)."""
    data = bytearray(weights.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    start = 8 + header_len
    data[start + (len(data) - start) // 2] ^= 0x01
    weights.write_bytes(bytes(data))


def _meta_delete(key: str):
    return lambda w: rewrite_metadata(w, lambda m: m.pop(key))


def _meta_set(key: str, value: str):
    return lambda w: rewrite_metadata(w, lambda m: m.update({key: value}))


WEIGHTS = "model.safetensors"
MODEL_CASES: dict[str, ProbeCase] = {
    # The 2 model cases of issue 14's 8 CLI cases ...
    "metadata_without_config": ProbeCase(_meta_delete("config"), WEIGHTS),
    "metadata_without_config_hash": ProbeCase(_meta_delete("config_hash"), WEIGHTS),
    # ... and the rest.
    "config_not_json": ProbeCase(_meta_set("config", "{name: cmirl"), WEIGHTS),
    "config_a_list": ProbeCase(_meta_set("config", "[1, 2]"), WEIGHTS),
    "config_hash_wrong": ProbeCase(_meta_set("config_hash", "0" * 64), WEIGHTS),
    "preprocessing_not_json": ProbeCase(_meta_set("preprocessing", "height: 8"), WEIGHTS),
    "extra_not_json": ProbeCase(_meta_set("extra", "{"), WEIGHTS),
    "metadata_without_weights_sha256": ProbeCase(_meta_delete("weights_sha256"), WEIGHTS),
    "weights_sha256_wrong": ProbeCase(_meta_set("weights_sha256", "f" * 64), WEIGHTS),
    "fingerprint_wrong": ProbeCase(_meta_set("fingerprint", "cmirl_lite-0000000000000000"), WEIGHTS),
    "format_wrong": ProbeCase(_meta_set("format", "other/1"), WEIGHTS),
    "weights_bit_flip": ProbeCase(flip_weight_bit, WEIGHTS),
    "truncated": ProbeCase(lambda w: w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2]), WEIGHTS),
    "not_safetensors": ProbeCase(lambda w: w.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"), WEIGHTS),
}
