"""The phantom abdomen (Merlin-style abdominal CT): anatomy, visible findings, rendering.

World frame as in :mod:`datamodules.phantom.anatomy`: RAS+ mm, origin at the centre of the field of
view (+x = patient Right, +y = Anterior, +z = Superior). The liver is at x > 0, the spleen at x < 0
and posterior, the kidneys posterior on both sides, the lung bases at the top of the field of view.

Visible findings (each clearly larger than a 6 mm voxel):

* ``splenomegaly``: the spleen scaled by 1.5-1.7;
* ``hepatomegaly``: the liver scaled by 1.25-1.35, reaching far below its normal tip;
* ``ascites``: a 12-25 mm layer of fluid (10 HU) along the inner abdominal wall and around the liver,
  painted only over fat;
* ``renal_cyst``: a 12-20 mm radius water-density (5 HU) sphere inside one kidney (~150 HU);
* ``hepatic_steatosis``: the liver at 0 HU instead of 60 HU (darker than the spleen).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamodules.phantom.geometry import (
    Box,
    Canvas,
    Capsule,
    Ellipsoid,
    EllipticCylinder,
    Grid,
    Shape,
    sphere,
)

AIR, FAT, MUSCLE, FLUID, CYST = -1000.0, -100.0, 45.0, 10.0, 5.0
LIVER, STEATOTIC_LIVER, SPLEEN, KIDNEY, BLOOD, BOWEL = 60.0, 0.0, 50.0, 150.0, 160.0, 30.0
LUNG, BONE_CORTICAL, BONE_CANCELLOUS = -850.0, 700.0, 300.0
VISIBLE_FINDINGS = ("splenomegaly", "hepatomegaly", "ascites", "renal_cyst", "hepatic_steatosis")
FINDING_PROBABILITY = {
    "splenomegaly": 0.3,
    "hepatomegaly": 0.3,
    "ascites": 0.25,
    "renal_cyst": 0.35,
    "hepatic_steatosis": 0.25,
}


@dataclass(frozen=True)
class AbdomenCase:
    """One abdominal scan: geometry plus the findings drawn (name -> attributes)."""

    fov_xy: float
    fov_z: float
    body_semi: tuple[float, float]
    fat: float
    liver: Ellipsoid
    spleen: Ellipsoid
    kidneys: dict[str, Ellipsoid]  # "right" (x > 0), "left"
    aorta_xy: tuple[float, float]
    ivc_xy: tuple[float, float]
    spine_xy: tuple[float, float]
    bladder: Ellipsoid
    lung_bases: tuple[Ellipsoid, Ellipsoid]
    bowel: tuple[Capsule, ...]
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def labels(self) -> set[str]:
        return set(self.findings)


def sample_abdomen_case(rng: np.random.Generator) -> AbdomenCase:
    u = rng.uniform
    fov_xy, fov_z = float(u(380.0, 420.0)), float(u(300.0, 350.0))
    top = fov_z / 2.0
    a, b, fat = float(u(150.0, 172.0)), float(u(112.0, 128.0)), float(u(14.0, 28.0))
    s = float(u(0.94, 1.06))
    present = {name for name, p in FINDING_PROBABILITY.items() if rng.random() < p}
    findings: dict[str, dict[str, Any]] = {}

    liver = Ellipsoid((62.0, 8.0, top - 75.0), (82.0 * s, 72.0 * s, 70.0 * s))
    if "hepatomegaly" in present:
        k = float(u(1.25, 1.35))
        liver = Ellipsoid((62.0, 8.0, top - 75.0 - 35.0 * (k - 1.0) * 2), tuple(v * k for v in liver.semi))  # type: ignore[arg-type]
        findings["hepatomegaly"] = {"craniocaudal_cm": round(2 * liver.semi[2] / 10.0, 1)}
    if "hepatic_steatosis" in present:
        findings["hepatic_steatosis"] = {"liver_hu": STEATOTIC_LIVER}

    spleen = Ellipsoid((-88.0, -38.0, top - 85.0), (30.0 * s, 42.0 * s, 48.0 * s))
    if "splenomegaly" in present:
        k = float(u(1.5, 1.7))
        spleen = Ellipsoid((-88.0, -30.0, top - 95.0), tuple(v * k for v in spleen.semi))  # type: ignore[arg-type]
    if "splenomegaly" in present:
        findings["splenomegaly"] = {"length_cm": round(2 * spleen.semi[2] / 10.0, 1)}

    kz = top - 150.0
    kidneys = {
        "right": Ellipsoid((68.0, -52.0, kz - 12.0), (27.0, 26.0, 52.0)),
        "left": Ellipsoid((-68.0, -52.0, kz), (27.0, 26.0, 52.0)),
    }
    if "renal_cyst" in present:
        side = "right" if rng.random() < 0.5 else "left"
        k = kidneys[side]
        radius = float(u(12.0, 20.0))
        centre = (
            k.center[0] + float(u(-6, 6)),
            k.center[1] + float(u(-5, 5)),
            k.center[2] + float(u(-20, 20)),
        )
        findings["renal_cyst"] = {"side": side, "radius_mm": round(radius, 1), "center": centre}
    if "ascites" in present:
        findings["ascites"] = {"thickness_mm": round(float(u(12.0, 25.0)), 1)}

    bowel = tuple(
        Capsule(
            (float(u(-60, 60)), float(u(10, 70)), float(u(-top + 60, top - 170))),
            (float(u(-60, 60)), float(u(10, 70)), float(u(-top + 60, top - 170))),
            float(u(12.0, 18.0)),
        )
        for _ in range(5)
    )
    return AbdomenCase(
        fov_xy=fov_xy,
        fov_z=fov_z,
        body_semi=(a, b),
        fat=fat,
        liver=liver,
        spleen=spleen,
        kidneys=kidneys,
        aorta_xy=(-14.0, -32.0),
        ivc_xy=(22.0, -30.0),
        spine_xy=(0.0, -72.0),
        bladder=Ellipsoid((0.0, 45.0, -top + 45.0), (38.0, 32.0, 30.0)),
        lung_bases=(
            Ellipsoid((75.0, -10.0, top + 40.0), (70.0, 80.0, 75.0)),
            Ellipsoid((-75.0, -10.0, top + 50.0), (70.0, 80.0, 75.0)),
        ),
        bowel=bowel,
        findings=findings,
    )


def render_abdomen(
    case: AbdomenCase, grid: Grid, rng: np.random.Generator, noise_hu: float = 12.0
) -> np.ndarray:
    """The case as float32 HU on ``grid`` (canonical RAS+ axis order), with noise, clipped."""
    canvas = Canvas(grid, background=AIR)
    z0, z1 = -case.fov_z, case.fov_z
    (a, b), f = case.body_semi, case.fat

    def paint(shape: Shape, hu: float, within: np.ndarray | None = None) -> None:
        canvas.fill(shape.region(canvas), hu, within)

    paint(EllipticCylinder((0.0, 0.0), (a, b), z0, z1), FAT)
    paint(EllipticCylinder((0.0, 0.0), (a - f, b - f), z0, z1), MUSCLE)
    paint(EllipticCylinder((0.0, 0.0), (a - f - 12.0, b - f - 12.0), z0, z1), FAT)
    for lung in case.lung_bases:
        paint(lung, LUNG)
    for seg in case.bowel:
        paint(seg, BOWEL)
        paint(Capsule(seg.a, seg.b, seg.radius * 0.45), AIR)
    paint(case.liver, STEATOTIC_LIVER if "hepatic_steatosis" in case.findings else LIVER)
    paint(case.spleen, SPLEEN)
    for kidney in case.kidneys.values():
        paint(kidney, KIDNEY)
    if "renal_cyst" in case.findings:
        cyst = case.findings["renal_cyst"]
        paint(sphere(tuple(cyst["center"]), float(cyst["radius_mm"])), CYST)
    ax, ay = case.aorta_xy
    paint(Capsule((ax, ay, z0), (ax, ay, z1), 12.0), BLOOD)
    ix, iy = case.ivc_xy
    paint(Capsule((ix, iy, z0), (ix, iy, z1), 11.0), BLOOD - 30.0)
    paint(case.bladder, FLUID)
    sx, sy = case.spine_xy
    paint(EllipticCylinder((sx, sy), (20.0, 20.0), z0, z1), BONE_CORTICAL)
    paint(EllipticCylinder((sx, sy), (16.0, 16.0), z0, z1), BONE_CANCELLOUS)
    paint(Box((sx - 8.0, sy - 42.0, z0), (sx + 8.0, sy - 18.0, z1)), 600.0)
    if "ascites" in case.findings:
        t = float(case.findings["ascites"]["thickness_mm"])
        fat_only = canvas.hu < -50.0
        inner = (a - f - 12.0, b - f - 12.0)
        wall_layer = EllipticCylinder((0.0, 0.0), inner, z0, case.fov_z / 2.0 - 40.0).region(canvas)
        core = EllipticCylinder((0.0, 0.0), (inner[0] - t, inner[1] - t), z0, z1).region(canvas)
        if wall_layer is not None:
            sl, m = wall_layer
            if core is not None:
                core_mask = np.zeros(grid.shape, dtype=bool)
                core_mask[core[0]][core[1]] = True
                m = m & ~core_mask[sl]
            canvas.fill((sl, m), FLUID, fat_only)
        paint(case.liver.grown(t), FLUID, canvas.hu < -50.0)
        paint(case.liver, STEATOTIC_LIVER if "hepatic_steatosis" in case.findings else LIVER)
    hu = canvas.hu
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return hu
