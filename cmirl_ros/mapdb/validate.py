"""A map directory checked at load: the manifest against `MAP_MANIFEST_SCHEMA`, then every file against
the manifest (size and sha256, .npy header, keyframe table and poses, FAISS index shape and metric).
Anything wrong raises `MapFormatError` naming the file; a missing file raises FileNotFoundError."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from cmirl_ros.formats import (
    MAP_FORMAT,
    MAP_FORMAT_VERSION,
    MAP_MANIFEST_SCHEMA,
    MapFormatError,
    integer,
    one_of,
    refusing,
    schema_problem,
)
from cmirl_ros.mapdb.keyframes import Keyframes
from cmirl_ros.mapdb.storage import recover_interrupted_save, sha256_file

MANIFEST = "manifest.json"
UNIT_QUATERNION_TOLERANCE = 1e-3  # stored quaternions are unit to ~1e-16; a hand edit with 4 digits still passes
RIGID_TOLERANCE = 1e-6
OLD_MAP = ("a map from before the map frame: its keyframe poses are in the source dataset's own world "
           "(KITTI: the y-down camera-0 world), not the map frame the localizer publishes in (z-up for KITTI)")


def read_manifest(directory: Path) -> dict:
    """The validated manifest of a map directory (an interrupted `--overwrite` save is finished first)."""
    recover_interrupted_save(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: map directory not found")
    path = directory / MANIFEST
    _require_regular_file(path, "map manifest missing")
    with refusing(path, MapFormatError, "corrupted manifest (not valid JSON)"):
        manifest = json.loads(path.read_text())
    if not isinstance(manifest, dict) or manifest.get("format") != MAP_FORMAT:
        raise MapFormatError(path, "not a cmirl map manifest")
    if manifest.get("format_version") == 1:
        raise MapFormatError(path, f"{OLD_MAP} (map format version 1); rebuild the map: cmirl map build "
                                   f"--dataset ... --out {directory} --overwrite")
    if manifest.get("format_version") != MAP_FORMAT_VERSION:
        raise MapFormatError(path, f"map format version {manifest.get('format_version')} is not supported "
                                   f"(this cmirl_ros reads version {MAP_FORMAT_VERSION}); rebuild the map with `cmirl map build`")
    problem = schema_problem(manifest, MAP_MANIFEST_SCHEMA)
    if problem:
        raise MapFormatError(path, f"invalid manifest: {problem}")
    _check_rigid(np.asarray(manifest["frame_convention"]["T_map_world"], np.float64).reshape(4, 4), path)
    return manifest


def _check_rigid(T: np.ndarray, path: Path) -> None:
    R = T[:3, :3]
    if not (np.allclose(R @ R.T, np.eye(3), atol=RIGID_TOLERANCE) and abs(np.linalg.det(R) - 1.0) < RIGID_TOLERANCE
            and np.array_equal(T[3], [0.0, 0.0, 0.0, 1.0])):
        raise MapFormatError(path, "invalid manifest: 'frame_convention.T_map_world' is not a rigid transform "
                                   "(rotation + translation, last row 0 0 0 1)")


def check_model(manifest: dict, path: Path, expect_fingerprint: str | None) -> None:
    if expect_fingerprint is None:
        return
    model = manifest.get("model", {})
    if model.get("fingerprint") != expect_fingerprint:
        raise ValueError(
            f"{path}: model mismatch: the map was built with model '{model.get('name')}' "
            f"(fingerprint {model.get('fingerprint')}), the localizer uses fingerprint {expect_fingerprint}; "
            "rebuild the map with this model"
        )


def stored_index_config(manifest: dict, path: Path):
    """The IndexConfig the map was saved with; its resolved type must be the stored index's type."""
    from cmirl_ros.mapdb.index import INDEX_TYPES, IndexConfig

    schema = {f.name + "?": one_of(*INDEX_TYPES) if f.name == "type" else integer(0) for f in fields(IndexConfig)}
    problem = schema_problem(manifest["index"]["config"], schema, "index.config")
    if problem:
        raise MapFormatError(path, f"invalid manifest: {problem}")
    with refusing(path, MapFormatError, "invalid manifest"):
        config = IndexConfig.from_dict(manifest["index"]["config"])
    count, kind = manifest["counts"]["keyframes"], manifest["index"]["type"]
    if config.resolved_type(count) != kind:
        raise MapFormatError(path, f"invalid manifest: index type '{kind}' does not follow from its config "
                                   f"('{config.type}' resolves to '{config.resolved_type(count)}' for {count} keyframes)")
    return config


def check_file(directory: Path, name: str, manifest: dict, verify: bool) -> None:
    """Size, and with `verify` the sha256, as the manifest records them."""
    path = directory / name
    _require_regular_file(path, "map file missing")
    expected = manifest["files"][name]
    with refusing(path, MapFormatError, "unreadable"):
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise MapFormatError(path, f"corrupted (size {size} bytes, manifest says {expected['bytes']})")
        if verify and sha256_file(path) != expected["sha256"]:
            raise MapFormatError(path, "corrupted (sha256 does not match manifest.json)")


def read_array(path: Path, dtype, shape: tuple[int | None, ...]) -> np.ndarray:
    """Memory-map a .npy file after checking its header (dtype, C order, shape; None = any size) and
    that the file holds exactly the bytes the header promises."""
    header_shape, fortran_order, header_dtype, offset = _npy_header(path)
    fits = (header_dtype == np.dtype(dtype) and not fortran_order and len(header_shape) == len(shape)
            and all(want is None or want == got for want, got in zip(shape, header_shape)))
    if not fits:
        wanted = "(" + ", ".join("*" if n is None else str(n) for n in shape) + ")"
        order = " in Fortran order" if fortran_order else ""
        raise MapFormatError(path, f"header says {header_dtype} {tuple(header_shape)}{order}, the manifest needs "
                                   f"{np.dtype(dtype)} {wanted} in C order")
    needed = offset + int(np.prod(header_shape)) * header_dtype.itemsize
    if path.stat().st_size != needed:
        raise MapFormatError(path, f"{path.stat().st_size} bytes, its header describes {needed}")
    with refusing(path, MapFormatError, "unreadable array"):
        return np.load(path, mmap_mode="r", allow_pickle=False)


def _npy_header(path: Path):
    from numpy.lib import format as npy

    with refusing(path, MapFormatError, "not a readable .npy array"), open(path, "rb") as f:
        version = npy.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise MapFormatError(path, f".npy format version {version} is not supported")
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        return shape, fortran_order, dtype, f.tell()


def read_keyframes(path: Path, count: int) -> Keyframes:
    """The keyframe table: `count` rows, finite stamps and positions, unit quaternions."""
    with refusing(path, MapFormatError, "unreadable keyframe table"):
        keyframes = Keyframes.read_csv(path)
    if len(keyframes) != count:
        raise MapFormatError(path, f"{len(keyframes)} rows, the manifest counts {count} keyframes")
    finite = (np.isfinite(keyframes.stamps) & np.isfinite(keyframes.positions).all(axis=1)
              & np.isfinite(keyframes.quaternions).all(axis=1))
    norms = np.linalg.norm(np.where(np.isfinite(keyframes.quaternions), keyframes.quaternions, 0.0), axis=1)
    bad = ~finite | (np.abs(norms - 1.0) > UNIT_QUATERNION_TOLERANCE)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        problem = "a non-finite stamp, position or quaternion" if not finite[row] else (
            f"a quaternion of norm {norms[row]:.3g} (poses need unit quaternions)")
        raise MapFormatError(path, f"keyframe {row} has {problem} ({int(bad.sum())} such rows)")
    return keyframes


def read_index(path: Path, shape: tuple[int, int]):
    import faiss

    with refusing(path, MapFormatError, "corrupted FAISS index"):
        index = faiss.read_index(str(path))
    if index.ntotal != shape[0] or index.d != shape[1]:
        raise MapFormatError(path, f"index holds {index.ntotal} x {index.d}, descriptors are {shape[0]} x {shape[1]}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise MapFormatError(path, "the index does not score by inner product (the map's metric)")
    return index


def _require_regular_file(path: Path, missing: str) -> None:
    if path.is_file():
        return
    if path.exists() or path.is_symlink():
        raise MapFormatError(path, "not a regular file")
    raise FileNotFoundError(f"{path}: {missing}")
