"""Re-ranking of the top candidates, chosen by name (`LocalizerConfig.rerank`).

A reranker gets the query (`EncodedQuery`: descriptor (D,), local tokens (T, C) or None), the candidate
keyframe ids (K,) and their index scores (K,), and returns new scores (K,); the localizer re-sorts
by them.
- `none`: keep the index's order.
- `exact`: re-score with the exact float32 inner product against the stored descriptors, undoing
  what a compressed index (HNSW over fp16, IVF-PQ) loses.
- `query_expansion`: alpha-weighted query expansion: the query is averaged with its best
  candidates' descriptors (weights score^alpha) and all candidates are re-scored against that,
  which favours candidates consistent with the top group over isolated look-alikes.
- `cross_attention`: the query's local tokens (from its image, or image + scan) attend over each
  candidate's stored depth tokens (`cmirl map build --tokens`); the score is the mean cosine
  between query tokens and what they attend to (`cmirl_ros.mapdb.tokens.attention_scores`).
"""
from __future__ import annotations

import numpy as np

from dataclasses import dataclass

from cmirl_ros.registry import Registry

RERANKERS: Registry = Registry("reranker")
NEEDS_TOKENS = {"cross_attention"}


@dataclass
class EncodedQuery:
    """A query after the network: what search and re-ranking use (not the node's pending camera message)."""

    descriptor: np.ndarray  # (D,) float32
    tokens: np.ndarray | None = None  # (T, C) float16 local tokens, when the reranker needs them


@RERANKERS.register("none")
def keep_order(query: EncodedQuery, ids: np.ndarray, scores: np.ndarray, mapdb) -> np.ndarray:
    return scores


@RERANKERS.register("exact")
def exact_scores(query: EncodedQuery, ids: np.ndarray, scores: np.ndarray, mapdb) -> np.ndarray:
    return _candidate_descriptors(mapdb, ids) @ query.descriptor


@RERANKERS.register("query_expansion")
def query_expansion(query: EncodedQuery, ids: np.ndarray, scores: np.ndarray, mapdb,
                    neighbours: int = 3, alpha: float = 3.0) -> np.ndarray:
    candidates = _candidate_descriptors(mapdb, ids)
    top = np.argsort(-scores)[:neighbours]
    weights = np.clip(scores[top], 0.0, None) ** alpha
    expanded = query.descriptor + weights @ candidates[top]
    expanded /= np.linalg.norm(expanded)
    return candidates @ expanded


@RERANKERS.register("cross_attention")
def cross_attention(query: EncodedQuery, ids: np.ndarray, scores: np.ndarray, mapdb) -> np.ndarray:
    from cmirl_ros.mapdb.tokens import attention_scores

    if query.tokens is None or mapdb.tokens is None:
        raise ValueError("cross_attention re-ranking needs query tokens and a map built with --tokens")
    return attention_scores(query.tokens, _rows(mapdb.tokens, ids))


def _candidate_descriptors(mapdb, ids: np.ndarray) -> np.ndarray:
    return _rows(mapdb.descriptors, ids).astype(np.float32)


def _rows(array, ids: np.ndarray) -> np.ndarray:
    # Sorted reads are kinder to a memory-mapped file.
    order = np.argsort(ids)
    rows = np.empty((len(ids), *array.shape[1:]), array.dtype)
    rows[order] = array[ids[order]]
    return rows
