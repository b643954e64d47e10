"""FAISS indexes over L2-normalised descriptors, scored by inner product (= cosine similarity).

Index types (chosen by `IndexConfig.type`):
- `flat`: exact inner product (IndexFlatIP), 4*D bytes per entry; the default for small maps.
- `hnsw`: HNSW graph over fp16 vectors (IndexHNSWSQ, QT_fp16): ~2*D + 8*M bytes per entry and
  sub-millisecond single-query search at a million entries.
- `ivfpq`: inverted lists + product quantisation: smallest (pq_m bytes per entry) but lowest recall.
- `auto`: `flat` below `auto_threshold` entries, `hnsw` from there on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import faiss
import numpy as np

from cmirl_ros.config import dataclass_from_mapping

INDEX_TYPES = ("flat", "hnsw", "ivfpq", "auto")


@dataclass
class IndexConfig:
    type: str = "auto"
    auto_threshold: int = 20_000  # flat search over 20k x 256 takes ~1 ms on one core
    hnsw_m: int = 32
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 256
    ivf_lists: int = 0  # 0 = 4 * sqrt(N)
    ivf_probe: int = 16
    pq_m: int = 64
    pq_bits: int = 8

    def __post_init__(self):
        if self.type not in INDEX_TYPES:
            raise ValueError(f"unknown index type '{self.type}'; choose one of: {', '.join(INDEX_TYPES)}")

    def resolved_type(self, count: int) -> str:
        if self.type != "auto":
            return self.type
        return "flat" if count < self.auto_threshold else "hnsw"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "IndexConfig":
        return dataclass_from_mapping(cls, data, "index")


def build_index(descriptors: np.ndarray, config: IndexConfig) -> tuple[faiss.Index, str]:
    """Index over (N, D) float32 descriptors; returns (index, resolved type)."""
    vectors = np.ascontiguousarray(descriptors, dtype=np.float32)
    count, dim = vectors.shape
    kind = config.resolved_type(count)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.index_factory(dim, f"HNSW{config.hnsw_m},SQfp16", faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.train(vectors)  # fp16 needs no statistics; this only marks it trained
    else:
        index = _ivfpq(vectors, config)
    index.add(vectors)
    configure_search(index, config)
    return index, kind


def _ivfpq(vectors: np.ndarray, config: IndexConfig) -> faiss.Index:
    count, dim = vectors.shape
    if dim % config.pq_m:
        raise ValueError(f"ivfpq: descriptor size {dim} is not divisible by pq_m={config.pq_m}")
    lists = config.ivf_lists or max(1, int(4 * np.sqrt(count)))
    if count < 39 * max(lists, 2**config.pq_bits):
        raise ValueError(f"ivfpq: {count} entries are too few to train {lists} lists; use 'flat' or 'hnsw'")
    index = faiss.index_factory(dim, f"IVF{lists},PQ{config.pq_m}x{config.pq_bits}", faiss.METRIC_INNER_PRODUCT)
    train = vectors if count <= 256 * lists else vectors[np.random.default_rng(0).choice(count, 256 * lists, replace=False)]
    index.train(train)
    return index


def configure_search(index: faiss.Index, config: IndexConfig) -> None:
    """Apply search-time parameters (not stored in the FAISS file)."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = config.hnsw_ef_search
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = config.ivf_probe


def search_index(index: faiss.Index, queries: np.ndarray, k: int, config: IndexConfig):
    """Top-k (scores (Q,k), rows (Q,k)); missing results are (-inf, -1). HNSW's beam widens to at least k."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    found = min(k, index.ntotal)
    if found > 0:
        params = None
        if isinstance(index, faiss.IndexHNSW) and found > config.hnsw_ef_search:
            params = faiss.SearchParametersHNSW(efSearch=found)
        scores[:, :found], rows[:, :found] = index.search(queries, found, params=params)
    scores[rows < 0] = -np.inf
    return scores, rows


def index_bytes(index: faiss.Index) -> int:
    """Size of the serialised index: what it occupies in memory, to within a few kilobytes."""
    return int(faiss.serialize_index(index).nbytes)
