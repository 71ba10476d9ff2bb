"""A phantom case (anatomy + findings) and its rendering to a HU volume on a given grid.

A case is sampled once per acquisition (scan) and rendered once per reconstruction, so all
reconstructions of a scan show the same anatomy and findings on different voxel grids.
Rendering is deterministic given the case, the grid and the noise generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from datamodules.phantom.anatomy import (
    ChestAnatomy,
    Habitus,
    HeadAnatomy,
    draw_anatomy,
    draw_head,
    sample_anatomy,
    sample_head,
)
from datamodules.phantom.findings import (
    Finding,
    draw_findings,
    heart_geometry,
    place_findings,
    sample_presence,
)
from datamodules.phantom.geometry import Canvas, Grid

HU_MIN, HU_MAX = -1024.0, 3071.0
ORGANS = ("body", "lungs", "heart", "aorta", "spine")


@dataclass
class ChestCase:
    anatomy: ChestAnatomy
    findings: list[Finding] = field(default_factory=list)

    @property
    def labels(self) -> set[str]:
        return {f.label for f in self.findings}


@dataclass
class HeadCase:
    anatomy: HeadAnatomy
    findings: list[Finding] = field(default_factory=list)

    @property
    def labels(self) -> set[str]:
        return set()


Case = ChestCase | HeadCase


@dataclass
class Rendered:
    """HU volume (float32, canonical RAS+ axis order, see :mod:`geometry`), organ masks, and the
    masks of the findings drawn with a spatial extent (label -> voxels that show it)."""

    hu: np.ndarray
    masks: dict[str, np.ndarray]
    findings: dict[str, np.ndarray] = field(default_factory=dict)


def sample_chest_case(rng: np.random.Generator, habitus: Habitus) -> ChestCase:
    want = sample_presence(rng)
    scale, peri = heart_geometry(want)
    anatomy = sample_anatomy(rng, habitus, heart_scale=scale, pericardium_mm=peri)
    return ChestCase(anatomy, place_findings(rng, anatomy, want))


def sample_head_case(rng: np.random.Generator) -> HeadCase:
    return HeadCase(sample_head(rng))


def field_of_view(case: Case) -> tuple[float, float]:
    """(in-plane, z) field of view in mm."""
    return case.anatomy.fov_xy, case.anatomy.fov_z


def render(case: Case, grid: Grid, rng: np.random.Generator, noise_hu: float = 12.0) -> Rendered:
    """Draw ``case`` on ``grid``, add Gaussian noise, clip to the CT range."""
    canvas = Canvas(grid, background=-1000.0)
    if isinstance(case, ChestCase):
        draw_anatomy(canvas, case.anatomy)
        draw_findings(canvas, case.findings)
        masks = {name: canvas.mask(name) for name in ORGANS}
        findings = {label: m for label, m in canvas.finding_masks().items() if m.any()}
    else:
        draw_head(canvas, case.anatomy)
        masks = {"body": canvas.mask("body")}
        findings = {}
    hu = canvas.hu
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return Rendered(hu, masks, findings)
