"""MAEModule: vision-only masked-autoencoder pretraining of the image encoder (COLIPRI's dense baseline).

The Primus encoder sees only the visible patches of each volume; the MAE decoder reconstructs the
masked ones (``objectives.mae``: ratio, mask style, decoder depth/width, ``norm_pix``; parts in
``lightning_modules/nets/mae_head.py``). Every training batch is used, whatever its kind: image-only
volumes (NLST-style sources in ``data.sources``) and the volumes of paired sources, their reports
unused. ``objectives.mae.enabled``, ``weight`` and the scheduling keys only matter beside CLIP.

With ``objectives.mae.cross_view.enabled`` (RadFound's CC-MIM, experiment ``radfound_ccmim``) every
sample brings a second crop of its volume; both views are masked and reconstructed and the loss is
``L_MAE`` (mean over the two views) ``+ cross_view.weight * L_InfoNCE`` between the views' pooled
visible tokens (``train/loss_mae``, ``train/loss_cross_view``; ``<split>/mae/cross_view_loss``).

Validation and test log the masked-patch loss with fixed masks and the mean-predictor reference
(``<split>/mae/loss``, ``<split>/mae/loss_mean_predictor``; the first picks the best checkpoint).
The projector and pooler of the image encoder are built (checkpoints keep the encoder layout of
the other objectives) but frozen: MAE never reaches them. There are no text embeddings, so no
periodic retrieval / zero-shot evaluation.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from callbacks.mae_reconstruction import MAEReconstructionCallback
from ctvlp.config.evaluation_tasks import IMAGE_ONLY_TASKS
from datamodules.batching import IMAGE_ONLY, SECOND_VIEW
from lightning_modules import mae_objective
from lightning_modules.base import ObjectiveModule, image_encoder_from_config


class MAEModule(mae_objective.MAEReconstructions, ObjectiveModule):
    best_metric = "val/mae/loss"
    best_mode = "min"
    evaluation_tasks = IMAGE_ONLY_TASKS  # no text encoder: the probe grid only

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.cfg
        self.image_encoder = image_encoder_from_config(cfg)
        self.image_encoder.projector.requires_grad_(False)
        self.image_encoder.pooler.requires_grad_(False)
        self.mae_head = mae_objective.build_head(cfg, self.image_encoder)
        self.cross_view_head = mae_objective.build_cross_view_head(cfg, self.image_encoder)
        self.cross_view_weight = float(cfg.objectives.mae.cross_view.weight)

    @classmethod
    def build_datamodule(cls, cfg: DictConfig) -> L.LightningDataModule:
        """The base DataModule, with each volume's second crop for the cross-view term."""
        return mae_objective.with_second_view(super().build_datamodule(cfg), cfg)

    @classmethod
    def rrg_active(cls, cfg: DictConfig) -> bool:
        return False

    def configure_callbacks(self) -> list[L.Callback]:
        """The periodic probes, plus reconstructions at every validation."""
        return [
            *super().configure_callbacks(),
            MAEReconstructionCallback(int(self.cfg.objectives.mae.log_volumes)),
        ]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images).pooled

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = mae_objective.training_losses(self.mae_head, self.cross_view_head, self.image_encoder, batch)
        loss = losses["mae"] + self.cross_view_weight * losses.get("cross_view", 0.0)
        self.guard_loss(loss)
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        self.log("train/image_only_batch", float(batch["kind"][0] == IMAGE_ONLY), batch_size=batch_size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_evaluation("val", batch, batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_evaluation("test", batch, batch_idx)

    def _log_evaluation(self, prefix: str, batch: dict[str, Any], batch_idx: int) -> None:
        mae_objective.log_evaluation(
            self,
            prefix,
            self.mae_head,
            self.image_encoder,
            batch["image"],
            batch_idx,
            self.cross_view_head,
            batch.get(SECOND_VIEW),
        )
