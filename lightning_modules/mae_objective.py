"""The MAE objective as the modules use it: the head from ``objectives.mae`` and its evaluation.

The parts are ``nets.mae_head`` (decoder, loss), ``nets.mae_masking`` and
``nets.primus_patch_drop``; when MAE trains beside CLIP is ``objective_schedule``'s business.
This file only reads the config and holds what ``MAEModule`` (vision-only) and
``ColipriModule`` (COLIPRI-CM/CRM) share:

- **The head** reads the Primus tokens (``model.image`` width) of ``data.crop_size`` inputs.
- **Evaluation** scores the masked patches with masks that are the same at every validation
  (drawn from ``(seed, batch index)``), so validation losses are comparable across steps, and
  logs beside it the loss of the mean predictor (each masked voxel predicted as the mean of the
  sample's visible voxels): ``<split>/mae/loss`` and ``<split>/mae/loss_mean_predictor``.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.transforms import as_size3
from lightning_modules.nets.image_encoder import ImageEncoder
from lightning_modules.nets.mae_head import MAEHead, MAEOutput, mean_predictor_loss

# Mixed into the validation mask seed so it is independent of other (seed, index) streams.
_MASK_STREAM = 0x4D4145  # "MAE"


def mae_enabled(cfg: DictConfig) -> bool:
    return bool(OmegaConf.select(cfg, "objectives.mae.enabled", default=False))


def build_head(cfg: DictConfig, encoder: ImageEncoder) -> MAEHead:
    """The MAE head of ``objectives.mae`` for ``encoder``'s Primus at ``data.crop_size``."""
    mae = cfg.objectives.mae
    if int(mae.decoder_width) % int(mae.decoder_heads):
        raise ValueError(
            f"objectives.mae.decoder_width={mae.decoder_width} must be divisible by "
            f"objectives.mae.decoder_heads={mae.decoder_heads}"
        )
    crop = as_size3(cfg.data.crop_size)  # (x, y, z); the patch grid is per axis
    patch = encoder.patch_size
    return MAEHead(
        encoder_dim=encoder.embed_dim,
        grid=tuple(c // p for c, p in zip(crop, patch, strict=True)),
        patch_size=patch,
        in_channels=1,
        ratio=float(mae.ratio),
        style=str(mae.style),
        dim=int(mae.decoder_width),
        depth=int(mae.decoder_depth),
        heads=int(mae.decoder_heads),
        mlp_ratio=float(mae.decoder_mlp_ratio),
        norm_pix=bool(mae.norm_pix),
    )


def evaluation_output(
    head: MAEHead, encoder: ImageEncoder, images: torch.Tensor, seed: int, index: int
) -> MAEOutput:
    """The head's output on ``images`` with the fixed evaluation masks of batch ``index``."""
    mask_seed = int(np.random.default_rng([seed, _MASK_STREAM, index]).integers(2**62))
    generator = torch.Generator().manual_seed(mask_seed)
    mask = head.sample_mask(images.shape[0], images.device, generator)
    return head(encoder.backbone, images, mask=mask)


def log_evaluation(
    module: L.LightningModule,
    prefix: str,
    head: MAEHead,
    encoder: ImageEncoder,
    images: torch.Tensor,
    index: int,
) -> MAEOutput:
    """Log ``<prefix>/mae/loss`` and ``<prefix>/mae/loss_mean_predictor`` of one evaluation batch."""
    output = evaluation_output(head, encoder, images, int(module.hparams["config"]["seed"]), index)
    batch_size = images.shape[0]
    module.log(f"{prefix}/mae/loss", output.loss, batch_size=batch_size, sync_dist=True)
    baseline = mean_predictor_loss(output.target, output.mask.masked)
    module.log(f"{prefix}/mae/loss_mean_predictor", baseline, batch_size=batch_size, sync_dist=True)
    return output


class MAEReconstructions:
    """Mixin for modules with an MAE head (``mae_head``, ``image_encoder``): the reconstructions
    that ``callbacks.mae_reconstruction.MAEReconstructionCallback`` shows."""

    def mae_reconstruction(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, reconstruction) of ``images`` under the fixed masks of evaluation batch 0."""
        output = evaluation_output(self.mae_head, self.image_encoder, images, int(self.cfg.seed), index=0)
        return self.mae_head.reconstruction(images, output)
