"""Logs a few preprocessed input volumes to TensorBoard as axial, coronal and sagittal slices,
once per run, so a user sees exactly what the model sees (orientation and HU bugs show here)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


def orthogonal_slices(volume: torch.Tensor) -> dict[str, torch.Tensor]:
    """Middle slices of a (X, Y, Z) RAS+ volume in [-1, 1], as (1, H, W) images in [0, 1],
    displayed radiologically: anterior up for axial, superior up for coronal/sagittal."""
    x, y, z = (s // 2 for s in volume.shape)
    image = (volume.float().clamp(-1, 1) + 1) / 2
    # RAS+: +x is patient right, +y anterior, +z superior. Radiological display puts the
    # patient's right on the viewer's left.
    axial = image[:, :, z].T.flip(0, 1)  # anterior at the top
    coronal = image[:, y, :].T.flip(0, 1)  # superior at the top
    sagittal = image[x, :, :].T.flip(0)  # superior at the top, anterior on the right
    return {"axial": axial[None], "coronal": coronal[None], "sagittal": sagittal[None]}


class VolumePreviewCallback(L.Callback):
    def __init__(self, num_volumes: int = 3) -> None:
        self.num_volumes = num_volumes

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if not isinstance(logger, TensorBoardLogger) or trainer.global_rank != 0 or self.num_volumes <= 0:
            return
        dataset = trainer.datamodule.datasets["val"]
        for i in range(min(self.num_volumes, len(dataset))):
            sample = dataset[i]
            for view, image in orthogonal_slices(sample["image"][0]).items():
                logger.experiment.add_image(
                    f"inputs/{i}_{sample['image_id']}/{view}", image, trainer.global_step
                )
