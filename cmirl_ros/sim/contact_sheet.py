"""A PNG contact sheet: one revisited place under every condition, its first visit, and the LiDAR scan on it."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from cmirl_ros.geometry import project_to_depth
from cmirl_ros.sim.conditions import CONDITIONS
from cmirl_ros.sim.sequence import SimConfig, Simulator
from cmirl_ros.sim.trajectory import revisit_weight

TILE_WIDTH = 620
EXCLUDE_S = 30.0


def pick_revisit(simulator: Simulator) -> tuple[int, int]:
    """(revisit frame, its first visit): the middle of the longest run of revisit frames in the selected range,
    and the frame more than 30 s earlier whose position is nearest."""
    frames = np.array(simulator.frames)
    weight = revisit_weight(simulator.poses, simulator.stamps, after_s=EXCLUDE_S, ramp_frames=0)[frames]
    if not (weight > 0).any():
        raise ValueError(f"trajectory '{simulator.name}' never revisits a place in the selected frames; "
                         "pass --sheet-frame")
    # Longest run of consecutive revisit frames.
    best, start = (0, 0), None
    for k, w in enumerate(np.append(weight, 0)):
        if w > 0 and start is None:
            start = k
        elif w == 0 and start is not None:
            best = max(best, (k - start, start))
            start = None
    revisit = int(frames[best[1] + best[0] // 2])
    return revisit, first_visit(simulator, revisit)


def first_visit(simulator: Simulator, index: int) -> int:
    earlier = np.nonzero(simulator.stamps < simulator.stamps[index] - EXCLUDE_S)[0]
    if len(earlier) == 0:
        return index
    xz = simulator.poses[:, [0, 2], 3]
    return int(earlier[np.argmin(np.linalg.norm(xz[earlier] - xz[index], axis=1))])


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    out = tile.copy()
    cv2.rectangle(out, (0, 0), (min(out.shape[1], 12 + 11 * len(text)), 26), (0, 0, 0), -1)
    cv2.putText(out, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _lidar_overlay(simulator: Simulator, index: int, image: np.ndarray) -> np.ndarray:
    """The scan projected with the written calibration (colour = depth), over a dimmed image."""
    calib = simulator.calib.calibration()
    depth = project_to_depth(simulator.scan(index), calib.T_cam_sensor, calib.camera)
    grow = max(1, round(calib.camera.width / 500))  # thicken points so they survive the tile's downscaling
    depth = cv2.dilate(depth, np.ones((2 * grow - 1, 2 * grow - 1), np.uint8)) if grow > 1 else depth
    v, u = np.nonzero(depth > 0)
    hue = (np.clip(depth[v, u] / 60.0, 0, 1) * 120).astype(np.uint8)  # red near -> blue far
    colours = cv2.cvtColor(np.stack([hue, np.full_like(hue, 255), np.full_like(hue, 255)], 1)[None], cv2.COLOR_HSV2RGB)[0]
    out = (image * 0.45).astype(np.uint8)
    out[v, u] = colours
    return out


def write_contact_sheet(config: SimConfig, out_png: str | Path, frame: int | None = None) -> Path:
    """Render the sheet (3 x 3 tiles) and write it; `frame` = the place to show (trajectory frame index)."""
    out_png = Path(out_png)
    day = Simulator(replace(config, condition="day"))
    revisit, first = pick_revisit(day) if frame is None else (frame, first_visit(day, frame))
    if not 0 <= revisit < len(day.poses):
        raise ValueError(f"--sheet-frame {revisit}: the trajectory has frames 0..{len(day.poses) - 1}")
    images = {f"first visit, frame {first} (day)": day.render_image(first).image}
    for name in CONDITIONS:
        simulator = day if name == "day" else Simulator(replace(config, condition=name), world=day.world)
        images[f"revisit, frame {revisit}: {name}"] = simulator.render_image(revisit).image
    day_image = images[f"revisit, frame {revisit}: day"]
    images["LiDAR scan projected with calib.txt"] = _lidar_overlay(day, revisit, day_image)
    h, w = day_image.shape[:2]
    size = (TILE_WIDTH, round(h * TILE_WIDTH / w))
    tiles = [_label(cv2.resize(image, size, interpolation=cv2.INTER_AREA), text) for text, image in images.items()]
    rows = [np.hstack(tiles[i:i + 3]) for i in range(0, len(tiles), 3)]
    sheet = np.vstack(rows)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{out_png}: could not write the contact sheet")
    tmp.replace(out_png)
    return out_png
