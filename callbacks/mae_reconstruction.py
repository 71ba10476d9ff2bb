"""TensorBoard images of MAE reconstructions at every validation.

For the first ``num_volumes`` validation volumes (centre crops, the fixed evaluation masks of
``lightning_modules/mae_objective.py``), each of the axial, coronal and sagittal middle slices is
logged as one image of three panels, left to right: the input, the masked input (masked patches
at the minimum intensity) and the reconstruction (visible patches as they were, masked patches as
predicted). Tags: ``mae/<i>_<image id>/<view>``. The callback knows no module class: modules with
an MAE head (MAEModule; ColipriModule with ``objectives.mae.enabled``) add it and reconstruct
(``MAEReconstructor.mae_reconstruction``).
"""

from __future__ import annotations

from typing import Protocol

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.volume_preview import orthogonal_slices

SEPARATOR_WIDTH = 1


def triptych(volumes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per view, the middle slices of the (X, Y, Z) ``volumes`` side by side, as (1, H, W) images
    in [0, 1] with a white column between panels."""
    views: dict[str, list[torch.Tensor]] = {}
    for volume in volumes:
        for view, image in orthogonal_slices(volume).items():
            views.setdefault(view, []).append(image)
    out = {}
    for view, images in views.items():
        separator = torch.ones(1, images[0].shape[1], SEPARATOR_WIDTH)
        panels = [images[0]]
        for image in images[1:]:
            panels += [separator, image]
        out[view] = torch.cat(panels, dim=-1)
    return out


class MAEReconstructor(Protocol):
    def mae_reconstruction(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, reconstruction) of ``images`` under the fixed evaluation masks."""
        ...


class MAEReconstructionCallback(L.Callback):
    def __init__(self, num_volumes: int = 2) -> None:
        self.num_volumes = num_volumes

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: MAEReconstructor) -> None:
        logger = trainer.logger
        if (
            not isinstance(logger, TensorBoardLogger)
            or trainer.global_rank != 0
            or self.num_volumes <= 0
            or trainer.sanity_checking
        ):
            return
        dataset = trainer.datamodule.datasets["val"]
        count = min(self.num_volumes, len(dataset))
        samples = [dataset[i] for i in range(count)]
        images = torch.stack([s["image"] for s in samples]).to(pl_module.device)
        with torch.no_grad():
            masked, reconstruction = pl_module.mae_reconstruction(images)
        for i, sample in enumerate(samples):
            volumes = [images[i, 0].cpu(), masked[i, 0].cpu(), reconstruction[i, 0].float().cpu()]
            for view, image in triptych(volumes).items():
                logger.experiment.add_image(
                    f"mae/{i}_{sample['image_id']}/{view}", image, trainer.global_step
                )
