"""Abnormalities of the phantom chest: which are present, their attributes, and where they are drawn.

Each present label becomes a :class:`Finding` whose ``attrs`` (side, zone, size, count, ...) are
both drawn in the voxels and stated in the report. Placement is by rejection sampling against the
anatomy and the lesions already placed, so lesions never hide one another; a lesion that cannot
be placed is dropped, and a finding with nothing placed is dropped with it, so the labels always
agree with the voxels.

Drawn labels (13 of the 18 CT-RATE labels): Medical material, Arterial wall calcification,
Cardiomegaly, Pericardial effusion, Coronary artery wall calcification, Hiatal hernia,
Lymphadenopathy, Emphysema, Atelectasis, Lung nodule, Lung opacity, Pleural effusion,
Consolidation. The other five are always 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamodules.phantom.anatomy import ChestAnatomy
from datamodules.phantom.geometry import (
    Box,
    Canvas,
    Capsule,
    Clipped,
    Crescent,
    Ellipsoid,
    Shape,
    TubeShell,
    Vec3,
    polyline,
    sphere,
)

# Probability that each drawn label is present (independently).
PREVALENCE: dict[str, float] = {
    "Medical material": 0.28,
    "Arterial wall calcification": 0.32,
    "Cardiomegaly": 0.28,
    "Pericardial effusion": 0.25,
    "Coronary artery wall calcification": 0.25,
    "Hiatal hernia": 0.2,
    "Lymphadenopathy": 0.22,
    "Emphysema": 0.3,
    "Atelectasis": 0.22,
    "Lung nodule": 0.32,
    "Lung opacity": 0.25,
    "Pleural effusion": 0.28,
    "Consolidation": 0.28,
}
DRAWN_LABELS: list[str] = list(PREVALENCE)

# HU of the lesion materials.
NODULE_HU = 50.0
CONSOLIDATION_HU = 30.0
GROUND_GLASS_HU = -500.0
ATELECTASIS_HU = 10.0
EMPHYSEMA_HU = -985.0
FLUID_HU = 15.0
NODE_HU = 45.0
CALCIUM_HU = 900.0
CORONARY_CALCIUM_HU = 950.0
METAL_HU = 2500.0

CARDIOMEGALY_SCALE = {"mild": (1.35, 1.3, 1.15), "marked": (1.55, 1.45, 1.25)}
DEVICES = ("central venous catheter", "pacemaker", "sternotomy wires", "nasogastric tube")
NODE_STATIONS = ("right paratracheal", "subcarinal", "prevascular", "right hilar", "left hilar")
CORONARY_SETS = (("LAD",), ("LAD", "circumflex"), ("LAD", "circumflex", "RCA"))


@dataclass(frozen=True)
class Part:
    """One painted piece of a finding.

    ``within``: paint only inside this mask (``None``: anywhere). ``clears``: masks the painted
    voxels are removed from (e.g. pleural fluid is no longer lung).
    """

    shape: Shape
    hu: float
    within: str | None = "lungs"
    clears: tuple[str, ...] = ()


@dataclass
class Finding:
    label: str
    attrs: dict[str, Any]
    parts: list[Part] = field(default_factory=list)


def _side(rng: np.random.Generator, bilateral: float = 0.0) -> str:
    r = rng.random()
    if r < bilateral:
        return "bilateral"
    return "right" if r < bilateral + (1.0 - bilateral) / 2.0 else "left"


def _zone(rng: np.random.Generator, p_upper: float = 0.5) -> str:
    return "upper" if rng.random() < p_upper else "lower"


def sample_presence(rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """Which labels are present, with the attributes that do not depend on geometry."""
    want: dict[str, dict[str, Any]] = {}
    for label, p in PREVALENCE.items():
        if rng.random() >= p:
            continue
        a: dict[str, Any] = {}
        if label == "Cardiomegaly":
            a["degree"] = "marked" if rng.random() < 0.5 else "mild"
        elif label == "Pericardial effusion":
            a["thickness_mm"] = int(rng.integers(12, 23))
        elif label == "Pleural effusion":
            a["side"] = _side(rng, bilateral=0.3)
            a["size"] = "large" if rng.random() < 0.5 else "small"
        elif label == "Lung nodule":
            a["count"] = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
            a["side"] = _side(rng, bilateral=0.3 if a["count"] > 1 else 0.0)
            a["zone"] = _zone(rng)
            a["size"] = "large" if rng.random() < 0.5 else "small"
        elif label in ("Consolidation", "Lung opacity"):
            a["side"] = _side(rng)
            a["zone"] = _zone(rng)
            a["size"] = "large" if rng.random() < 0.5 else "small"
        elif label == "Atelectasis":
            a["side"] = _side(rng)
            a["zone"] = _zone(rng, p_upper=0.25)
        elif label == "Emphysema":
            a["side"] = _side(rng, bilateral=0.6)
            a["severity"] = "severe" if rng.random() < 0.5 else "mild"
        elif label == "Arterial wall calcification":
            a["location"] = str(rng.choice(["aortic arch", "descending aorta", "arch and descending aorta"]))
            a["extent"] = "extensive" if rng.random() < 0.5 else "few"
        elif label == "Coronary artery wall calcification":
            a["vessels"] = list(CORONARY_SETS[int(rng.integers(len(CORONARY_SETS)))])
        elif label == "Hiatal hernia":
            a["size"] = "large" if rng.random() < 0.5 else "small"
        elif label == "Lymphadenopathy":
            k = int(rng.integers(2, 5))
            a["stations"] = [
                NODE_STATIONS[i] for i in sorted(rng.choice(len(NODE_STATIONS), k, replace=False))
            ]
        elif label == "Medical material":
            a["device"] = str(DEVICES[int(rng.integers(len(DEVICES)))])
        want[label] = a
    return want


def heart_geometry(want: dict[str, dict[str, Any]]) -> tuple[tuple[float, float, float], float]:
    """(heart scale, pericardial fluid thickness) implied by the wanted findings."""
    scale = CARDIOMEGALY_SCALE[want["Cardiomegaly"]["degree"]] if "Cardiomegaly" in want else (1.0, 1.0, 1.0)
    peri = float(want["Pericardial effusion"]["thickness_mm"]) if "Pericardial effusion" in want else 0.0
    return scale, peri


class _Placer:
    """Rejection sampler for lesion centres inside the lungs, avoiding anatomy and other lesions."""

    def __init__(self, rng: np.random.Generator, an: ChestAnatomy) -> None:
        self.rng = rng
        self.an = an
        self.occupied: list[tuple[Vec3, float]] = []
        self.effusions: list[tuple[str, Ellipsoid, float]] = []  # (side, shifted lung, z_top)
        self.blockers: list[Capsule] = an.aorta_segments() + an.airway_segments()

    def blocked(self, side: str, p: Vec3, r: float, fit: float = 1.0) -> bool:
        """Whether a lesion of radius ``r`` at ``p`` would collide. ``fit`` < 1 lets that fraction
        of the radius reach into anatomy (the lesion is clipped to the lungs when painted), but
        never into another lesion."""
        an = self.an
        zlo, zhi = an.z_range
        rf = fit * r
        if not (zlo + rf + 6.0 <= p[2] <= zhi - rf - 6.0):
            return True
        if an.heart_with_pericardium().contains(p, margin=-(rf + 8.0)):
            return True
        if an.mediastinum.contains(p, margin=-(rf + 4.0)):
            return True
        for cap in self.blockers:
            if cap.distance(p) < cap.radius + rf + 5.0:
                return True
        for q, rq in self.occupied:
            if math.dist(p, q) < r + rq + 5.0:
                return True
        for eside, shifted, z_top in self.effusions:
            if eside == side and p[2] < z_top + rf + 4.0 and not shifted.contains(p, margin=rf + 4.0):
                return True
        return False

    def place(self, side: str, zone: str, r: float, occupy: bool = True, fit: float = 1.0) -> Vec3 | None:
        lung = self.an.lungs[side]
        (cx, cy, cz), (sx, sy, sz) = lung.center, lung.semi
        z_lo, z_hi = (cz + 0.1 * sz, cz + 0.72 * sz) if zone == "upper" else (cz - 0.75 * sz, cz - 0.1 * sz)
        for _ in range(300):
            p = (
                float(self.rng.uniform(cx - sx, cx + sx)),
                float(self.rng.uniform(cy - sy, cy + sy)),
                float(self.rng.uniform(z_lo, z_hi)),
            )
            if lung.contains(p, margin=fit * r + 4.0) and not self.blocked(side, p, r, fit):
                if occupy:
                    self.occupied.append((p, r))
                return p
        return None


def _sides(side: str) -> list[str]:
    return ["right", "left"] if side == "bilateral" else [side]


def _side_of(sides: set[str]) -> str:
    return "bilateral" if len(sides) > 1 else next(iter(sides))


def _unit(v: Vec3) -> Vec3:
    n = math.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
    return v[0] / n, v[1] / n, v[2] / n


def place_findings(
    rng: np.random.Generator, an: ChestAnatomy, want: dict[str, dict[str, Any]]
) -> list[Finding]:
    """Turn wanted findings into drawn :class:`Finding` s (those that could not be placed are dropped).

    The returned list is in painting order: pleural fluid, mediastinal findings, lung lesions, then
    the bright ones (calcium, metal) last so nothing hides them.
    """
    placer = _Placer(rng, an)
    out: dict[str, Finding] = {}
    u = rng.uniform
    heart = an.heart
    hc, hs = heart.center, heart.semi

    for label in ("Cardiomegaly", "Pericardial effusion"):
        if label in want:
            out[label] = Finding(label, dict(want[label]))

    if "Pleural effusion" in want:
        a = dict(want["Pleural effusion"])
        parts = []
        for side in _sides(a["side"]):
            lung = an.lungs[side]
            depth = float(u(38.0, 52.0) if a["size"] == "large" else u(22.0, 30.0))
            shift = (0.0, depth, 0.5 * depth)
            z_top = lung.center[2] + 0.25 * lung.semi[2]
            parts.append(Part(Crescent(lung, shift, z_top), FLUID_HU, "lungs", ("lungs",)))
            placer.effusions.append((side, Ellipsoid(_shift(lung.center, shift), lung.semi), z_top))
            a.setdefault("depth_mm", []).append(int(round(depth)))
        out["Pleural effusion"] = Finding("Pleural effusion", a, parts)

    if "Hiatal hernia" in want:
        a = dict(want["Hiatal hernia"])
        r = float(u(26.0, 32.0) if a["size"] == "large" else u(18.0, 23.0))
        ex, ey = an.esophagus_xy
        c = (ex, ey - 4.0, hc[2] - hs[2] + 0.2 * r)
        if an.z_range[0] + r + 5.0 < c[2]:
            ball = sphere(c, r)
            clears = ("lungs", "heart", "aorta")
            parts = [
                Part(ball, FLUID_HU, None, clears),
                Part(Clipped(ball, c[2] + 0.25 * r, above=True), -1000.0, None, clears),
            ]
            placer.occupied.append((c, r))
            a["diameter_mm"] = int(round(2 * r))
            out["Hiatal hernia"] = Finding("Hiatal hernia", a, parts)

    if "Lymphadenopathy" in want:
        a = dict(want["Lymphadenopathy"])
        k = an.carina
        br, bl = an.bronchi_ends
        centers = {
            "right paratracheal": (k[0] + 17.0, k[1] + 2.0, k[2] + 26.0),
            "subcarinal": (k[0], k[1] - 18.0, k[2] - 24.0),
            "prevascular": (k[0] - 2.0, k[1] + 40.0, k[2] + 14.0),
            "right hilar": (br[0] + 8.0, br[1] + 14.0, br[2]),
            "left hilar": (bl[0] - 8.0, bl[1] + 14.0, bl[2]),
        }
        parts, sizes = [], []
        for st in a["stations"]:
            r = float(u(12.0, 16.0))
            parts.append(Part(sphere(centers[st], r), NODE_HU, None, ("lungs",)))
            placer.occupied.append((centers[st], r))
            sizes.append(int(round(2 * r)))
        a["short_axis_mm"] = max(sizes)
        out["Lymphadenopathy"] = Finding("Lymphadenopathy", a, parts)

    for label, hu, big, small in (
        ("Consolidation", CONSOLIDATION_HU, (40.0, 48.0), (28.0, 34.0)),
        ("Lung opacity", GROUND_GLASS_HU, (34.0, 42.0), (22.0, 28.0)),
    ):
        if label not in want:
            continue
        a = dict(want[label])
        lo, hi = big if a["size"] == "large" else small
        semi = (float(u(lo, hi)) * 0.85, float(u(lo, hi)), float(u(lo, hi)))
        r = max(semi)
        c = placer.place(a["side"], a["zone"], r, fit=0.5)
        if c is not None:
            a["extent_mm"] = int(round(2 * r))
            out[label] = Finding(label, a, [Part(Ellipsoid(c, semi), hu)])

    if "Atelectasis" in want:
        a = dict(want["Atelectasis"])
        semi = (float(u(30.0, 40.0)), float(u(8.0, 10.0)), float(u(16.0, 22.0)))
        c = placer.place(a["side"], a["zone"], max(semi), fit=0.5)
        if c is not None:
            out["Atelectasis"] = Finding("Atelectasis", a, [Part(Ellipsoid(c, semi), ATELECTASIS_HU)])

    if "Lung nodule" in want:
        a = dict(want["Lung nodule"])
        sides = _sides(a["side"])
        parts, diams, placed_sides = [], [], set()
        for i in range(a["count"]):
            side = sides[i % len(sides)]
            d = float(u(28.0, 38.0) if a["size"] == "large" else u(19.0, 25.0))
            c = placer.place(side, a["zone"], d / 2.0)
            if c is None:
                continue
            parts.append(Part(sphere(c, d / 2.0), NODULE_HU))
            diams.append(int(round(d)))
            placed_sides.add(side)
        if parts:
            a.update(count=len(parts), side=_side_of(placed_sides), diameters_mm=diams)
            out["Lung nodule"] = Finding("Lung nodule", a, parts)

    if "Emphysema" in want:
        a = dict(want["Emphysema"])
        severe = a["severity"] == "severe"
        parts, placed_sides = [], set()
        for side in _sides(a["side"]):
            for _ in range(6 if severe else 4):
                r = float(u(20.0, 28.0) if severe else u(16.0, 22.0))
                c = placer.place(side, "upper", r, occupy=False)
                if c is not None:
                    parts.append(Part(sphere(c, r), EMPHYSEMA_HU))
                    placed_sides.add(side)
        if parts:
            a["side"] = _side_of(placed_sides)
            out["Emphysema"] = Finding("Emphysema", a, parts)

    if "Coronary artery wall calcification" in want:
        a = dict(want["Coronary artery wall calcification"])
        paths = {
            "LAD": lambda t: (-0.45, 0.85, 0.55 - 1.0 * t),
            "circumflex": lambda t: (-0.9, 0.1 - 0.6 * t, 0.5 - 0.3 * t),
            "RCA": lambda t: (0.75, 0.55 - 0.7 * t, 0.45 - 0.3 * t),
        }
        parts = []
        for vessel in a["vessels"]:
            # A calcified stretch of the vessel along the heart surface: 3-4 chords, each >= 0.9 voxel thick.
            t0 = float(u(0.0, 0.4))
            pts = []
            for t in np.linspace(t0, t0 + float(u(0.35, 0.6)), int(rng.integers(4, 6))):
                d = _unit(paths[vessel](float(t)))
                pts.append((hc[0] + hs[0] * d[0], hc[1] + hs[1] * d[1], hc[2] + hs[2] * d[2]))
            parts += [Part(c, CORONARY_CALCIUM_HU, None) for c in polyline(pts, 3.0, 0.9)]
        out["Coronary artery wall calcification"] = Finding("Coronary artery wall calcification", a, parts)

    if "Arterial wall calcification" in want:
        a = dict(want["Arterial wall calcification"])
        segs = an.aorta_segments()
        arch, desc = segs[1:4], segs[4:]
        pool = {"aortic arch": arch, "descending aorta": desc, "arch and descending aorta": arch + desc}[
            a["location"]
        ]
        extensive = a["extent"] == "extensive"
        n = int(rng.integers(3, 6) if extensive else rng.integers(2, 4))
        parts = [
            Part(_wall_plaque(an, pool[int(rng.integers(len(pool)))], extensive, rng), CALCIUM_HU, None)
            for _ in range(n)
        ]
        a["count"] = n
        out["Arterial wall calcification"] = Finding("Arterial wall calcification", a, parts)

    if "Medical material" in want:
        a = dict(want["Medical material"])
        out["Medical material"] = Finding("Medical material", a, _device_parts(an, a["device"], rng))

    order = [
        "Cardiomegaly",
        "Pericardial effusion",
        "Pleural effusion",
        "Hiatal hernia",
        "Lymphadenopathy",
        "Consolidation",
        "Lung opacity",
        "Atelectasis",
        "Lung nodule",
        "Emphysema",
        "Coronary artery wall calcification",
        "Arterial wall calcification",
        "Medical material",
    ]
    return [out[label] for label in order if label in out]


def _shift(p: Vec3, d: Vec3) -> Vec3:
    return p[0] + d[0], p[1] + d[1], p[2] + d[2]


def _wall_plaque(an: ChestAnatomy, seg: Capsule, full: bool, rng: np.random.Generator) -> TubeShell:
    """A calcified rim (15-35 mm long, ~4 mm thick) on the aortic wall along ``seg``, inside the FOV:
    the full circumference when ``full``, else one side of it."""
    a, b = np.asarray(seg.a), np.asarray(seg.b)
    length = float(np.linalg.norm(b - a))
    # Only the part of the segment above the bottom of the field of view.
    zlo = an.z_range[0] + 15.0
    t_max = 1.0 if b[2] >= zlo or a[2] <= b[2] else float(np.clip((a[2] - zlo) / (a[2] - b[2]), 0.0, 1.0))
    span = min(float(rng.uniform(15.0, 35.0)) / length, t_max)
    t0 = float(rng.uniform(0.0, max(t_max - span, 0.0)))
    toward = None
    if not full:
        d = (b - a) / length
        e1 = np.cross(d, [0.0, 0.0, 1.0])
        e1 = e1 / np.linalg.norm(e1) if np.linalg.norm(e1) > 1e-3 else np.array([1.0, 0.0, 0.0])
        e2 = np.cross(d, e1)
        phi = float(rng.uniform(0.0, 2 * math.pi))
        w = math.cos(phi) * e1 + math.sin(phi) * e2
        toward = (float(w[0]), float(w[1]), float(w[2]))
    r = an.aorta_radius
    return TubeShell(seg.a, seg.b, r - 1.0, r + 3.0, t0, t0 + span, toward, min_thickness_vox=0.9)


def _device_parts(an: ChestAnatomy, device: str, rng: np.random.Generator) -> list[Part]:
    """Metal paths of a device, thick enough (>= 0.9 voxel) to be sampled on any grid."""
    (ox, oy), (a, b) = an.body_center, an.body_semi
    a_in, b_in = a - an.fat - 10.0, b - an.fat - 10.0
    hc, hs = an.heart.center, an.heart.semi
    top = an.z_range[1] + 20.0
    k = an.carina
    shapes: list[Shape] = []
    if device == "central venous catheter":
        pts = [
            (ox + 0.35 * a_in, oy + 0.2 * b_in, top),
            (ox + 0.12 * a_in, oy + 0.25 * b_in, k[2] + 30.0),
            (ox + 0.10 * a_in, oy + 0.30 * b_in, hc[2] + 0.5 * hs[2]),
        ]
        shapes += polyline(pts, 1.5, 0.9)
    elif device == "pacemaker":
        gx = ox - 0.45 * a
        gy = oy + 0.89 * b - 0.5 * an.fat - 4.0
        gz = k[2] + float(rng.uniform(25.0, 45.0))
        shapes.append(Box((gx - 22.0, gy - 4.0, gz - 26.0), (gx + 22.0, gy + 4.0, gz + 26.0)))
        pts = [
            (gx + 15.0, gy - 4.0, gz),
            (ox - 0.2 * a_in, oy + 0.3 * b_in, k[2] + 45.0),
            (ox + 0.05 * a_in, oy + 0.28 * b_in, k[2] + 10.0),
            (hc[0] - 0.2 * hs[0], hc[1] + 0.6 * hs[1], hc[2] - 0.4 * hs[2]),
        ]
        shapes += polyline(pts, 1.5, 0.9)
    elif device == "sternotomy wires":
        sl, sh = an.sternum.lo, an.sternum.hi
        sy = 0.5 * (sl[1] + sh[1])
        for z in np.linspace(sl[2] + 10.0, sh[2] - 10.0, 5):
            shapes.append(Capsule((ox - 11.0, sy, float(z)), (ox + 11.0, sy, float(z)), 1.2, 0.9))
    else:  # nasogastric tube
        ex, ey = an.esophagus_xy
        zb = hc[2] - hs[2]
        shapes += polyline([(ex, ey, top), (ex, ey, zb - 10.0), (ex + 25.0, ey + 15.0, zb - 50.0)], 2.0, 0.9)
    return [Part(s, METAL_HU, None) for s in shapes]


def draw_findings(canvas: Canvas, findings: list[Finding]) -> None:
    """Paint the findings in list order on top of the anatomy. Each painted part is recorded in its
    finding's canvas mask (``Canvas.finding_masks``), taken from any finding painted earlier there."""
    for f in findings:
        for part in f.parts:
            within = canvas.mask(part.within) if part.within is not None else None
            reg = canvas.fill(part.shape.region(canvas), part.hu, within)
            for name in part.clears:
                canvas.mark(name, reg, on=False)
            canvas.mark_finding(f.label, reg)
