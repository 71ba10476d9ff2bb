"""Normal anatomy of the phantom chest (and the small head phantom), in world RAS+ millimetres.

World frame (nibabel convention): +x = patient Right, +y = Anterior, +z = Superior, origin at the
centre of the scan's field of view. So the patient's *left* lung is at x < 0, the spine is at
y < 0 (posterior), and the heart sits anterior (y > 0) and slightly left (x < 0).

:func:`sample_anatomy` draws the geometry (no voxels); :func:`draw_anatomy` paints it on a
:class:`~datamodules.phantom.geometry.Canvas` and records organ masks (body, lungs, heart, aorta,
spine). Abnormalities live in :mod:`datamodules.phantom.findings`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.phantom.geometry import (
    Box,
    Canvas,
    Capsule,
    Ellipsoid,
    EllipticCylinder,
    RibBand,
    Shape,
    Shell,
    Vec3,
    polyline,
)

# Tissue densities (HU).
AIR = -1000.0
FAT = -100.0
MUSCLE = 40.0
LUNG = -850.0
MEDIASTINAL_FAT = -90.0
MYOCARDIUM = 40.0
LIVER = 60.0
BONE_CANCELLOUS = 350.0
BONE_CORTICAL = 700.0
DISC = 80.0
CSF = 15.0


@dataclass(frozen=True)
class Habitus:
    """Per-patient body build, shared by all scans of one patient."""

    body_a: float  # lateral semi-axis of the body ellipse (mm)
    body_b: float  # antero-posterior semi-axis (mm)
    fat: float  # subcutaneous fat thickness (mm)
    organ_scale: float  # overall organ size factor


def sample_habitus(rng: np.random.Generator) -> Habitus:
    return Habitus(
        body_a=float(rng.uniform(145.0, 163.0)),
        body_b=float(rng.uniform(104.0, 118.0)),
        fat=float(rng.uniform(10.0, 22.0)),
        organ_scale=float(rng.uniform(0.94, 1.06)),
    )


@dataclass(frozen=True)
class ChestAnatomy:
    """Geometry of a normal chest (heart possibly enlarged / with pericardial fluid)."""

    fov_xy: float
    fov_z: float
    body_center: tuple[float, float]
    body_semi: tuple[float, float]
    fat: float
    lungs: dict[str, Ellipsoid]  # keys "right" (x > 0) and "left" (x < 0)
    heart: Ellipsoid
    pericardium_mm: float  # thickness of pericardial fluid, 0 if none
    contrast: bool
    blood_hu: float
    aorta: tuple[Vec3, ...]
    aorta_radius: float
    carina: Vec3
    bronchi_ends: tuple[Vec3, Vec3]
    esophagus_xy: tuple[float, float]
    spine_xy: tuple[float, float]
    spine_radius: float
    mediastinum: Ellipsoid
    liver: Ellipsoid
    sternum: Box
    rib_z: tuple[float, ...]

    @property
    def z_range(self) -> tuple[float, float]:
        return -self.fov_z / 2.0, self.fov_z / 2.0

    def aorta_segments(self) -> list[Capsule]:
        return polyline(list(self.aorta), self.aorta_radius)

    def airway_segments(self) -> list[Capsule]:
        top = (self.carina[0], self.carina[1], self.fov_z / 2.0 + 20.0)
        return [
            Capsule(self.carina, top, 9.0),
            Capsule(self.carina, self.bronchi_ends[0], 6.0),
            Capsule(self.carina, self.bronchi_ends[1], 6.0),
        ]

    def heart_with_pericardium(self) -> Ellipsoid:
        return self.heart.grown(self.pericardium_mm)


def sample_anatomy(
    rng: np.random.Generator,
    habitus: Habitus,
    heart_scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
    pericardium_mm: float = 0.0,
) -> ChestAnatomy:
    """Draw a normal chest geometry. ``heart_scale`` > 1 models cardiomegaly."""
    u = rng.uniform
    fov_xy = float(u(330.0, 360.0))
    fov_z = float(u(270.0, 320.0))
    ox, oy, oz = float(u(-8.0, 8.0)), float(u(-6.0, 6.0)), float(u(-10.0, 10.0))
    a, b, f = habitus.body_a, habitus.body_b, habitus.fat
    a_in, b_in = a - f - 10.0, b - f - 10.0
    s = habitus.organ_scale

    def p(x: float, y: float, z: float) -> Vec3:
        return (ox + x, oy + y, oz + z)

    lung_cz = 15.0 * s
    lung_c = float(u(115.0, 128.0)) * s
    lungs = {
        "right": Ellipsoid(p(0.55 * a_in, -0.08 * b_in, lung_cz), (0.42 * a_in, 0.9 * b_in, lung_c)),
        "left": Ellipsoid(
            p(-0.56 * a_in, -0.08 * b_in, lung_cz - 4.0), (0.40 * a_in, 0.88 * b_in, lung_c - 5.0)
        ),
    }
    heart_semi = (0.42 * a_in * s * float(u(0.95, 1.05)), 0.52 * b_in * s * float(u(0.95, 1.05)), 52.0 * s)
    heart_semi = (
        heart_semi[0] * heart_scale[0],
        heart_semi[1] * heart_scale[1],
        heart_semi[2] * heart_scale[2],
    )
    # An enlarged heart grows mostly to the left and posteriorly.
    heart_center = p(
        -0.12 * a_in - 0.35 * (heart_semi[0] - 0.42 * a_in * s),
        0.30 * b_in - 0.45 * (heart_semi[1] - 0.52 * b_in * s),
        lung_cz - 0.45 * lung_c,
    )
    heart = Ellipsoid(heart_center, heart_semi)
    heart_top = heart_center[2] + 52.0 * s
    carina = p(0.0, 0.05 * b_in, heart_top - oz + 25.0)
    cz = carina[2] - oz
    bronchi_ends = (p(0.3 * a_in, -0.02 * b_in, cz - 32.0), p(-0.3 * a_in, -0.02 * b_in, cz - 30.0))
    aorta_radius = float(u(12.0, 15.0))
    z_bottom = -fov_z / 2.0 - 20.0 - oz
    aorta = (
        p(0.05 * a_in, 0.30 * b_in, heart_center[2] - oz + 0.4 * heart_semi[2]),
        p(0.05 * a_in, 0.28 * b_in, cz + 22.0),
        p(-0.07 * a_in, 0.02 * b_in, cz + 40.0),
        p(-0.20 * a_in, -0.38 * b_in, cz + 24.0),
        p(-0.20 * a_in, -0.45 * b_in, cz),
        p(-0.20 * a_in, -0.45 * b_in, z_bottom),
    )
    contrast = bool(rng.random() < 0.5)
    blood_hu = float(u(170.0, 260.0)) if contrast else float(u(35.0, 50.0))
    spine_y = -(b - f) + 30.0
    rib_step = float(u(24.0, 28.0))
    rib_lo, rib_hi = lung_cz - lung_c + 10.0, lung_cz + lung_c
    rib_z = tuple(float(oz + z) for z in np.arange(rib_lo, rib_hi, rib_step))
    return ChestAnatomy(
        fov_xy=fov_xy,
        fov_z=fov_z,
        body_center=(ox, oy),
        body_semi=(a, b),
        fat=f,
        lungs=lungs,
        heart=heart,
        pericardium_mm=float(pericardium_mm),
        contrast=contrast,
        blood_hu=blood_hu,
        aorta=aorta,
        aorta_radius=aorta_radius,
        carina=carina,
        bronchi_ends=bronchi_ends,
        esophagus_xy=(ox - 0.08 * a_in, oy - 0.28 * b_in),
        spine_xy=(ox, oy + spine_y),
        spine_radius=17.0 * s,
        mediastinum=Ellipsoid(p(0.0, 0.1 * b_in, cz + 10.0), (0.22 * a_in, 0.55 * b_in, 70.0)),
        liver=Ellipsoid(
            p(0.35 * a_in, 0.05 * b_in, lung_cz - 0.85 * lung_c - 35.0), (0.62 * a_in, 0.78 * b_in, 80.0)
        ),
        sternum=Box(p(-13.0, b_in - 1.0, heart_center[2] - oz - 45.0), p(13.0, b_in + 9.0, cz + 60.0)),
        rib_z=rib_z,
    )


def draw_anatomy(canvas: Canvas, an: ChestAnatomy) -> None:
    """Paint the normal chest; fills the masks body, lungs, heart, aorta and spine."""
    z0, z1 = an.z_range[0] - 50.0, an.z_range[1] + 50.0
    (cx, cy), (a, b), f = an.body_center, an.body_semi, an.fat
    body = EllipticCylinder((cx, cy), (a, b), z0, z1)
    canvas.mark("body", canvas.fill(body.region(canvas), FAT))
    canvas.fill(EllipticCylinder((cx, cy), (a - f, b - f), z0, z1).region(canvas), MUSCLE)
    canvas.fill(an.liver.region(canvas), LIVER)
    for z in an.rib_z:
        rib = RibBand((cx, cy), (a - f - 2.0, b - f - 2.0), 9.0, z, 5.0, 22.0)
        canvas.fill(rib.region(canvas), 550.0)
    for lung in an.lungs.values():
        canvas.mark("lungs", canvas.fill(lung.region(canvas), LUNG))

    def solid(shape: Shape, hu: float, mask: str | None = None, finding: str | None = None) -> None:
        reg = canvas.fill(shape.region(canvas), hu)
        canvas.mark("lungs", reg, on=False)
        canvas.mark_finding(finding, reg)  # what is drawn over the pericardial fluid is no longer fluid
        if mask is not None:
            canvas.mark(mask, reg)

    solid(an.mediastinum, MEDIASTINAL_FAT)
    if an.pericardium_mm > 0:
        solid(Shell(an.heart, an.pericardium_mm), 10.0, finding="Pericardial effusion")
    solid(an.heart, MYOCARDIUM, "heart")
    solid(an.heart.scaled(0.72), an.blood_hu, "heart")
    for seg in an.aorta_segments():
        solid(seg, an.blood_hu, "aorta")
    ex, ey = an.esophagus_xy
    solid(Capsule((ex, ey, z0), (ex, ey, z1), 7.0), 35.0)
    for seg in an.airway_segments():
        solid(seg, AIR)
    # Spine: vertebral bodies with discs, posterior elements, spinal canal.
    sx, sy = an.spine_xy
    r = an.spine_radius
    solid(EllipticCylinder((sx, sy), (r, r), z0, z1), BONE_CORTICAL, "spine")
    canvas.fill(EllipticCylinder((sx, sy), (r - 4.0, r - 4.0), z0, z1).region(canvas), BONE_CANCELLOUS)
    for zd in np.arange(an.rib_z[0] - 13.0 if an.rib_z else z0, z1, 26.0):
        canvas.fill(
            Box((sx - r + 2, sy - r + 2, zd - 2.5), (sx + r - 2, sy + r - 2, zd + 2.5)).region(canvas), DISC
        )
    solid(Box((sx - 9.0, sy - r - 24.0, z0), (sx + 9.0, sy - r + 2.0, z1)), 600.0, "spine")
    canvas.fill(Capsule((sx, sy - r - 9.0, z0), (sx, sy - r - 9.0, z1), 6.0).region(canvas), CSF)
    solid(an.sternum, 450.0)


@dataclass(frozen=True)
class HeadAnatomy:
    """A small skull-like phantom (for the "no chest" volumes)."""

    fov_xy: float
    fov_z: float
    head: Ellipsoid
    skull_mm: float


def sample_head(rng: np.random.Generator) -> HeadAnatomy:
    semi = (float(rng.uniform(68.0, 76.0)), float(rng.uniform(85.0, 95.0)), float(rng.uniform(80.0, 90.0)))
    return HeadAnatomy(
        fov_xy=float(rng.uniform(230.0, 260.0)),
        fov_z=float(rng.uniform(170.0, 200.0)),
        head=Ellipsoid((0.0, 0.0, -10.0), semi),
        skull_mm=float(rng.uniform(6.0, 9.0)),
    )


def draw_head(canvas: Canvas, an: HeadAnatomy) -> None:
    """Paint a head: scalp, skull, brain, ventricles; masks body only."""
    canvas.mark("body", canvas.fill(an.head.region(canvas), 30.0))
    bone = an.head.grown(-3.0)
    canvas.fill(bone.region(canvas), 1000.0)
    brain = bone.grown(-an.skull_mm)
    canvas.fill(brain.region(canvas), 35.0)
    c = brain.center
    for dx in (-8.0, 8.0):
        canvas.fill(Ellipsoid((c[0] + dx, c[1] + 5.0, c[2] + 15.0), (5.0, 25.0, 12.0)).region(canvas), 5.0)
