"""Ray-cast sensors over a `Mesh` with Embree: a shaded pinhole camera and a 64-beam spinning LiDAR."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from embreex import rtcore_scene
from embreex.mesh_construction import TriangleMesh

from cmirl_ros.geometry import PinholeCamera
from cmirl_ros.sim.conditions import Condition, add_precipitation, exposure_at, lidar_weather_keep, sun_direction
from cmirl_ros.sim.world import FENCE, GLASS, MARKING, PAINT, REFLECTIVITY, ROAD, SIDEWALK, TERRAIN, Mesh

SHADOW_RANGE = 150.0  # m; farther surfaces are too small in the image for their shadows to matter
WARM_LIGHT = np.float32([1.0, 0.8, 0.5])
# Linear radiance in [0,1] -> sRGB-like 8 bit (gamma 2.2), as a table: cheaper than a power per pixel.
_GAMMA_LUT = (np.linspace(0, 1, 4096) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)


class Renderer:
    """An Embree scene of one mesh; traces batches of rays."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.normals = mesh.normals
        self.reflectivity = REFLECTIVITY[mesh.material]
        self._scene = rtcore_scene.EmbreeScene()
        TriangleMesh(scene=self._scene, vertices=mesh.vertices, indices=mesh.faces)

    def trace(self, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit `directions` (N,3) from one `origin` -> (distance (N,) float32, face index (N,), -1 = miss)."""
        origins = np.broadcast_to(np.asarray(origin, np.float32), directions.shape).copy()
        hit = self._scene.run(origins, np.ascontiguousarray(directions, np.float32), output=1)
        face = np.where(hit["geomID"] >= 0, hit["primID"], -1)
        return hit["tfar"], face

    def occluded(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        hit = self._scene.run(np.ascontiguousarray(origins, np.float32), np.ascontiguousarray(directions, np.float32),
                              query="OCCLUDED")
        return hit >= 0


def camera_rays(camera: PinholeCamera) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions (H*W,3) through the pixel centres (integer pixel coordinates) and their z components."""
    u, v = np.meshgrid(np.arange(camera.width), np.arange(camera.height))
    d = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u, float)], -1).reshape(-1, 3)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d.astype(np.float32), d[:, 2].astype(np.float32)


@functools.lru_cache(maxsize=2)
def _noise_bank(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0x5EED).standard_normal((height + 64, width + 64, 3), dtype=np.float32)


def _sensor_noise(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Unit Gaussian pixel noise: a random window of a fixed bank (far cheaper than fresh normals per frame)."""
    y, x = rng.integers(0, 64, 2)
    return _noise_bank(height, width)[y:y + height, x:x + width]


def _hash_noise(points: np.ndarray, cell: float) -> np.ndarray:
    """A value in [-0.5, 0.5] per world cell of size `cell`: fixed surface texture."""
    ijk = np.floor(points * np.float32(1.0 / cell)).astype(np.int32)  # int32 products wrap, which a hash allows
    h = (ijk[:, 0] * 73856093) ^ (ijk[:, 1] * 19349663) ^ (ijk[:, 2] * 83492791)
    return (h & 1023).astype(np.float32) * np.float32(1 / 1023) - np.float32(0.5)


def _patterns(mesh: Mesh, face: np.ndarray, p: np.ndarray, albedo: np.ndarray, condition: Condition,
              emission: np.ndarray) -> np.ndarray:
    """Window grids on facades and slats on fences; returns the mask of glass pixels."""
    pat = mesh.pattern[face]
    has = pat[:, 3] > 0
    glass = np.zeros(len(face), bool)
    if not has.any():
        return glass
    idx = np.nonzero(has)[0]
    pt = pat[idx]
    u = (p[idx, 0] * pt[:, 0] + p[idx, 2] * pt[:, 1] - pt[:, 2]) / pt[:, 3]
    h = pt[:, 7] - p[idx, 1]  # height above the building's ground (y is down)
    v = h / pt[:, 4]
    fu, fv = u - np.floor(u), v - np.floor(v)
    inside = (np.abs(fu - 0.5) < pt[:, 5] / 2) & (np.abs(fv - 0.5) < pt[:, 6] / 2) & (h > pt[:, 8] + 0.3)
    is_fence = mesh.material[face[idx]] == FENCE
    window = inside & ~is_fence
    plinth = (h < pt[:, 8]) & ~is_fence  # ground floor (shops) darker
    albedo[idx[inside]] = mesh.pattern_colour[face[idx[inside]]]
    albedo[idx[plinth]] *= 0.75
    glass[idx[window]] = True
    if condition.lit_windows > 0:
        key = np.floor(u).astype(np.int64) * 92821 + np.floor(v).astype(np.int64) * 68917 + pt[:, 9].astype(np.int64) * 1237
        lit = window & (((key * 2654435761) >> 8) % 1000 < condition.lit_windows * 1000)
        emission[idx[lit]] += WARM_LIGHT * 0.55
    return glass


@dataclass
class CameraImage:
    image: np.ndarray  # (H,W,3) uint8 RGB
    depth: np.ndarray  # (H,W) float32 z-depth in metres, 0 = sky


def render_camera(renderer: Renderer, T_world_cam: np.ndarray, camera: PinholeCamera,
                  rays: tuple[np.ndarray, np.ndarray], condition: Condition, stamp: float,
                  rng: np.random.Generator) -> CameraImage:
    mesh = renderer.mesh
    dirs_cam, z_of_ray = rays
    R = T_world_cam[:3, :3].astype(np.float32)
    origin = T_world_cam[:3, 3].astype(np.float32)
    d = dirs_cam @ R.T
    t, face = renderer.trace(origin, d)
    hit = np.nonzero(face >= 0)[0]
    f = face[hit]
    dh = d[hit]
    th = t[hit]
    p = origin + dh * th[:, None]

    n = renderer.normals[f]
    n *= -np.sign(np.einsum("ij,ij->i", n, dh))[:, None]  # face the viewer
    up = np.maximum(-n[:, 1], 0.0)
    albedo = mesh.colour[f] * (1.0 + 0.14 * _hash_noise(p, 0.35))[:, None]
    emission = np.zeros_like(albedo)
    glass = _patterns(mesh, f, p, albedo, condition, emission) | (mesh.material[f] == GLASS)
    material = mesh.material[f]
    ground = (material == ROAD) | (material == SIDEWALK) | (material == TERRAIN) | (material == MARKING)
    if condition.snow_cover > 0:
        cover = condition.snow_cover * np.clip((up - 0.6) / 0.3, 0, 1) * np.where(material == ROAD, 0.55, 1.0)
        albedo += (np.float32(0.92) - albedo) * cover[:, None]
    if condition.wet > 0:
        albedo[ground] *= 1.0 - 0.45 * condition.wet

    sun = sun_direction(condition, stamp)
    ndl = np.maximum(n @ sun, 0.0)
    if condition.shadows and condition.sun_intensity > 0:
        test = np.nonzero((ndl > 0) & (th < SHADOW_RANGE))[0]
        blocked = renderer.occluded(p[test] + n[test] * 0.03, np.broadcast_to(sun, (len(test), 3)))
        ndl[test[blocked]] = 0.0
    sky_h, sky_z = np.float32(condition.sky_horizon), np.float32(condition.sky_zenith)
    ambient = condition.ambient * (0.55 + 0.45 * up)[:, None] * (0.5 * (sky_h + sky_z))
    light = ambient + condition.sun_intensity * ndl[:, None] * np.float32([1.0, 0.97, 0.9])
    if condition.headlights > 0:
        forward = R[:, 2]
        beam = np.clip(dh @ forward, 0, 1) ** 12 * np.maximum(np.einsum("ij,ij->i", n, -dh), 0)
        light += (condition.headlights * 30.0 * beam / np.maximum(th, 4.0) ** 2)[:, None] * WARM_LIGHT
    colour = albedo * light + emission
    # Glass, paint and wet ground mirror the sky a little (Schlick-like grazing boost).
    grazing = (1.0 - np.abs(np.einsum("ij,ij->i", n, dh))) ** 3
    mirror = np.where(glass, 0.08 + 0.5 * grazing, np.where(material == PAINT, 0.04 + 0.3 * grazing, 0.0))
    if condition.wet > 0:
        mirror = np.where(ground, condition.wet * (0.05 + 0.45 * grazing), mirror)
    colour += mirror[:, None] * sky_h * max(condition.ambient, condition.sun_intensity * 0.5)

    image = np.empty((len(d), 3), np.float32)
    miss = np.nonzero(face < 0)[0]
    elevation = np.clip(-d[miss, 1] * 3.0, 0, 1)[:, None]
    image[miss] = sky_h + (sky_z - sky_h) * elevation
    if condition.sun_intensity > 0:
        towards = d[miss] @ sun
        glow = towards > 0.98  # the sun disc and its halo
        image[miss[glow]] += (towards[glow] ** 400 * 3.0 * condition.sun_intensity)[:, None]
    haze = np.exp(-th / condition.visibility_m)[:, None]
    image[hit] = colour * haze + np.float32(condition.haze_colour) * (1 - haze)
    if condition.visibility_m < 300:  # in fog the sky itself is the haze
        image[miss] = image[miss] * 0.3 + np.float32(condition.haze_colour) * 0.7

    h, w = camera.height, camera.width
    image = add_precipitation(image.reshape(h, w, 3), condition, rng)
    image *= np.float32(exposure_at(condition, stamp))
    image += _sensor_noise(h, w, rng) * np.float32(condition.noise_sigma)
    rgb = _GAMMA_LUT[(np.clip(image, 0, 1) * (len(_GAMMA_LUT) - 1)).astype(np.int32)]
    depth = np.zeros(len(d), np.float32)
    depth[hit] = th * z_of_ray[hit]
    return CameraImage(rgb, depth.reshape(h, w))


# Velodyne HDL-64E S2 beam elevations: an upper block of 32 lasers from +2.0 to -8.33 deg
# (1/3 deg apart) and a lower block of 32 from -8.83 to -24.33 deg (1/2 deg apart).
HDL64_ELEVATIONS_DEG = np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.33, 32)])


@dataclass(frozen=True)
class LidarModel:
    elevations_deg: tuple = tuple(HDL64_ELEVATIONS_DEG)
    azimuth_steps: int = 2083  # 0.173 deg at 10 Hz, as the HDL-64E at KITTI's rotation rate
    min_range: float = 2.5  # returns from the ego car body are cut, as in KITTI
    max_range: float = 120.0
    range_noise: float = 0.02  # m, 1 sigma
    dropout: float = 0.02  # random missing returns

    def directions(self) -> np.ndarray:
        """(64 * azimuth_steps, 3) unit rays in the sensor frame (x forward, y left, z up), one column after another."""
        el = np.radians(np.asarray(self.elevations_deg))
        az = np.linspace(np.pi, -np.pi, self.azimuth_steps, endpoint=False)  # clockwise from behind, like the sensor
        el_grid, az_grid = np.meshgrid(el, az)
        d = np.stack([np.cos(el_grid) * np.cos(az_grid), np.cos(el_grid) * np.sin(az_grid), np.sin(el_grid)], -1)
        return d.reshape(-1, 3).astype(np.float32)


def scan_lidar(renderer: Renderer, T_world_lidar: np.ndarray, model: LidarModel, directions: np.ndarray,
               condition: Condition, rng: np.random.Generator, weather_rng: np.random.Generator) -> np.ndarray:
    """(N,4) float32 x, y, z, intensity in the sensor frame.

    `rng` drives the sensor's own noise and dropouts (identical under every condition);
    `weather_rng` only the losses and extra noise that the condition adds.
    """
    R = T_world_lidar[:3, :3].astype(np.float32)
    d_world = directions @ R.T
    t, face = renderer.trace(T_world_lidar[:3, 3], d_world)
    noise = rng.normal(0.0, model.range_noise, len(t)).astype(np.float32)
    dropped = rng.random(len(t)) < model.dropout
    keep = np.nonzero((face >= 0) & (t >= model.min_range) & (t <= model.max_range) & ~dropped)[0]
    f = face[keep]
    cos_inc = np.abs(np.einsum("ij,ij->i", renderer.normals[f], d_world[keep]))
    reflect = renderer.reflectivity[f]
    r = t[keep]
    # Weak echoes are lost: grazing incidence and dark surfaces far away.
    strong = (cos_inc > 0.04) & (reflect * cos_inc * (30.0 / np.maximum(r, 1.0)) ** 2 > 0.01)
    keep, f, cos_inc, reflect, r = keep[strong], f[strong], cos_inc[strong], reflect[strong], r[strong]
    r = r + noise[keep]
    intensity = np.round(np.clip(reflect * (0.35 + 0.65 * cos_inc), 0, 0.99), 2)
    if condition.lidar_extinction or condition.lidar_dropout or condition.lidar_noise:
        survive = lidar_weather_keep(r, condition, weather_rng)
        r = r + weather_rng.normal(0.0, condition.lidar_noise, len(r)).astype(np.float32)
        keep, r, intensity = keep[survive], r[survive], intensity[survive] * 0.8
    xyz = directions[keep] * r[:, None]
    return np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
