"""Local feature tokens for cross-modal re-ranking (optional part of a map: `tokens.npy`).

A token is one cell of the model's fused local feature map F_fused (B, C, h, w) (the output of
`model.fusion`, what `PlaceModel.local_features` returns), average-pooled to a small grid and
L2-normalised, stored as float16: (N, T, C) with T = grid cells. Map keyframes store their depth
tokens; the localizer computes the query's tokens (from the image, or image + scan) during the
same forward pass that yields its descriptor, and the `cross_attention` reranker compares them.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

DEFAULT_GRID = (4, 16)


@contextmanager
def capture_local_features(model):
    """Collect the fused local feature maps of every forward pass run inside the block."""
    fusion = getattr(model, "fusion", None)
    if fusion is None:
        raise ValueError(f"model {getattr(model, 'name', '?')} has no fusion module to take local tokens from")
    captured = []
    handle = fusion.register_forward_hook(lambda module, inputs, output: captured.append(output.detach()))
    try:
        yield captured
    finally:
        handle.remove()


def pool_tokens(features, grid: tuple[int, int] = DEFAULT_GRID) -> np.ndarray:
    """(B, C, h, w) tensor -> (B, T, C) float16 unit tokens on a grid of at most `grid` cells."""
    import torch.nn.functional as F

    size = (min(grid[0], features.shape[2]), min(grid[1], features.shape[3]))
    pooled = F.adaptive_avg_pool2d(features.float(), size).flatten(2).transpose(1, 2)
    return F.normalize(pooled, dim=2).cpu().numpy().astype(np.float16)


def attention_scores(query_tokens: np.ndarray, candidate_tokens: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    """Cross-attention score of a query (Tq, C) against K candidates (K, Tk, C) -> (K,).

    Each query token attends over a candidate's tokens (softmax of cosine / temperature); the
    score is the mean cosine between the query tokens and what they attend to: high when every
    part of the query view finds a matching part in the candidate's depth view.
    """
    q = query_tokens.astype(np.float32)
    k = candidate_tokens.astype(np.float32)
    logits = np.matmul(k, q.T).transpose(0, 2, 1) / temperature  # (K, Tq, Tk)
    logits -= logits.max(axis=2, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=2, keepdims=True)
    attended = np.matmul(weights, k)  # (K, Tq, C)
    return (attended * q).sum(axis=2).mean(axis=1)
