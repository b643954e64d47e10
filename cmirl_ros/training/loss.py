"""Hard-aware lazy triplet loss and hard-negative mining.

Lazy triplet (PointNetVLAD): an anchor's loss is the largest hinge over its negatives,
so only the hardest negative pushes. "Hard-aware": the negatives offered to it are the
hardest ones found in the batch and in a descriptor cache of the whole training set.
"""
from __future__ import annotations

import numpy as np
import torch


def squared_distances(anchor: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """anchor (B,D), others (B,K,D) -> (B,K) squared Euclidean distances."""
    return ((others - anchor[:, None, :]) ** 2).sum(-1)


def lazy_triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    margin: float,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over anchors of max_j relu(margin + d(a, p) - d(a, n_j)).

    anchor, positive (B,D); negatives (B,K,D); `negative_mask` (B,K) marks which of the K
    are real negatives (padding and non-negatives are ignored). Anchors without any
    negative contribute zero. d is the squared Euclidean distance.
    """
    if negatives.shape[1] == 0:
        return anchor.sum() * 0.0
    d_pos = ((anchor - positive) ** 2).sum(-1, keepdim=True)  # (B,1)
    d_neg = squared_distances(anchor, negatives)  # (B,K)
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
