"""The map database: keyframe descriptors, their poses, and a FAISS index, saved as a directory.

Directory layout (format version 2):
- `manifest.json`: format and version, model (name, config, fingerprint), preprocessing and virtual
  camera, descriptor size and metric, index type and parameters, counts, creation time, source,
  keyframe selection, the frame convention (`frame_convention`: the map frame, the source world and
  T_map_world, the ground axes), and the sha256 + size of every other file. Version 1 maps (poses in
  the source dataset's world) are refused with a message saying to rebuild them.
- `descriptors.npy`: (N, D) float32, L2-normalised; row i belongs to keyframe i.
- `keyframes.csv`: id, stamp, session, source_frame, x, y, z, qx, qy, qz, qw, frame_id.
- `index.faiss`: the FAISS index over the descriptors (row numbers are keyframe ids).
- `tokens.npy` (optional): (N, T, C) float16 local depth tokens for cross-modal re-ranking.
- `clouds.npy`, `cloud_offsets.npy`, `cloud_T_cam_sensor.npy` (optional): each keyframe's scan,
  voxel-downsampled, for registration verification (`cmirl_ros.mapdb.clouds`).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cmirl_ros.formats import MAP_FORMAT as FORMAT
from cmirl_ros.formats import MAP_FORMAT_VERSION as FORMAT_VERSION
from cmirl_ros.formats import MapFormatError, refusing
from cmirl_ros.geometry.frames import FrameConvention, as_given
from cmirl_ros.mapdb.clouds import CLOUD_FILES, KeyframeClouds
from cmirl_ros.mapdb.keyframes import Keyframes
from cmirl_ros.mapdb.storage import atomic_directory, sha256_file
from cmirl_ros.mapdb.validate import (
    MANIFEST,
    check_file,
    check_model,
    read_array,
    read_index,
    read_keyframes,
    read_manifest,
    stored_index_config,
)

DESCRIPTORS = "descriptors.npy"
KEYFRAMES = "keyframes.csv"
INDEX = "index.faiss"
TOKENS = "tokens.npy"
METRIC = "inner_product"


class MapDatabase:
    """Descriptors + keyframes + index. `search` returns keyframe ids (= row numbers)."""

    def __init__(self, descriptors: np.ndarray, keyframes: Keyframes, manifest: dict | None = None,
                 index_config=None, index=None, tokens: np.ndarray | None = None,
                 clouds: KeyframeClouds | None = None):
        from cmirl_ros.mapdb.index import IndexConfig, build_index, configure_search

        if descriptors.ndim != 2 or len(descriptors) != len(keyframes):
            raise ValueError(
                f"descriptors {descriptors.shape} do not match {len(keyframes)} keyframes (expected (N, D))"
            )
        if tokens is not None and (tokens.ndim != 3 or len(tokens) != len(keyframes)):
            raise ValueError(f"tokens {tokens.shape} do not match {len(keyframes)} keyframes (expected (N, T, C))")
        if clouds is not None and len(clouds) != len(keyframes):
            raise ValueError(f"{len(clouds)} keyframe clouds do not match {len(keyframes)} keyframes")
        self.descriptors = descriptors
        self.keyframes = keyframes
        self.tokens = tokens
        self.clouds = clouds
        self.manifest = dict(manifest or {})
        # Keyframes handed over without a convention are taken as already in the map frame.
        self.manifest.setdefault("frame_convention", as_given("map").to_manifest())
        self.index_config = index_config or IndexConfig()
        if index is None:
            index, kind = build_index(descriptors, self.index_config)
        else:
            kind = self.manifest["index"]["type"]
            configure_search(index, self.index_config)
        self.index = index
        self.index_type = kind
        self._sorted_stamps = np.sort(keyframes.stamps)

    def __len__(self) -> int:
        return len(self.keyframes)

    @property
    def descriptor_dim(self) -> int:
        return int(self.descriptors.shape[1])

    @property
    def frame_convention(self) -> FrameConvention:
        """How the keyframe poses' map frame was made from the source dataset's world."""
        return FrameConvention.from_manifest(self.manifest["frame_convention"])

    @property
    def fingerprint(self) -> str | None:
        return self.manifest.get("model", {}).get("fingerprint")

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, exclude_stamp=None, exclude_seconds: float = 0.0,
               exclude_session: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores (Q,k) float32, ids (Q,k) int64), best first; missing results are (-inf, -1).

        With `exclude_stamp` (scalar or (Q,)) and `exclude_seconds` > 0, keyframes whose stamp lies
        within `exclude_seconds` of the query's stamp are dropped (only those of `exclude_session`
        when given): the self-match guard. The search over-fetches by the number of keyframes in
        that time window, so exactly k survivors come back whenever the map has them.
        """
        from cmirl_ros.mapdb.index import search_index

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.descriptor_dim:
            raise ValueError(f"query descriptors have size {queries.shape[1]}, the map has {self.descriptor_dim}")
        if exclude_stamp is None or exclude_seconds <= 0:
            return search_index(self.index, queries, k, self.index_config)
        stamps = np.broadcast_to(np.asarray(exclude_stamp, dtype=np.float64), (len(queries),))
        in_window = np.searchsorted(self._sorted_stamps, stamps + exclude_seconds, side="right") - np.searchsorted(
            self._sorted_stamps, stamps - exclude_seconds, side="left"
        )
        scores, ids = search_index(self.index, queries, k + int(in_window.max()), self.index_config)
        return self._drop_window(scores, ids, stamps, exclude_seconds, exclude_session, k)

    def _drop_window(self, scores, ids, stamps, seconds, session, k):
        out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(ids), k), -1, dtype=np.int64)
        for q in range(len(ids)):
            rows = ids[q]
            valid = rows >= 0
            near = np.abs(self.keyframes.stamps[rows] - stamps[q]) <= seconds
            if session is not None:
                near &= self.keyframes.sessions[rows] == session
            keep = np.flatnonzero(valid & ~near)[:k]
            out_scores[q, : len(keep)] = scores[q, keep]
            out_ids[q, : len(keep)] = rows[keep]
        return out_scores, out_ids

    # ------------------------------------------------------------------ memory
    def bytes_per_entry(self) -> dict:
        """Resident memory per keyframe: the index and the keyframe table. The float32 descriptors
        of a loaded map are memory-mapped from disk (read only by merge and exact re-scoring)."""
        from cmirl_ros.mapdb.index import index_bytes

        n = max(len(self), 1)
        index = index_bytes(self.index) / n
        table = (self.keyframes.nbytes() + self._sorted_stamps.nbytes) / n
        return {"index": round(index, 1), "keyframes": round(table, 1), "total": round(index + table, 1)}

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the map directory atomically (temp dir beside it, fsync, rename)."""
        import faiss

        directory = Path(directory)
        with atomic_directory(directory, overwrite=overwrite) as temp:
            np.save(temp / DESCRIPTORS, np.ascontiguousarray(self.descriptors, dtype=np.float32))
            self.keyframes.write_csv(temp / KEYFRAMES)
            faiss.write_index(self.index, str(temp / INDEX))
            if self.tokens is not None:
                np.save(temp / TOKENS, np.ascontiguousarray(self.tokens, dtype=np.float16))
            if self.clouds is not None:
                self.manifest["clouds"] = self.clouds.save(temp)
            manifest = self._complete_manifest(temp)
            (temp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        self.manifest = manifest
        return directory

    def _complete_manifest(self, temp: Path) -> dict:
        manifest = dict(self.manifest)
        manifest.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            created_utc=manifest.get("created_utc") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            descriptor={"dim": self.descriptor_dim, "dtype": "float32", "metric": METRIC, "normalized": True},
            index={"type": self.index_type, "config": self.index_config.to_dict(),
                   "bytes_per_entry": self.bytes_per_entry()},
            files={name: {"sha256": sha256_file(temp / name), "bytes": (temp / name).stat().st_size}
                   for name in (DESCRIPTORS, KEYFRAMES, INDEX, TOKENS, *CLOUD_FILES) if (temp / name).is_file()},
        )
        counts = dict(manifest.get("counts", {}))
        counts["keyframes"] = len(self)
        manifest["counts"] = counts
        return manifest

    @classmethod
    def load(cls, directory: str | Path, expect_fingerprint: str | None = None, verify: bool = True,
             index_config=None) -> "MapDatabase":
        """Load and validate a map directory (`cmirl_ros/mapdb/validate.py`). Whatever the directory
        holds, raises only FileNotFoundError or `MapFormatError` (a ValueError) naming the file, or a
        ValueError for a model mismatch. An `--overwrite` save interrupted by a crash is finished first.

        `expect_fingerprint`: the model fingerprint the caller will query with; a map built with
        another model is refused. `verify`: check every file's sha256 against the manifest.
        `index_config`: search parameters; a different index type than the stored one rebuilds it.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        check_model(manifest, directory / MANIFEST, expect_fingerprint)
        stored = stored_index_config(manifest, directory / MANIFEST)
        has_tokens = TOKENS in manifest["files"]
        for name in (DESCRIPTORS, KEYFRAMES, INDEX) + ((TOKENS,) if has_tokens else ()):
            check_file(directory, name, manifest, verify)
        shape = (manifest["counts"]["keyframes"], manifest["descriptor"]["dim"])
        descriptors = read_array(directory / DESCRIPTORS, np.float32, shape)
        tokens = read_array(directory / TOKENS, np.float16, (shape[0], None, None)) if has_tokens else None
        keyframes = read_keyframes(directory / KEYFRAMES, shape[0])
        clouds = _load_clouds(directory, manifest, shape[0], verify)
        config = index_config or stored
        index = read_index(directory / INDEX, shape) if config.resolved_type(shape[0]) == manifest["index"]["type"] else None
        return cls(descriptors, keyframes, manifest, index_config=config, index=index, tokens=tokens, clouds=clouds)

    # ------------------------------------------------------------------ merge
    @classmethod
    def merge(cls, maps: list["MapDatabase"], index_config=None) -> "MapDatabase":
        """One map from shards built with the same model and preprocessing; ids are renumbered in
        order and the index is rebuilt over all entries. Tokens are kept when every shard has them."""
        if not maps:
            raise ValueError("nothing to merge")
        first = maps[0].manifest
        for m in maps[1:]:
            for key in ("model", "preprocessing", "frame_convention"):
                if m.manifest.get(key) != first.get(key):
                    raise ValueError(f"cannot merge maps with different {key}: {first.get(key)} vs {m.manifest.get(key)}")
            if m.descriptor_dim != maps[0].descriptor_dim:
                raise ValueError(f"cannot merge maps with descriptor sizes {maps[0].descriptor_dim} and {m.descriptor_dim}")
        manifest = {k: v for k, v in first.items() if k not in ("files", "index", "created_utc", "counts")}
        manifest["sources"] = [m.manifest.get("source") for m in maps]
        manifest["counts"] = {"source_frames": sum(m.manifest.get("counts", {}).get("source_frames", len(m)) for m in maps)}
        manifest.pop("source", None)
        descriptors = np.concatenate([np.asarray(m.descriptors, dtype=np.float32) for m in maps])
        keyframes = Keyframes.concatenate([m.keyframes for m in maps])
        tokens = None
        if all(m.tokens is not None for m in maps):
            if len({m.tokens.shape[1:] for m in maps}) > 1:
                raise ValueError(f"cannot merge maps with token shapes {[m.tokens.shape[1:] for m in maps]}")
            tokens = np.concatenate([np.asarray(m.tokens) for m in maps])
        manifest.pop("clouds", None)
        clouds = KeyframeClouds.concatenate([m.clouds for m in maps]) if all(m.clouds is not None for m in maps) else None
        return cls(descriptors, keyframes, manifest, index_config=index_config or maps[0].index_config, tokens=tokens,
                   clouds=clouds)


def _load_clouds(directory: Path, manifest: dict, count: int, verify: bool) -> KeyframeClouds | None:
    """The keyframe clouds when the map has them (maps built before them, or without, load as before)."""
    if CLOUD_FILES[0] not in manifest["files"]:
        return None
    for name in CLOUD_FILES:
        check_file(directory, name, manifest, verify)
    if not isinstance(manifest.get("clouds"), dict):
        raise MapFormatError(directory / MANIFEST, "lists cloud files but has no 'clouds' entry")
    with refusing(directory / CLOUD_FILES[0], MapFormatError, "inconsistent keyframe clouds"):
        return KeyframeClouds.load(directory, manifest["clouds"], count)
