"""Feature map -> global vector: NetVLAD (eq. 13-14), multi-scale NetVLAD (eq. 15-16), ModaLink's NMF branch."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cmirl_ros.registry import Registry

AGGREGATIONS: Registry[type[nn.Module]] = Registry("aggregation")


def kmeans(points: torch.Tensor, clusters: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means on (M, C) points from a seeded random draw of starting centres -> (clusters, C)."""
    if points.shape[0] < clusters:
        raise ValueError(f"k-means needs at least {clusters} points, got {points.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    centres = points[torch.randperm(points.shape[0], generator=generator)[:clusters].to(points.device)].clone()
    for _ in range(iterations):
        nearest = torch.cdist(points, centres).argmin(1)
        counts = torch.bincount(nearest, minlength=clusters).to(points.dtype)
        sums = torch.zeros_like(centres).index_add_(0, nearest, points)
        occupied = counts > 0  # an emptied cluster keeps its old centre
        centres[occupied] = sums[occupied] / counts[occupied, None]
    return centres


class NetVLAD(nn.Module):
    """Soft assignment a_nk = softmax_k(w_k.x_n + b_k) (eq. 13), residual sums V_k (eq. 14),
    intra-normalisation and L2 normalisation."""

    def __init__(self, dim: int, clusters: int = 64):
        super().__init__()
        self.assign = nn.Conv2d(dim, clusters, 1)
        self.centroids = nn.Parameter(F.normalize(torch.randn(clusters, dim), dim=1))
        self.out_dim = clusters * dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.normalize(features.float(), dim=1)  # per-location L2, as in NetVLAD
        assignment = torch.softmax(self.assign(x).flatten(2), dim=1)  # (B, K, N)
        x = x.flatten(2)  # (B, C, N)
        vlad = assignment @ x.transpose(1, 2) - assignment.sum(-1, keepdim=True) * self.centroids
        vlad = F.normalize(vlad, dim=2)  # intra-normalisation
        return F.normalize(vlad.flatten(1), dim=1)

    @torch.no_grad()
    def init_from_features(self, feature_maps: torch.Tensor, max_points: int = 50_000, seed: int = 0) -> None:
        """Centroids from k-means of the L2-normalised local features; w, b as in NetVLAD's
        initialisation (w_k = 2 a c_k, b_k = -a |c_k|^2, a from the assignment sharpness)."""
        points = F.normalize(feature_maps.float(), dim=1).transpose(0, 1).flatten(1).T
        generator = torch.Generator().manual_seed(seed)
        if points.shape[0] > max_points:
            points = points[torch.randperm(points.shape[0], generator=generator)[:max_points].to(points.device)]
        centres = F.normalize(kmeans(points, self.centroids.shape[0], seed=seed), dim=1)
        similarity = (points @ centres.T).topk(2, dim=1).values
        gap = (similarity[:, 0] - similarity[:, 1]).mean().clamp_min(1e-4)
        alpha = -math.log(0.01) / gap.item()  # the best centre gets ~100x the weight of the second
        self.centroids.copy_(centres)
        self.assign.weight.copy_((2.0 * alpha * centres)[:, :, None, None])
        self.assign.bias.copy_(-alpha * centres.pow(2).sum(1))


@AGGREGATIONS.register("netvlad")
class SingleScaleNetVLAD(nn.Module):
    """One NetVLAD on the fused map (the single-scale ablation)."""

    def __init__(self, dim: int, clusters: int = 64):
        super().__init__()
        self.vlad = NetVLAD(dim, clusters)
        self.out_dim = self.vlad.out_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.vlad(features)

    def init_from_features(self, feature_maps: torch.Tensor) -> None:
        self.vlad.init_from_features(feature_maps)


@AGGREGATIONS.register("multiscale_netvlad")
class MultiScaleNetVLAD(nn.Module):
    """G = Concat_s NetVLAD_s(avgpool_s(F_fused)) (eq. 15-16), one NetVLAD per scale."""

    def __init__(self, dim: int, clusters: int = 64, scales: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        if not scales or any(int(s) < 1 for s in scales):
            raise ValueError(f"multi-scale NetVLAD needs pooling scales >= 1, got {scales}")
        self.scales = [int(s) for s in scales]
        self.vlads = nn.ModuleList(NetVLAD(dim, clusters) for _ in self.scales)
        self.out_dim = sum(v.out_dim for v in self.vlads)

    def _pooled(self, features: torch.Tensor, scale: int) -> torch.Tensor:
        return features if scale == 1 else F.avg_pool2d(features, scale, ceil_mode=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        parts = [vlad(self._pooled(features, s)) for s, vlad in zip(self.scales, self.vlads)]
        return torch.cat(parts, 1) / math.sqrt(len(parts))  # each part is unit length: keep the whole so

    def init_from_features(self, feature_maps: torch.Tensor) -> None:
        for scale, vlad in zip(self.scales, self.vlads):
            vlad.init_from_features(self._pooled(feature_maps, scale))


class NMF(nn.Module):
    """Non-negative factorisation X ~ W H of the ReLU'd map X (C x N) into K parts, by unrolled
    multiplicative updates (differentiable). H (K x N) says how much each location belongs to
    each of the K semantic clusters; W starts from learned non-negative bases, so the result is
    deterministic."""

    def __init__(self, dim: int, clusters: int = 16, iterations: int = 6):
        super().__init__()
        self.bases = nn.Parameter(torch.rand(dim, clusters))
        self.iterations = iterations
        self.clusters = clusters

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = features.shape
        with torch.autocast(features.device.type, enabled=False):  # the update ratios overflow in fp16
            x = F.relu(features.float()).flatten(2)  # (B, C, N)
            w = F.softplus(self.bases.float()).expand(batch, -1, -1)  # (B, C, K)
            h = F.relu(w.transpose(1, 2) @ x) + 1e-4  # (B, K, N)
            for _ in range(self.iterations):
                h = h * (w.transpose(1, 2) @ x) / (w.transpose(1, 2) @ w @ h + 1e-6)
                w = w * (x @ h.transpose(1, 2)) / (w @ (h @ h.transpose(1, 2)) + 1e-6)
        return h.reshape(batch, self.clusters, height, width)


@AGGREGATIONS.register("netvlad_nmf")
class NetVLADWithNMF(nn.Module):
    """ModaLink: NetVLAD of the CNN features concatenated with NetVLAD of the NMF memberships
    (a 256x64 + Kx64 vector for 256 channels, 64 clusters)."""

    def __init__(self, dim: int, clusters: int = 64, nmf_clusters: int = 16, nmf_iterations: int = 6):
        super().__init__()
        self.vlad = NetVLAD(dim, clusters)
        self.nmf = NMF(dim, nmf_clusters, nmf_iterations)
        self.nmf_vlad = NetVLAD(nmf_clusters, clusters)
        self.out_dim = self.vlad.out_dim + self.nmf_vlad.out_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vlad(features), self.nmf_vlad(self.nmf(features))], 1) / math.sqrt(2)

    def init_from_features(self, feature_maps: torch.Tensor) -> None:
        self.vlad.init_from_features(feature_maps)
        self.nmf_vlad.init_from_features(self.nmf(feature_maps))
