"""The MAE objective as the modules use it: the head from ``objectives.mae`` and its evaluation.

The parts are ``nets.mae_head`` (decoder, loss), ``nets.mae_masking`` and
``nets.primus_patch_drop``; when MAE trains beside CLIP is ``objective_schedule``'s business.
This file only reads the config and holds what ``MAEModule`` (vision-only) and
``ColipriModule`` (COLIPRI-CM/CRM) share:

- **The head** reads the Primus tokens (``model.image`` width) of ``data.crop_size`` inputs.
- **Training losses** (:func:`training_losses`): the masked-patch loss, and with RadFound's
  CC-MIM (``objectives.mae.cross_view``) the MAE loss of both views of each volume (their mean)
  and the InfoNCE between the two views' embeddings (``nets.cross_view_head``).
- **Evaluation** scores the masked patches with masks that are the same at every validation
  (drawn from ``(seed, batch index)``), so validation losses are comparable across steps, and
  logs beside it the loss of the mean predictor (each masked voxel predicted as the mean of the
  sample's visible voxels): ``<split>/mae/loss`` and ``<split>/mae/loss_mean_predictor``; with
  the cross-view term also ``<split>/mae/cross_view_loss`` between the first view and the fixed
  second view of each volume, masked with a second set of fixed masks.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.batching import SECOND_VIEW
from datamodules.transforms import as_size3
from lightning_modules.nets.cross_view_head import CrossViewHead
from lightning_modules.nets.image_encoder import ImageEncoder
from lightning_modules.nets.mae_head import MAEHead, MAEOutput, mean_predictor_loss

# Mixed into the validation mask seed so it is independent of other (seed, index) streams.
_MASK_STREAM = 0x4D4145  # "MAE"
# The second view's evaluation masks: another stream, so the two views are masked differently.
_SECOND_VIEW_MASK_STREAM = 0x4D414532  # "MAE2"


def mae_enabled(cfg: DictConfig) -> bool:
    return bool(OmegaConf.select(cfg, "objectives.mae.enabled", default=False))


def cross_view_enabled(cfg: DictConfig) -> bool:
    return bool(OmegaConf.select(cfg, "objectives.mae.cross_view.enabled", default=False))


def build_cross_view_head(cfg: DictConfig, encoder: ImageEncoder) -> CrossViewHead | None:
    """RadFound's cross-view head of ``objectives.mae.cross_view`` (None when it is off)."""
    if not cross_view_enabled(cfg):
        return None
    cross_view = cfg.objectives.mae.cross_view
    return CrossViewHead(
        encoder.embed_dim,
        proj_dim=int(cross_view.proj_dim),
        temperature=float(cross_view.temperature),
        learn_temperature=bool(cross_view.learn_temperature),
    )


def with_second_view(datamodule: L.LightningDataModule, cfg: DictConfig) -> L.LightningDataModule:
    """``datamodule`` serving each volume's second crop when the cross-view term is on."""
    datamodule.second_view = cross_view_enabled(cfg)
    return datamodule


def training_losses(
    head: MAEHead, cross_view: CrossViewHead | None, encoder: ImageEncoder, batch: dict
) -> dict[str, torch.Tensor]:
    """``{"mae": ...}`` of a training batch, with freshly drawn masks. With ``cross_view``: the
    MAE loss averaged over the batch's two views and ``"cross_view"``, their InfoNCE."""
    first = head(encoder.backbone, batch["image"])
    if cross_view is None:
        return {"mae": first.loss}
    second = head(encoder.backbone, batch[SECOND_VIEW])
    return {
        "mae": 0.5 * (first.loss + second.loss),
        "cross_view": cross_view(first.visible, second.visible),
    }


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
    head: MAEHead,
    encoder: ImageEncoder,
    images: torch.Tensor,
    seed: int,
    index: int,
    stream: int = _MASK_STREAM,
) -> MAEOutput:
    """The head's output on ``images`` with the fixed evaluation masks of batch ``index``."""
    mask_seed = int(np.random.default_rng([seed, stream, index]).integers(2**62))
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
    cross_view: CrossViewHead | None = None,
    second_view: torch.Tensor | None = None,
) -> MAEOutput:
    """Log ``<prefix>/mae/loss`` and ``<prefix>/mae/loss_mean_predictor`` of one evaluation batch,
    and with ``cross_view`` ``<prefix>/mae/cross_view_loss`` against the batch's ``second_view``."""
    seed = int(module.hparams["config"]["seed"])
    output = evaluation_output(head, encoder, images, seed, index)
    batch_size = images.shape[0]
    module.log(f"{prefix}/mae/loss", output.loss, batch_size=batch_size, sync_dist=True)
    baseline = mean_predictor_loss(output.target, output.mask.masked)
    module.log(f"{prefix}/mae/loss_mean_predictor", baseline, batch_size=batch_size, sync_dist=True)
    if cross_view is not None and second_view is not None:
        other = evaluation_output(head, encoder, second_view, seed, index, _SECOND_VIEW_MASK_STREAM)
        loss = cross_view(output.visible, other.visible)
        module.log(f"{prefix}/mae/cross_view_loss", loss, batch_size=batch_size, sync_dist=True)
    return output


class MAEReconstructions:
    """Mixin for modules with an MAE head (``mae_head``, ``image_encoder``): the reconstructions
    that ``callbacks.mae_reconstruction.MAEReconstructionCallback`` shows."""

    def mae_reconstruction(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, reconstruction) of ``images`` under the fixed masks of evaluation batch 0."""
        output = evaluation_output(self.mae_head, self.image_encoder, images, int(self.cfg.seed), index=0)
        return self.mae_head.reconstruction(images, output)
