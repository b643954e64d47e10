"""Capture conditions (the rows of CMIRL's robustness table): lighting, atmosphere, precipitation,
LiDAR weather effects, and the viewpoint change of revisits.

A condition never changes the world geometry. Weather removes LiDAR returns (and adds
range noise) where that is physical; `viewpoint` changes where revisits are driven.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Condition:
    name: str
    sun_elevation_deg: float = 50.0
    sun_azimuth_deg: float = 35.0
    sun_intensity: float = 1.0
    ambient: float = 0.38
    sky_zenith: tuple = (0.32, 0.52, 0.85)
    sky_horizon: tuple = (0.72, 0.8, 0.9)
    exposure: float = 1.0
    visibility_m: float = 900.0  # distance scale of the exponential haze
    haze_colour: tuple = (0.75, 0.8, 0.88)
    shadows: bool = True
    noise_sigma: float = 0.008  # sensor noise, in [0,1] image units
    lit_windows: float = 0.0  # fraction of windows lit from inside
    headlights: float = 0.0
    wet: float = 0.0  # darkens and mirrors the ground
    snow_cover: float = 0.0  # whitens upward-facing surfaces
    precipitation: str | None = None  # "rain" | "snow" overlays
    precipitation_density: float = 0.0  # particles per 1000 pixels
    lidar_extinction: float = 0.0  # 1/m: two-way attenuation drops returns with range
    lidar_dropout: float = 0.0  # extra random dropout fraction
    lidar_noise: float = 0.0  # extra range noise sigma, m
    viewpoint_lateral_m: float = 0.0
    viewpoint_yaw_deg: float = 0.0  # positive turns the view right (revisits shift left)


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("day"),
        Condition("low_light", sun_elevation_deg=-4.0, sun_intensity=0.0, ambient=0.05, sky_zenith=(0.02, 0.03, 0.08),
                  sky_horizon=(0.12, 0.1, 0.14), exposure=2.6, haze_colour=(0.08, 0.08, 0.12), shadows=False,
                  noise_sigma=0.035, lit_windows=0.35, headlights=1.0),
        Condition("shadows", sun_elevation_deg=13.0, sun_azimuth_deg=-60.0, sun_intensity=1.35, ambient=0.12,
                  sky_horizon=(0.85, 0.78, 0.7), haze_colour=(0.85, 0.78, 0.7)),
        Condition("fog", sun_intensity=0.15, ambient=0.75, sky_zenith=(0.72, 0.74, 0.76), sky_horizon=(0.74, 0.75, 0.77),
                  visibility_m=28.0, haze_colour=(0.74, 0.75, 0.77), shadows=False, lidar_extinction=0.012,
                  lidar_noise=0.02),
        Condition("rain", sun_intensity=0.1, ambient=0.5, sky_zenith=(0.38, 0.4, 0.44), sky_horizon=(0.5, 0.52, 0.55),
                  exposure=0.9, visibility_m=180.0, haze_colour=(0.5, 0.52, 0.55), shadows=False, noise_sigma=0.012,
                  wet=0.7, precipitation="rain", precipitation_density=0.9, lidar_extinction=0.002,
                  lidar_dropout=0.04, lidar_noise=0.03),
        Condition("snow", sun_intensity=0.25, ambient=0.7, sky_zenith=(0.7, 0.72, 0.76), sky_horizon=(0.8, 0.81, 0.84),
                  visibility_m=110.0, haze_colour=(0.82, 0.83, 0.86), shadows=False, snow_cover=0.85,
                  precipitation="snow", precipitation_density=1.2, lidar_extinction=0.004, lidar_dropout=0.05,
                  lidar_noise=0.03),
        Condition("viewpoint", viewpoint_lateral_m=2.0, viewpoint_yaw_deg=-12.0),
    )
}


def get_condition(name: str) -> Condition:
    try:
        return CONDITIONS[name]
    except KeyError:
        raise ValueError(f"unknown condition '{name}'; choose one of: {', '.join(CONDITIONS)}") from None


def sun_direction(condition: Condition, stamp: float) -> np.ndarray:
    """Unit vector towards the sun in the world (y down); it drifts 0.1 deg/s so revisits see other light."""
    az = np.radians(condition.sun_azimuth_deg + 0.1 * stamp)
    el = np.radians(condition.sun_elevation_deg)
    return np.array([np.cos(el) * np.sin(az), -np.sin(el), np.cos(el) * np.cos(az)], np.float32)


def exposure_at(condition: Condition, stamp: float) -> float:
    """Slow auto-exposure / cloud drift: the same place looks a little brighter or darker on a revisit."""
    return condition.exposure * (1.0 + 0.08 * np.sin(2 * np.pi * stamp / 140.0))


def add_precipitation(image: np.ndarray, condition: Condition, rng: np.random.Generator) -> np.ndarray:
    """Rain streaks or snow flakes over a float (H,W,3) image in [0,1]."""
    if condition.precipitation is None:
        return image
    h, w = image.shape[:2]
    count = int(condition.precipitation_density * h * w / 1000)
    layer = np.zeros((h, w), np.float32)
    x = rng.uniform(0, w, count)
    y = rng.uniform(0, h, count)
    scale = w / 1241.0
    if condition.precipitation == "rain":
        length = rng.uniform(8, 28, count) * scale
        slant = rng.normal(0.15, 0.03)
        for xi, yi, li in zip(x, y, length):
            cv2.line(layer, (int(xi), int(yi)), (int(xi + slant * li), int(yi + li)), 0.22, 1, cv2.LINE_AA)
        alpha = cv2.GaussianBlur(layer, (3, 3), 0)[..., None]
        return image * (1 - alpha) + alpha * 0.85
    radius = np.maximum(1, (rng.power(3.0, count) * 3.5 * scale)).astype(int)
    for xi, yi, ri in zip(x, y, radius):
        cv2.circle(layer, (int(xi), int(yi)), int(ri), 0.85, -1, cv2.LINE_AA)
    alpha = cv2.GaussianBlur(layer, (3, 3), 0)[..., None]
    return image * (1 - alpha) + alpha * 0.97


def lidar_weather_keep(ranges: np.ndarray, condition: Condition, rng: np.random.Generator) -> np.ndarray:
    """(N,) bool: returns that survive the weather (attenuation grows with range, plus random backscatter loss)."""
    survive = np.exp(-2.0 * condition.lidar_extinction * ranges) * (1.0 - condition.lidar_dropout)
    return rng.random(len(ranges)) < survive
