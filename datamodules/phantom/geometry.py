"""Shapes drawn on a physical voxel grid, in world RAS+ millimetres.

A :class:`Grid` is an axis-aligned voxel grid whose array axes point along world +x (patient
Right), +y (Anterior) and +z (Superior), centred on the world origin: voxel ``(i, j, k)`` sits at
``((i - (nx - 1) / 2) * sx, (j - (ny - 1) / 2) * sy, (k - (nz - 1) / 2) * sz)``.
Every shape evaluates its membership test only inside its own bounding box, so drawing a small
lesion on a large grid costs little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]
Slices = tuple[slice, slice, slice]
# A drawn region: the index box it lives in and the boolean mask inside that box.
Region = tuple[Slices, np.ndarray]


@dataclass(frozen=True)
class Grid:
    """Voxel grid in canonical RAS+ orientation, centred on the world origin."""

    shape: tuple[int, int, int]
    spacing: Vec3

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinate (mm) of every index along x, y and z, ascending."""
        out = [
            (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(s)
            for n, s in zip(self.shape, self.spacing, strict=True)
        ]
        return out[0], out[1], out[2]


# Canvas masks named with this prefix hold the voxels a finding (a CT-RATE label) was painted in.
FINDING_MASK_PREFIX = "finding:"


def finding_mask_name(label: str) -> str:
    """The canvas mask of the finding ``label`` (``"finding:Lung nodule"``)."""
    return f"{FINDING_MASK_PREFIX}{label}"


class Canvas:
    """A float32 HU volume on a :class:`Grid` plus named boolean masks."""

    def __init__(self, grid: Grid, background: float) -> None:
        self.grid = grid
        self.x, self.y, self.z = grid.axes()
        self.hu = np.full(grid.shape, background, dtype=np.float32)
        self.masks: dict[str, np.ndarray] = {}

    @property
    def max_spacing(self) -> float:
        return float(max(self.grid.spacing))

    def box(self, lo: Vec3, hi: Vec3) -> Slices | None:
        """Index slices of the voxels whose centres lie inside the world box ``[lo, hi]``."""
        out = []
        for axis, a, b in zip((self.x, self.y, self.z), lo, hi, strict=True):
            i0 = int(np.searchsorted(axis, a, side="left"))
            i1 = int(np.searchsorted(axis, b, side="right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return out[0], out[1], out[2]

    def coords(self, sl: Slices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates of the voxels in ``sl``."""
        return self.x[sl[0]][:, None, None], self.y[sl[1]][None, :, None], self.z[sl[2]][None, None, :]

    def mask(self, name: str) -> np.ndarray:
        if name not in self.masks:
            self.masks[name] = np.zeros(self.grid.shape, dtype=bool)
        return self.masks[name]

    def fill(self, region: Region | None, value: float, within: np.ndarray | None = None) -> Region | None:
        """Set ``value`` in ``region`` (restricted to ``within``); returns what was painted."""
        if region is None:
            return None
        sl, m = region
        if within is not None:
            m = m & within[sl]
        self.hu[sl][m] = value
        return sl, m

    def finding_masks(self) -> dict[str, np.ndarray]:
        """Label -> boolean mask of the findings painted so far (see :meth:`mark_finding`)."""
        n = len(FINDING_MASK_PREFIX)
        return {name[n:]: m for name, m in self.masks.items() if name.startswith(FINDING_MASK_PREFIX)}

    def mark_finding(self, label: str | None, region: Region | None) -> None:
        """``region`` was painted last: it now belongs to the finding ``label`` (``None``: to no
        finding, e.g. anatomy drawn over it) and to no other finding."""
        for name in [n for n in self.masks if n.startswith(FINDING_MASK_PREFIX)]:
            self.mark(name, region, on=False)
        if label is not None:
            self.mark(finding_mask_name(label), region)

    def mark(self, name: str, region: Region | None, on: bool = True) -> None:
        """Add ``region`` to (``on``) or remove it from (``not on``) the named mask."""
        if region is None:
            return
        sl, m = region
        if on:
            self.mask(name)[sl] |= m
        elif name in self.masks:
            self.masks[name][sl] &= ~m


class Shape:
    """Something that can say which voxels of a canvas it covers."""

    def region(self, canvas: Canvas) -> Region | None:
        raise NotImplementedError

    def bounds(self) -> tuple[Vec3, Vec3]:
        """World bounding box (lo, hi) in mm."""
        raise NotImplementedError


def _add(a: Vec3, b: Vec3, sign: float = 1.0) -> Vec3:
    return a[0] + sign * b[0], a[1] + sign * b[1], a[2] + sign * b[2]


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """Axis-aligned ellipsoid. ``min_radius_vox`` widens it to at least that many voxels."""

    center: Vec3
    semi: Vec3
    min_radius_vox: float = 0.0

    def _semi(self, canvas: Canvas | None) -> Vec3:
        if canvas is None or self.min_radius_vox <= 0:
            return self.semi
        r = self.min_radius_vox * canvas.max_spacing
        return max(self.semi[0], r), max(self.semi[1], r), max(self.semi[2], r)

    def bounds(self) -> tuple[Vec3, Vec3]:
        return _add(self.center, self.semi, -1.0), _add(self.center, self.semi)

    def scaled(self, factor: float) -> Ellipsoid:
        return Ellipsoid(self.center, (self.semi[0] * factor, self.semi[1] * factor, self.semi[2] * factor))

    def grown(self, mm: float) -> Ellipsoid:
        return Ellipsoid(self.center, (self.semi[0] + mm, self.semi[1] + mm, self.semi[2] + mm))

    def contains(self, p: Vec3, margin: float = 0.0) -> bool:
        """Whether ``p`` lies inside the ellipsoid shrunk by ``margin`` mm (grown if negative)."""
        s = [max(v - margin, 1e-3) for v in self.semi]
        return sum(((p[i] - self.center[i]) / s[i]) ** 2 for i in range(3)) <= 1.0

    def region(self, canvas: Canvas) -> Region | None:
        semi = self._semi(canvas)
        sl = canvas.box(_add(self.center, semi, -1.0), _add(self.center, semi))
        if sl is None:
            return None
        x, y, z = canvas.coords(sl)
        d = ((x - self.center[0]) / semi[0]) ** 2 + ((y - self.center[1]) / semi[1]) ** 2
        d = d + ((z - self.center[2]) / semi[2]) ** 2
        return sl, d <= 1.0


def sphere(center: Vec3, radius: float, min_radius_vox: float = 0.0) -> Ellipsoid:
    return Ellipsoid(center, (radius, radius, radius), min_radius_vox)


@dataclass(frozen=True)
class Shell(Shape):
    """The layer between an ellipsoid and the same ellipsoid grown by ``thickness`` mm."""

    inner: Ellipsoid
    thickness: float

    def bounds(self) -> tuple[Vec3, Vec3]:
        return self.inner.grown(self.thickness).bounds()

    def region(self, canvas: Canvas) -> Region | None:
        outer = self.inner.grown(self.thickness)
        reg = outer.region(canvas)
        if reg is None:
            return None
        sl, m = reg
        x, y, z = canvas.coords(sl)
        c, s = self.inner.center, self.inner.semi
        d = ((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2 + ((z - c[2]) / s[2]) ** 2
        return sl, m & (d > 1.0)


@dataclass(frozen=True)
class Capsule(Shape):
    """All points within ``radius`` of the segment a-b (at least ``min_radius_vox`` voxels)."""

    a: Vec3
    b: Vec3
    radius: float
    min_radius_vox: float = 0.0

    def _radius(self, canvas: Canvas | None) -> float:
        if canvas is None:
            return self.radius
        return max(self.radius, self.min_radius_vox * canvas.max_spacing)

    def bounds(self) -> tuple[Vec3, Vec3]:
        r = self.radius
        lo = tuple(min(self.a[i], self.b[i]) - r for i in range(3))
        hi = tuple(max(self.a[i], self.b[i]) + r for i in range(3))
        return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])

    def region(self, canvas: Canvas) -> Region | None:
        r = self._radius(canvas)
        lo = tuple(min(self.a[i], self.b[i]) - r for i in range(3))
        hi = tuple(max(self.a[i], self.b[i]) + r for i in range(3))
        sl = canvas.box((lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2]))
        if sl is None:
            return None
        x, y, z = canvas.coords(sl)
        d = np.subtract(self.b, self.a, dtype=np.float32)
        px, py, pz = x - self.a[0], y - self.a[1], z - self.a[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / max(float(d @ d), 1e-6), 0.0, 1.0)
        dist2 = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2
        return sl, dist2 <= r * r

    def distance(self, p: Vec3) -> float:
        """Distance from point ``p`` to the segment's axis (mm)."""
        a, b, q = np.asarray(self.a), np.asarray(self.b), np.asarray(p)
        d = b - a
        t = float(np.clip((q - a) @ d / max(float(d @ d), 1e-6), 0.0, 1.0))
        return float(np.linalg.norm(q - a - t * d))


@dataclass(frozen=True)
class TubeShell(Shape):
    """Wall of a tube around the segment a-b: points at radial distance ``r_in``..``r_out`` from the
    axis (the outer radius widened to ``r_in`` + ``min_thickness_vox`` voxels if needed), between the
    axial fractions ``t0``..``t1``; with ``toward`` set, only the half whose radial direction points
    within 70 degrees of ``toward``."""

    a: Vec3
    b: Vec3
    r_in: float
    r_out: float
    t0: float = 0.0
    t1: float = 1.0
    toward: Vec3 | None = None
    min_thickness_vox: float = 0.0

    def _ends(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.asarray(self.a, dtype=np.float64), np.asarray(self.b, dtype=np.float64)
        return a + self.t0 * (b - a), a + self.t1 * (b - a)

    def bounds(self) -> tuple[Vec3, Vec3]:
        p, q = self._ends()
        lo, hi = np.minimum(p, q) - self.r_out, np.maximum(p, q) + self.r_out
        return (float(lo[0]), float(lo[1]), float(lo[2])), (float(hi[0]), float(hi[1]), float(hi[2]))

    def region(self, canvas: Canvas) -> Region | None:
        r_out = max(self.r_out, self.r_in + self.min_thickness_vox * canvas.max_spacing)
        p, q = self._ends()
        lo, hi = np.minimum(p, q) - r_out, np.maximum(p, q) + r_out
        sl = canvas.box(
            (float(lo[0]), float(lo[1]), float(lo[2])), (float(hi[0]), float(hi[1]), float(hi[2]))
        )
        if sl is None:
            return None
        x, y, z = canvas.coords(sl)
        d = (q - p).astype(np.float32)
        px, py, pz = x - np.float32(p[0]), y - np.float32(p[1]), z - np.float32(p[2])
        t = (px * d[0] + py * d[1] + pz * d[2]) / max(float(d @ d), 1e-6)
        rx, ry, rz = px - t * d[0], py - t * d[1], pz - t * d[2]
        dist = np.sqrt(rx**2 + ry**2 + rz**2)
        m = (t >= 0.0) & (t <= 1.0) & (dist >= self.r_in) & (dist <= r_out)
        if self.toward is not None:
            w = self.toward
            m &= (rx * w[0] + ry * w[1] + rz * w[2]) >= np.float32(math.cos(math.radians(70.0))) * dist
        return sl, m


def polyline(points: list[Vec3], radius: float, min_radius_vox: float = 0.0) -> list[Capsule]:
    """A tube through ``points`` as consecutive capsules."""
    return [Capsule(points[i], points[i + 1], radius, min_radius_vox) for i in range(len(points) - 1)]


@dataclass(frozen=True)
class EllipticCylinder(Shape):
    """Vertical (z-aligned) elliptic cylinder between ``z0`` and ``z1``."""

    center_xy: tuple[float, float]
    semi_xy: tuple[float, float]
    z0: float
    z1: float

    def bounds(self) -> tuple[Vec3, Vec3]:
        (cx, cy), (a, b) = self.center_xy, self.semi_xy
        return (cx - a, cy - b, self.z0), (cx + a, cy + b, self.z1)

    def region(self, canvas: Canvas) -> Region | None:
        lo, hi = self.bounds()
        sl = canvas.box(lo, hi)
        if sl is None:
            return None
        x, y, _ = canvas.coords(sl)
        (cx, cy), (a, b) = self.center_xy, self.semi_xy
        m = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0
        return sl, np.broadcast_to(m, (m.shape[0], m.shape[1], sl[2].stop - sl[2].start))


@dataclass(frozen=True)
class Box(Shape):
    lo: Vec3
    hi: Vec3

    def bounds(self) -> tuple[Vec3, Vec3]:
        return self.lo, self.hi

    def region(self, canvas: Canvas) -> Region | None:
        sl = canvas.box(self.lo, self.hi)
        if sl is None:
            return None
        shape = tuple(s.stop - s.start for s in sl)
        return sl, np.ones(shape, dtype=bool)


@dataclass(frozen=True)
class RibBand(Shape):
    """A rib pair: an elliptic annulus (in-plane) over a thin slab that slopes down anteriorly
    (``z = z0 - slope * (y - cy)``), open at the anterior midline."""

    center_xy: tuple[float, float]
    semi_xy: tuple[float, float]
    width: float
    z: float
    half_height: float
    gap_x: float
    slope: float = 0.4

    def bounds(self) -> tuple[Vec3, Vec3]:
        (cx, cy), (a, b) = self.center_xy, self.semi_xy
        dz = self.half_height + self.slope * b
        return (cx - a, cy - b, self.z - dz), (cx + a, cy + b, self.z + dz)

    def region(self, canvas: Canvas) -> Region | None:
        lo, hi = self.bounds()
        sl = canvas.box(lo, hi)
        if sl is None:
            return None
        x, y, z = canvas.coords(sl)
        (cx, cy), (a, b) = self.center_xy, self.semi_xy
        rho = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
        inner = 1.0 - self.width / min(a, b)
        ring = (rho <= 1.0) & (rho >= inner) & ~((np.abs(x - cx) < self.gap_x) & (y > cy))
        slab = np.abs(z - (self.z - self.slope * (y - cy))) <= self.half_height
        return sl, ring & slab


@dataclass(frozen=True)
class Crescent(Shape):
    """Dependent layer of an ellipsoid: the part not covered by the ellipsoid shifted by ``shift``,
    below ``z_top``. With a shift towards anterior/superior this is a posterior-basal crescent."""

    outer: Ellipsoid
    shift: Vec3
    z_top: float

    def bounds(self) -> tuple[Vec3, Vec3]:
        lo, hi = self.outer.bounds()
        return lo, (hi[0], hi[1], min(hi[2], self.z_top))

    def region(self, canvas: Canvas) -> Region | None:
        lo, hi = self.bounds()
        sl = canvas.box(lo, hi)
        if sl is None:
            return None
        x, y, z = canvas.coords(sl)
        c, s, d = self.outer.center, self.outer.semi, self.shift
        inside = ((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2 + ((z - c[2]) / s[2]) ** 2 <= 1.0
        shifted = ((x - c[0] - d[0]) / s[0]) ** 2 + ((y - c[1] - d[1]) / s[1]) ** 2
        shifted = shifted + ((z - c[2] - d[2]) / s[2]) ** 2 <= 1.0
        return sl, inside & ~shifted


@dataclass(frozen=True)
class Clipped(Shape):
    """``shape`` restricted to the half-space ``z >= z_min`` (``above``) or ``z < z_min``."""

    shape: Shape
    z_cut: float
    above: bool

    def bounds(self) -> tuple[Vec3, Vec3]:
        return self.shape.bounds()

    def region(self, canvas: Canvas) -> Region | None:
        reg = self.shape.region(canvas)
        if reg is None:
            return None
        sl, m = reg
        _, _, z = canvas.coords(sl)
        keep = z >= self.z_cut if self.above else z < self.z_cut
        return sl, m & keep
