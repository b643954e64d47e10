"""Hard-aware lazy triplet loss and hard-negative mining.

Lazy triplet (PointNetVLAD): an anchor's loss is the largest hinge over its negatives,
so only the hardest negative pushes. "Hard-aware": the negatives offered to it are the
hardest ones found in the batch and in a descriptor cache of the whole training set.
"""
from __future__ import annotations

import numpy as np
import torch


DISTANCES = ("squared", "euclidean")


def distances(anchor: torch.Tensor, others: torch.Tensor, kind: str = "squared") -> torch.Tensor:
    """anchor (B,D), others (B,K,D) -> (B,K) squared or plain Euclidean distances.

    The plain distance keeps a unit-length gradient when descriptors coincide, where the squared
    one has none: a collapsed, constant descriptor is a stationary point only of the squared loss.
    """
    squared = ((others - anchor[:, None, :]) ** 2).sum(-1)
    if kind == "squared":
        return squared
    if kind == "euclidean":
        return torch.sqrt(squared + 1e-8)
    raise ValueError(f"unknown triplet distance '{kind}' (known: {', '.join(DISTANCES)})")


def lazy_triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    margin: float,
    negative_mask: torch.Tensor | None = None,
    distance: str = "squared",
) -> torch.Tensor:
    """Mean over anchors of max_j relu(margin + d(a, p) - d(a, n_j)).

    anchor, positive (B,D); negatives (B,K,D); `negative_mask` (B,K) marks which of the K
    are real negatives (padding and non-negatives are ignored). Anchors without any
    negative contribute zero. d is the squared (PointNetVLAD, the default) or plain
    Euclidean distance.
    """
    if negatives.shape[1] == 0:
        return anchor.sum() * 0.0
    d_pos = distances(anchor, positive[:, None, :], distance)  # (B,1)
    d_neg = distances(anchor, negatives, distance)  # (B,K)
    hinge = torch.relu(margin + d_pos - d_neg)
    if negative_mask is not None:
        hinge = hinge * negative_mask.to(hinge.dtype)
    return hinge.max(dim=1).values.mean()


def hardest_negatives(
    anchor_descriptors: np.ndarray,
    candidate_descriptors: np.ndarray,
    is_negative: np.ndarray,
    k: int,
) -> np.ndarray:
    """(B,k) indices of the k most similar candidates that are negatives of each anchor.

    Rows with fewer than k negatives are padded with -1. Similarity is the inner product
    (descriptors are L2-normalised), i.e. the smallest distance.
    """
    scores = np.asarray(anchor_descriptors, np.float32) @ np.asarray(candidate_descriptors, np.float32).T
    scores = np.where(is_negative, scores, -np.inf)
    k_eff = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k_eff]
    chosen = np.take_along_axis(is_negative, order, axis=1)
    out = np.where(chosen, order, -1)
    if k_eff < k:
        out = np.concatenate([out, -np.ones((out.shape[0], k - k_eff), dtype=out.dtype)], axis=1)
    return out
