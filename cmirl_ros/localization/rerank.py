"""Re-ranking of the top candidates, chosen by name (`LocalizerConfig.rerank`).

A reranker gets the query descriptor (D,), the candidate keyframe ids (K,) and their index scores
(K,), and returns new scores (K,); the localizer re-sorts by them.
- `none`: keep the index's order.
- `exact`: re-score with the exact float32 inner product against the stored descriptors, undoing
  what a compressed index (HNSW over fp16, IVF-PQ) loses.
- `query_expansion`: alpha-weighted query expansion: the query is averaged with its best
  candidates' descriptors (weights score^alpha) and all candidates are re-scored against that,
  which favours candidates consistent with the top group over isolated look-alikes.
"""
from __future__ import annotations

import numpy as np

from cmirl_ros.registry import Registry

RERANKERS: Registry = Registry("reranker")


@RERANKERS.register("none")
def keep_order(query: np.ndarray, ids: np.ndarray, scores: np.ndarray, mapdb) -> np.ndarray:
    return scores


@RERANKERS.register("exact")
def exact_scores(query: np.ndarray, ids: np.ndarray, scores: np.ndarray, mapdb) -> np.ndarray:
    return _candidate_descriptors(mapdb, ids) @ query.astype(np.float32)


@RERANKERS.register("query_expansion")
def query_expansion(query: np.ndarray, ids: np.ndarray, scores: np.ndarray, mapdb,
                    neighbours: int = 3, alpha: float = 3.0) -> np.ndarray:
    candidates = _candidate_descriptors(mapdb, ids)
    top = np.argsort(-scores)[:neighbours]
    weights = np.clip(scores[top], 0.0, None) ** alpha
    expanded = query.astype(np.float32) + weights @ candidates[top]
    expanded /= np.linalg.norm(expanded)
    return candidates @ expanded


def _candidate_descriptors(mapdb, ids: np.ndarray) -> np.ndarray:
    # Sorted reads are kinder to a memory-mapped descriptor file.
    order = np.argsort(ids)
    rows = np.empty((len(ids), mapdb.descriptor_dim), np.float32)
    rows[order] = mapdb.descriptors[ids[order]]
    return rows
