"""A procedural town built around a trajectory: streets along the path, buildings, trees,
poles, signs, fences, crossings and parked cars.

Everything is low-poly (boxes, icosahedra, ribbons) in one triangle soup with per-face
attributes (albedo, material, LiDAR reflectivity, window/slat pattern), so that a whole
KITTI sequence is a few tens of thousands of triangles that Embree traces quickly, and
the look of each place comes from seeded random parameters rather than textures.
World frame = KITTI camera-0 world: x right, y DOWN, z forward; the ground is x-z.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

# Bumped whenever the same trajectory and seed would give another town: sequences meant to share
# one world (train / test / conditions) must carry the same version (it is written to sim.json).
WORLD_VERSION = 1
CAMERA_HEIGHT = 1.65  # m, KITTI camera 0 above the road
SAMPLE_STEP = 1.5  # m between street samples along the path

# Materials (shading and LiDAR reflectivity depend on them).
TERRAIN, ROAD, MARKING, SIDEWALK, FACADE, ROOF, BARK, FOLIAGE, METAL, SIGN, FENCE, PAINT, GLASS = range(13)
REFLECTIVITY = np.array([0.25, 0.12, 0.7, 0.3, 0.35, 0.3, 0.3, 0.2, 0.5, 0.9, 0.35, 0.45, 0.1], dtype=np.float32)

PATTERN_SIZE = 10  # axis_x, axis_z, u0, spacing_u, spacing_v, frac_u, frac_v, ground_y, min_h, building id

ROAD_HALF_WIDTH = 5.0
SIDEWALK_OUTER = 8.0
CURB_HEIGHT = 0.12
STREET_CLEARANCE = 8.5  # m from any path sample that stays free of buildings
PARKING_LATERAL = 3.6
CAR_EPOCH_S = 45.0  # parked cars change between epochs, so a later revisit sees moved cars


@dataclass
class Mesh:
    """A triangle soup with per-face attributes."""

    vertices: np.ndarray  # (V,3) float32
    faces: np.ndarray  # (F,3) int32
    colour: np.ndarray  # (F,3) float32 albedo in [0,1]
    material: np.ndarray  # (F,) uint8
    pattern: np.ndarray  # (F, PATTERN_SIZE) float32; spacing_u == 0 means plain
    pattern_colour: np.ndarray  # (F,3) float32 (windows, slats)

    @property
    def normals(self) -> np.ndarray:
        v = self.vertices[self.faces]
        n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        return (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    @staticmethod
    def concatenate(meshes: list["Mesh"]) -> "Mesh":
        offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
        return Mesh(
            np.concatenate([m.vertices for m in meshes]),
            np.concatenate([m.faces + o for m, o in zip(meshes, offsets)]).astype(np.int32),
            np.concatenate([m.colour for m in meshes]),
            np.concatenate([m.material for m in meshes]),
            np.concatenate([m.pattern for m in meshes]),
            np.concatenate([m.pattern_colour for m in meshes]),
        )


class MeshBuilder:
    def __init__(self):
        self._parts: list[tuple] = []
        self._count = 0

    def add(self, vertices, faces, colour, material, pattern=None, pattern_colour=None) -> None:
        faces = np.asarray(faces, dtype=np.int64)
        n = len(faces)
        pat = np.zeros((n, PATTERN_SIZE), np.float32) if pattern is None else np.broadcast_to(pattern, (n, PATTERN_SIZE))
        pcol = np.zeros((n, 3), np.float32) if pattern_colour is None else np.broadcast_to(pattern_colour, (n, 3))
        self._parts.append((np.asarray(vertices, np.float32), faces + self._count, np.broadcast_to(colour, (n, 3)),
                            np.full(n, material, np.uint8), pat, pcol))
        self._count += len(vertices)

    def build(self) -> Mesh:
        if not self._parts:
            empty = np.zeros((0, 3), np.float32)
            return Mesh(empty, np.zeros((0, 3), np.int32), empty, np.zeros(0, np.uint8),
                        np.zeros((0, PATTERN_SIZE), np.float32), empty)
        cols = list(zip(*self._parts))
        return Mesh(np.concatenate(cols[0]), np.concatenate(cols[1]).astype(np.int32),
                    np.concatenate(cols[2]).astype(np.float32), np.concatenate(cols[3]),
                    np.concatenate(cols[4]).astype(np.float32), np.concatenate(cols[5]).astype(np.float32))


# Box corners k: bit0 = along axis sign, bit1 = across axis sign, bit2 = top. Quads by side.
_BOX_QUADS = {"bottom": (0, 1, 3, 2), "top": (4, 5, 7, 6), "-a": (0, 2, 6, 4), "+a": (1, 3, 7, 5),
              "-b": (0, 1, 5, 4), "+b": (2, 3, 7, 6)}


def _quad_faces(quads) -> np.ndarray:
    return np.array([t for p, q, r, s in quads for t in ((p, q, r), (p, r, s))])


def box(centre_xz, bottom_y, length, depth, height, axis_xz) -> np.ndarray:
    """8 corners of a box standing on `bottom_y` (y down), `length` along `axis_xz`, `depth` across."""
    a = np.array([axis_xz[0], 0.0, axis_xz[1]])
    b = np.array([-axis_xz[1], 0.0, axis_xz[0]])
    base = np.array([centre_xz[0], bottom_y, centre_xz[1]])
    corners = []
    for k in range(8):
        sa, sb, top = (k & 1) * 2 - 1, ((k >> 1) & 1) * 2 - 1, (k >> 2) & 1
        corners.append(base + sa * length / 2 * a + sb * depth / 2 * b - top * height * np.array([0, 1.0, 0]))
    return np.array(corners)


def add_box(builder: MeshBuilder, centre_xz, bottom_y, length, depth, height, axis_xz, colour, material,
            side_pattern=None, pattern_colour=None, top_colour=None, top_material=None) -> None:
    v = box(centre_xz, bottom_y, length, depth, height, axis_xz)
    sides = _quad_faces([_BOX_QUADS[s] for s in ("-a", "+a", "-b", "+b")])
    caps = _quad_faces([_BOX_QUADS["top"], _BOX_QUADS["bottom"]])
    if side_pattern is None:
        builder.add(v, np.vstack([sides, caps]), colour, material)
        return
    # Windows run along the long sides (+/-b faces use axis a) and the short sides (axis b).
    a = np.asarray(axis_xz, np.float64)
    b = np.array([-a[1], a[0]])
    for quad_names, axis, extent in ((("-b", "+b"), a, length), (("-a", "+a"), b, depth)):
        pattern = np.array(side_pattern, np.float32).copy()
        centre_u = float(np.dot(centre_xz, axis))
        spacing = pattern[3]
        pattern[:2] = axis
        # Centre the window grid on the facade so that no window is cut at a corner.
        pattern[2] = centre_u - extent / 2 + (extent % spacing) / 2
        builder.add(v, _quad_faces([_BOX_QUADS[s] for s in quad_names]), colour, material, pattern, pattern_colour)
    builder.add(v, caps, colour if top_colour is None else top_colour, material if top_material is None else top_material)


_ICOSAHEDRON_FACES = np.array([
    [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6],
    [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10],
    [8, 6, 7], [9, 8, 1]])


def _icosahedron() -> np.ndarray:
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                  [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


_ICOSAHEDRON = _icosahedron()


def hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


@dataclass
class StreetSamples:
    """The trajectory resampled every SAMPLE_STEP metres of ground travel."""

    xz: np.ndarray  # (M,2)
    ground_y: np.ndarray  # (M,)
    tangent: np.ndarray  # (M,2) unit, direction of travel
    right: np.ndarray  # (M,2) unit, to the right of travel

    @classmethod
    def from_poses(cls, poses: np.ndarray) -> "StreetSamples":
        xz = poses[:, [0, 2], 3]
        ground = poses[:, 1, 3] + CAMERA_HEIGHT
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xz, axis=0), axis=1))])
        keep = np.concatenate([[True], np.diff(arc) > 1e-6])  # stationary frames add nothing
        arc, xz, ground = arc[keep], xz[keep], ground[keep]
        s = np.arange(0.0, max(arc[-1], SAMPLE_STEP) + 1e-9, SAMPLE_STEP)
        if len(arc) < 2:  # a stationary trajectory: a short street along the camera's view
            forward = poses[0, [0, 2], 2] / max(np.linalg.norm(poses[0, [0, 2], 2]), 1e-9)
            s = np.arange(-30.0, 30.0, SAMPLE_STEP)
            sxz = xz[0] + s[:, None] * forward
            sg = np.full(len(s), ground[0])
        else:
            sxz = np.stack([np.interp(s, arc, xz[:, 0]), np.interp(s, arc, xz[:, 1])], axis=1)
            sg = np.interp(s, arc, ground)
        tangent = np.gradient(sxz, axis=0)
        tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
        right = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
        return cls(sxz, sg, tangent, right)

    def __len__(self) -> int:
        return len(self.xz)


@dataclass
class ParkingSlot:
    xz: np.ndarray
    ground_y: float
    axis: np.ndarray


@dataclass
class World:
    static: Mesh
    slots: list[ParkingSlot]
    seed: int

    def mesh_at(self, epoch: int) -> Mesh:
        """The static town plus the parked cars of one time epoch."""
        return Mesh.concatenate([self.static, parked_cars(self.slots, self.seed, epoch)])


class _Grid:
    """1 m occupancy grid over the area, with each cell's distance to the nearest street sample."""

    def __init__(self, samples: StreetSamples, margin: float = 60.0, cell: float = 1.0):
        self.origin = samples.xz.min(axis=0) - margin
        self.cell = cell
        size = np.ceil((samples.xz.max(axis=0) + margin - self.origin) / cell).astype(int) + 1
        gx, gz = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
        centres = self.origin + (np.stack([gx, gz], -1).reshape(-1, 2) + 0.5) * cell
        self.street_tree = cKDTree(samples.xz)
        self.distance = self.street_tree.query(centres)[0].reshape(size).astype(np.float32)
        self.occupied = np.zeros(size, bool)

    def cells(self, points_xz: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        ij = np.floor((points_xz - self.origin) / self.cell).astype(int)
        if (ij < 0).any() or (ij[:, 0] >= self.occupied.shape[0]).any() or (ij[:, 1] >= self.occupied.shape[1]).any():
            return None
        return ij[:, 0], ij[:, 1]

    def claim(self, points_xz: np.ndarray, clearance: float) -> bool:
        """Occupy the cells under `points_xz` if they are free and at least `clearance` from every street."""
        cells = self.cells(points_xz)
        if cells is None or self.occupied[cells].any() or (self.distance[cells] < clearance).any():
            return False
        self.occupied[cells] = True
        return True


def _footprint(centre, axis, length, depth, spacing=0.7) -> np.ndarray:
    a = np.asarray(axis)
    b = np.array([-a[1], a[0]])
    u = np.linspace(-length / 2 - 0.5, length / 2 + 0.5, max(2, int(np.ceil((length + 1) / spacing)) + 1))
    w = np.linspace(-depth / 2 - 0.5, depth / 2 + 0.5, max(2, int(np.ceil((depth + 1) / spacing)) + 1))
    uu, ww = np.meshgrid(u, w, indexing="ij")
    return centre + uu.reshape(-1, 1) * a + ww.reshape(-1, 1) * b


def _covered_earlier(samples: StreetSamples, radius: float, min_gap: int) -> np.ndarray:
    """(M,) bool: samples within `radius` of a sample laid more than `min_gap` samples earlier (a revisit)."""
    tree = cKDTree(samples.xz)
    covered = np.zeros(len(samples), bool)
    for i, neighbours in enumerate(tree.query_ball_point(samples.xz, radius)):
        covered[i] = any(j < i - min_gap for j in neighbours)
    return covered


def _streets(builder: MeshBuilder, samples: StreetSamples, rng: np.random.Generator) -> None:
    """Road ribbon with edge and dashed centre lines, raised sidewalks with curbs, zebra crossings."""
    covered = _covered_earlier(samples, STREET_CLEARANCE, min_gap=30)
    asphalt = np.float32([0.23, 0.23, 0.24])
    white = np.float32([0.85, 0.85, 0.8])
    paving = hsv(0.08, 0.06, 0.62)
    strips = [(-SIDEWALK_OUTER, -ROAD_HALF_WIDTH, "sidewalk"), (-ROAD_HALF_WIDTH, -4.8, "edge"), (-4.8, -0.08, "road"),
              (-0.08, 0.08, "centre"), (0.08, 4.8, "road"), (4.8, ROAD_HALF_WIDTH, "edge"),
              (ROAD_HALF_WIDTH, SIDEWALK_OUTER, "sidewalk")]
    next_crossing = rng.uniform(40, 120)
    for k in range(len(samples) - 1):
        if covered[k] or covered[k + 1]:
            continue
        p0, p1 = samples.xz[k], samples.xz[k + 1]
        r0, r1 = samples.right[k], samples.right[k + 1]
        y0, y1 = samples.ground_y[k], samples.ground_y[k + 1]
        for lat0, lat1, kind in strips:
            lift = CURB_HEIGHT if kind == "sidewalk" else 0.0
            quad = np.array([[*(p0 + lat0 * r0)], [*(p0 + lat1 * r0)], [*(p1 + lat1 * r1)], [*(p1 + lat0 * r1)]])
            ys = np.array([y0, y0, y1, y1]) - lift
            v = np.stack([quad[:, 0], ys, quad[:, 1]], axis=1)
            dashed_gap = kind == "centre" and (k // 2) % 2 == 1
            if kind == "sidewalk":
                colour, material = paving * np.float32(rng.uniform(0.93, 1.07)), SIDEWALK
            elif kind in ("edge", "centre") and not dashed_gap:
                colour, material = white, MARKING
            else:
                colour, material = asphalt, ROAD
            builder.add(v, [[0, 1, 2], [0, 2, 3]], colour, material)
        for side in (-1, 1):  # curb faces
            a = p0 + side * ROAD_HALF_WIDTH * r0
            b = p1 + side * ROAD_HALF_WIDTH * r1
            v = np.array([[a[0], y0, a[1]], [b[0], y1, b[1]], [b[0], y1 - CURB_HEIGHT, b[1]], [a[0], y0 - CURB_HEIGHT, a[1]]])
            builder.add(v, [[0, 1, 2], [0, 2, 3]], np.float32([0.5, 0.5, 0.48]), SIDEWALK)
        if k * SAMPLE_STEP >= next_crossing:
            next_crossing += rng.uniform(120, 260)
            for lat in np.arange(-4.25, 4.3, 1.0):  # zebra stripes, 3 m long, along the travel direction
                centre = p0 + lat * r0
                builder.add(box(centre, y0, 3.0, 0.5, 0.01, samples.tangent[k]), _quad_faces([_BOX_QUADS["top"]]),
                            white, MARKING)


def _terrain(builder: MeshBuilder, samples: StreetSamples, grid_cell: float = 4.0, extent: float = 70.0) -> None:
    """A height field just below the streets (heights follow the path), patched grass/gravel/paving."""
    lo = samples.xz.min(axis=0) - extent
    n = np.ceil((samples.xz.max(axis=0) + extent - lo) / grid_cell).astype(int) + 1
    gx, gz = np.meshgrid(np.arange(n[0]), np.arange(n[1]), indexing="ij")
    xz = lo + np.stack([gx, gz], -1).reshape(-1, 2) * grid_cell
    tree = cKDTree(samples.xz)
    dist, idx = tree.query(xz, k=min(6, len(samples)))
    dist, idx = dist.reshape(len(xz), -1), idx.reshape(len(xz), -1)
    w = 1.0 / np.maximum(dist, 1.0) ** 2
    heights = (samples.ground_y[idx] * w).sum(1) / w.sum(1) + 0.05  # 5 cm under the road
    vertices = np.stack([xz[:, 0], heights, xz[:, 1]], axis=1)
    cell_i, cell_j = np.meshgrid(np.arange(n[0] - 1), np.arange(n[1] - 1), indexing="ij")
    cell_i, cell_j = cell_i.ravel(), cell_j.ravel()
    centres = lo + (np.stack([cell_i, cell_j], 1) + 0.5) * grid_cell
    keep = tree.query(centres)[0] < extent
    cell_i, cell_j = cell_i[keep], cell_j[keep]
    v00 = cell_i * n[1] + cell_j
    v10, v01, v11 = v00 + n[1], v00 + 1, v00 + n[1] + 1
    faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    # Patches on a 24 m lattice: grass, dry grass, gravel or paving, from a hash of the patch.
    patch = np.floor(np.concatenate([centres[keep], centres[keep]]) / 24.0).astype(np.int64)
    h = ((patch[:, 0] * 73856093) ^ (patch[:, 1] * 19349663)) % 4
    palette = np.array([[0.28, 0.42, 0.18], [0.45, 0.45, 0.25], [0.48, 0.44, 0.38], [0.52, 0.5, 0.47]], np.float32)
    for kind in range(4):
        builder.add(vertices, faces[h == kind], palette[kind], TERRAIN)


def _building(builder: MeshBuilder, rng, centre, axis, length, depth, bottom_y, building_id) -> None:
    floors = int(rng.choice([1, 2, 2, 3, 3, 4, 5, 6, 8]))
    floor_h = rng.uniform(2.9, 3.8)
    height = floors * floor_h + rng.uniform(0.3, 1.5)
    colour = hsv(rng.uniform(0, 1), rng.uniform(0.08, 0.55), rng.uniform(0.45, 0.92))
    window = hsv(rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.4), rng.uniform(0.08, 0.3))
    pattern = np.array([0, 0, 0, rng.uniform(1.8, 4.0), floor_h, rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.6),
                        bottom_y, rng.choice([0.0, floor_h]), building_id], np.float32)
    roof = hsv(rng.uniform(0, 0.12), rng.uniform(0, 0.4), rng.uniform(0.2, 0.45))
    # Extend 2 m into the ground so slopes never show a gap under the building.
    add_box(builder, centre, bottom_y + 2.0, length, depth, height + 2.0, axis, colour, FACADE, pattern, window, roof, ROOF)
    if floors <= 3 and rng.random() < 0.6:  # houses get a gable roof
        _gable_roof(builder, centre, bottom_y - height, length, depth, rng.uniform(1.5, 0.45 * depth), axis, roof)
    elif floors >= 3 and rng.random() < 0.35:  # a set-back upper tier changes the silhouette
        top_y = bottom_y - height
        add_box(builder, centre, top_y, length * rng.uniform(0.4, 0.8), depth * rng.uniform(0.4, 0.8),
                floor_h * rng.integers(1, 3), axis, colour * 0.9, FACADE, pattern, window, roof, ROOF)
    elif rng.random() < 0.5:  # a rooftop box
        add_box(builder, centre, bottom_y - height, rng.uniform(1.5, 4), rng.uniform(1.5, 4), rng.uniform(1, 2.5),
                axis, np.float32([0.55, 0.55, 0.55]), METAL)


def _gable_roof(builder: MeshBuilder, centre, top_y, length, depth, rise, axis_xz, colour) -> None:
    """A pitched roof on a box top: two slopes meeting at a ridge along `axis_xz`, two gable ends."""
    corners = box(centre, top_y, length + 0.4, depth + 0.6, 0.0, axis_xz)[:4]  # eaves overhang a little
    ridge = box(centre, top_y - rise, length + 0.4, 0.0, 0.0, axis_xz)[:2]
    v = np.vstack([corners, ridge])  # corners: bit0 along, bit1 across; 4, 5 = ridge ends (-a, +a)
    builder.add(v, [[0, 1, 5], [0, 5, 4], [2, 3, 5], [2, 5, 4], [0, 2, 4], [1, 3, 5]], colour, ROOF)


def _fence(builder: MeshBuilder, rng, start, axis, length, bottom_y) -> None:
    colour = [hsv(0.08, 0.5, 0.45), hsv(0, 0, 0.85), hsv(0.35, 0.5, 0.3), hsv(0, 0, 0.5)][rng.integers(4)]
    slats = np.array([0, 0, 0, rng.uniform(0.12, 0.3), 10.0, 0.55, 1.0, bottom_y, 0.0, -1], np.float32)
    height = rng.uniform(0.9, 1.8)
    for u in np.arange(0.0, length - 0.5, 2.5):
        seg = min(2.5, length - u)
        add_box(builder, start + (u + seg / 2) * axis, bottom_y, seg, 0.06, height, axis, colour, FENCE,
                slats, colour * 0.35)


def _tree(builder: MeshBuilder, rng, xz, bottom_y) -> None:
    trunk_h = rng.uniform(2.0, 4.0)
    add_box(builder, xz, bottom_y, 0.35, 0.35, trunk_h + 0.5, (1.0, 0.0), hsv(0.07, 0.5, 0.3), BARK)
    radius = rng.uniform(1.3, 3.0)
    scale = np.array([radius, radius * rng.uniform(0.8, 1.5), radius])
    centre = np.array([xz[0], bottom_y - trunk_h - radius * 0.6, xz[1]])
    builder.add(_ICOSAHEDRON * scale + centre, _ICOSAHEDRON_FACES,
                hsv(rng.uniform(0.2, 0.36), rng.uniform(0.4, 0.8), rng.uniform(0.22, 0.5)), FOLIAGE)


def _lamp_post(builder: MeshBuilder, rng, xz, bottom_y, toward_road) -> None:
    h = rng.uniform(6.5, 8.5)
    grey = np.float32([0.35, 0.36, 0.38])
    add_box(builder, xz, bottom_y, 0.18, 0.18, h, (1.0, 0.0), grey, METAL)
    arm = xz + toward_road * 0.9
    add_box(builder, arm, bottom_y - h + 0.15, 1.9, 0.12, 0.15, toward_road, grey, METAL)


def _sign(builder: MeshBuilder, rng, xz, bottom_y, facing) -> None:
    add_box(builder, xz, bottom_y, 0.08, 0.08, 2.6, (1.0, 0.0), np.float32([0.6, 0.6, 0.6]), METAL)
    colour = [hsv(0, 0.85, 0.8), hsv(0.6, 0.85, 0.7), hsv(0.14, 0.9, 0.9), hsv(0.33, 0.8, 0.5), hsv(0, 0, 0.9)][rng.integers(5)]
    width = rng.uniform(0.6, 1.4)
    across = np.array([-facing[1], facing[0]])
    add_box(builder, xz, bottom_y - 2.2, width, 0.05, rng.uniform(0.6, 1.0), across, colour, SIGN)


def _along(samples: StreetSamples, s: float):
    """Street sample nearest to arc length `s`: position, tangent, right vector, ground height."""
    i = int(np.clip(round(s / SAMPLE_STEP), 0, len(samples) - 1))
    return samples.xz[i], samples.tangent[i], samples.right[i], float(samples.ground_y[i])


def _buildings(builder: MeshBuilder, samples: StreetSamples, grid: _Grid, rng, side: float, first_id: int) -> int:
    """A row of buildings (and fences across some gaps) along one side; returns the next building id."""
    total = (len(samples) - 1) * SAMPLE_STEP
    building_id = first_id
    s = rng.uniform(0, 10)
    while s < total:
        width = rng.uniform(8, 30)
        setback = rng.uniform(STREET_CLEARANCE + 0.5, 14.0)
        depth = rng.uniform(8, 22)
        p, t, r, gy = _along(samples, s + width / 2)
        centre = p + side * r * (setback + depth / 2)
        if grid.claim(_footprint(centre, t, width, depth), STREET_CLEARANCE):
            _building(builder, rng, centre, t, width, depth, gy, building_id)
            building_id += 1
        gap = rng.choice([0.5, 1.0, 3.0, rng.uniform(6, 30)])
        if gap >= 6:
            fp, ft, fr, fgy = _along(samples, s + width)
            start = fp + side * fr * (STREET_CLEARANCE + 0.8)
            if rng.random() < 0.6 and grid.claim(_footprint(start + ft * gap / 2, ft, gap, 0.2), STREET_CLEARANCE):
                _fence(builder, rng, start, ft, gap, fgy)
        s += width + gap
    return building_id


def _street_furniture(builder: MeshBuilder, samples: StreetSamples, grid: _Grid, rng, side: float) -> list[ParkingSlot]:
    """Trees, lamp posts, signs and parking slots on one side, in zones of 40-120 m so stretches differ."""
    total = (len(samples) - 1) * SAMPLE_STEP
    slots: list[ParkingSlot] = []
    s = rng.uniform(0, 20)
    while s < total:
        zone_end = min(s + rng.uniform(40, 120), total)
        trees, parking = rng.random() < 0.4, side > 0 and rng.random() < 0.6
        lamp_spacing, tree_spacing = rng.uniform(22, 40), rng.uniform(10, 18)
        if trees:
            for u in np.arange(s, zone_end, tree_spacing):
                p, t, r, gy = _along(samples, u)
                here = np.array([p + side * r * 6.6])
                if grid.claim(here, 5.5):
                    _tree(builder, rng, here[0], gy - CURB_HEIGHT)
        for u in np.arange(s, zone_end, lamp_spacing):
            p, t, r, gy = _along(samples, u)
            here = np.array([p + side * r * 5.5])
            if grid.claim(here, 5.0):
                _lamp_post(builder, rng, here[0], gy - CURB_HEIGHT, -side * r)
        if rng.random() < 0.6:
            p, t, r, gy = _along(samples, s + 5)
            here = np.array([p + side * r * 5.8 + t * 0.7])
            if grid.claim(here, 5.0):
                _sign(builder, rng, here[0], gy - CURB_HEIGHT, -t)
        if parking:  # right-hand traffic: cars park on the right
            for u in np.arange(s + 4, zone_end - 4, 6.5):
                p, t, r, gy = _along(samples, u)
                xz = p + r * PARKING_LATERAL
                # Not where another street passes (crossings), and one car per spot on revisited streets.
                if grid.street_tree.query(xz)[0] > PARKING_LATERAL - 0.4 and grid.claim(xz[None], 0.0):
                    slots.append(ParkingSlot(xz, gy, t))
        s = zone_end
    return slots


CAR_COLOURS = np.array([[0.8, 0.8, 0.82], [0.1, 0.1, 0.11], [0.55, 0.56, 0.6], [0.6, 0.08, 0.06], [0.1, 0.2, 0.5],
                        [0.85, 0.85, 0.8], [0.2, 0.35, 0.25], [0.75, 0.6, 0.2], [0.4, 0.42, 0.45]], np.float32)


def parked_cars(slots: list[ParkingSlot], seed: int, epoch: int) -> Mesh:
    """The cars parked in `slots` during one epoch: which slots are taken, colours and offsets change per epoch."""
    builder = MeshBuilder()
    for i, slot in enumerate(slots):
        rng = np.random.default_rng([seed, 0xCA5, i, epoch])
        if rng.random() > 0.6:
            continue
        axis = slot.axis
        xz = slot.xz + axis * rng.uniform(-0.8, 0.8)
        length, width = rng.uniform(3.8, 4.8), rng.uniform(1.65, 1.9)
        body = CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
        body_h = rng.uniform(0.55, 0.8)
        add_box(builder, xz, slot.ground_y - 0.3, length, width, body_h, axis, body, PAINT)
        add_box(builder, xz - axis * 0.2, slot.ground_y - 0.3 - body_h, length * 0.55, width * 0.9,
                rng.uniform(0.45, 0.7), axis, np.float32([0.08, 0.1, 0.12]), GLASS, top_colour=body, top_material=PAINT)
        across = np.array([-axis[1], axis[0]])
        for along_sign, across_sign in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            # Tyres stand 2 cm proud of the body side (coplanar faces would flicker).
            wheel = xz + along_sign * (length / 2 - 0.8) * axis + across_sign * (width / 2 - 0.1) * across
            add_box(builder, wheel, slot.ground_y, 0.62, 0.24, 0.62, axis, np.float32([0.05, 0.05, 0.05]), PAINT)
    return builder.build()


def build_world(poses: np.ndarray, seed: int) -> World:
    """The town around the whole trajectory `poses` (T_world_cam0); the same poses and seed give the same town."""
    rng = np.random.default_rng([seed, 0x70E])
    samples = StreetSamples.from_poses(poses)
    builder = MeshBuilder()
    _terrain(builder, samples)
    _streets(builder, samples, rng)
    grid = _Grid(samples)
    next_id = 0
    for side in (1.0, -1.0):
        next_id = _buildings(builder, samples, grid, rng, side, next_id)
    slots = [slot for side in (1.0, -1.0) for slot in _street_furniture(builder, samples, grid, rng, side)]
    return World(builder.build(), slots, seed)
