"""Logs Grad-CAM heat maps of a few validation volumes to TensorBoard at the end of every validation
(GreenRFM paper, Fig. 5): where in the volume the image embedding agrees with a finding's prompt.

For each of the first ``num_volumes`` validation volumes (centre crop) one prompt is explained:
"There is {label}." for the first label that is positive in that volume (lower-cased), else the
first label. The module computes the map (``grad_cam(images, prompt)``: (B, X, Y, Z) in [0, 1], e.g.
``evaluation.grad_cam.similarity_grad_cam``); this callback only renders and logs it, as three planes
through the map's maximum under ``gradcam/<i>_<id>/<view>`` (``view``: axial, coronal, sagittal) and
the prompt as text under ``gradcam/<i>_<id>/prompt``.

Only global rank 0 computes and logs: the maps need a backward pass through the module's own image
encoder (not the distributed wrapper), so no collective runs; a sharded (FSDP) model is not
supported. :func:`overlay_planes` is the one renderer, shared with ``ctvlp explain``'s PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib import colormaps

from callbacks.volume_preview import orthogonal_slices

TAG_PREFIX = "gradcam"
VIEWS = ("axial", "coronal", "sagittal")
PROMPT_TEMPLATE = "There is {label}."


class GradCamExplainer(Protocol):
    """What the callback needs of a module (GreenRFMModule has it)."""

    label_names: list[str]

    def grad_cam(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        """(B, 1, X, Y, Z) volumes -> (B, X, Y, Z) Grad-CAM maps in [0, 1] for ``prompt``."""
        ...


def finding_prompt(labels: torch.Tensor | Sequence[float], label_names: Sequence[str]) -> str:
    """ "There is {label}." for the first positive label (NaN = unknown), else for the first label."""
    if not label_names:
        raise ValueError("the module has no label names to build a prompt from")
    values = [float(v) for v in labels]
    positive = next((i for i, v in enumerate(values) if not math.isnan(v) and v > 0.5), 0)
    return PROMPT_TEMPLATE.format(label=label_names[positive].lower())


def peak_voxel(heat: torch.Tensor) -> tuple[int, int, int]:
    """(x, y, z) index of the maximum of an (X, Y, Z) map (the first one on ties)."""
    flat = int(torch.argmax(heat.detach().float().flatten()))
    x, y, z = np.unravel_index(flat, tuple(heat.shape))
    return int(x), int(y), int(z)


def _plane(volume: torch.Tensor, view: str, index: int) -> torch.Tensor:
    """One plane of an (X, Y, Z) volume in [-1, 1] through ``index`` as (H, W) in [0, 1], oriented as
    ``callbacks.volume_preview.orthogonal_slices`` displays it (a one-voxel slab is passed to it, so
    its middle slice is the requested one)."""
    axis = VIEWS.index(view)  # axial: z, coronal: y, sagittal: x
    slab = volume.narrow(2 - axis, index, 1)
    return orthogonal_slices(slab)[view][0]


def overlay_planes(
    volume: torch.Tensor,
    heat: torch.Tensor,
    point: tuple[int, int, int] | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> dict[str, torch.Tensor]:
    """Axial, coronal and sagittal planes of a heat map over its volume, as (3, H, W) RGB in [0, 1].

    Args:
        volume: (X, Y, Z) RAS+ model input in [-1, 1] (shown in grey, as the model sees it).
        heat: (X, Y, Z) map in [0, 1] on the same grid.
        point: the (x, y, z) voxel the planes pass through; default: the map's maximum.
        alpha: opacity of the colour where the map is 1; it scales with the map, so where the map
            is 0 the grey image shows unchanged.
        cmap: a matplotlib colormap name.

    Orientation: radiological, as ``orthogonal_slices`` (patient right on the viewer's left,
    anterior up in axial, superior up in coronal and sagittal).
    """
    if volume.shape != heat.shape or volume.dim() != 3:
        raise ValueError(
            f"volume and heat must be (X, Y, Z) of one shape, got {tuple(volume.shape)}, {tuple(heat.shape)}"
        )
    volume = volume.detach().float().cpu()
    heat = heat.detach().float().cpu().clamp(0, 1)
    point = peak_voxel(heat) if point is None else point
    colours = colormaps[cmap]
    planes = {}
    for view in VIEWS:
        index = point[2 - VIEWS.index(view)]
        grey = _plane(volume, view, index)
        weight = _plane(heat * 2 - 1, view, index)  # orthogonal_slices maps [-1, 1] to [0, 1]
        colour = torch.from_numpy(colours(weight.numpy())[..., :3]).float().permute(2, 0, 1)
        opacity = alpha * weight[None]
        planes[view] = ((1 - opacity) * grey[None] + opacity * colour).clamp(0, 1)
    return planes


class GradCamImagesCallback(L.Callback):
    def __init__(self, num_volumes: int = 2, alpha: float = 0.5) -> None:
        self.num_volumes = num_volumes
        self.alpha = alpha

    def render(self, trainer: L.Trainer, pl_module: GradCamExplainer) -> list[tuple[str, str, dict]]:
        """``(tag, prompt, planes)`` per logged volume."""
        datamodule = getattr(trainer, "datamodule", None)
        datasets = getattr(datamodule, "datasets", None) or {}
        dataset = datasets.get("val")
        if dataset is None:
            return []
        device = getattr(pl_module, "device", torch.device("cpu"))
        rendered = []
        for i in range(min(self.num_volumes, len(dataset))):
            sample = dataset[i]
            prompt = finding_prompt(sample["labels"], pl_module.label_names)
            with torch.inference_mode(False):  # validation hooks run under inference mode
                heat = pl_module.grad_cam(sample["image"][None].to(device), prompt)[0]
            planes = overlay_planes(sample["image"][0], heat, alpha=self.alpha)
            rendered.append((f"{TAG_PREFIX}/{i}_{sample['image_id']}", prompt, planes))
        return rendered

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if (
            not isinstance(logger, TensorBoardLogger)
            or trainer.sanity_checking
            or self.num_volumes <= 0
            or not trainer.is_global_zero
        ):
            return
        for tag, prompt, planes in self.render(trainer, pl_module):  # type: ignore[arg-type]
            for view, image in planes.items():
                logger.experiment.add_image(f"{tag}/{view}", image, trainer.global_step)
            logger.experiment.add_text(f"{tag}/prompt", prompt, trainer.global_step)
