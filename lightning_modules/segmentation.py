"""SegmentationModule: semantic segmentation fine-tuning of a Primus image encoder (COLIPRI Sec. 6.4,
App. C.6; docs/segmentation.md).

The network is the Primus segmentation architecture of dynamic-network-architectures: the
``model.image`` Primus encoder with Primus' own patch decoder (``up_projection``) to one logit per
class of the dataset (``lightning_modules/nets/primus_segmenter.py``). Its encoder starts from the
image encoder of any ``ctvlp fit`` checkpoint with a Primus (``segmentation.init_ckpt``: COLIPRI
family, MAE, CapPa) or from scratch (null); the decoder always starts fresh.

Loss: MONAI ``DiceCELoss``, nnU-Net's ``DC_and_CE_loss`` (weights 1 and 1): softmax, one-hot labels,
cross-entropy over every class, soft Dice over the foreground classes (nnU-Net's ``do_bg=False``) and
over the whole batch (its ``batch_dice``), smoothing 1e-5. Training patches come from
``datamodules/segmentation_datamodule.py`` (random crops, foreground oversampling).

Validation and test run on whole volumes with MONAI's ``sliding_window_inference`` (windows of
``data.crop_size``, Gaussian weighting, overlap ``segmentation.sw_overlap``); the argmax gives the
prediction, and the Dice of each foreground class per volume (MONAI ``compute_dice``; a class absent
from a volume's label map is left out of that volume's mean, as nnU-Net) is averaged over volumes:
``<split>/dice/<label>`` and their mean ``<split>/dice_mean`` (the model selection metric; also
``<split>/dice/mean``, the form results.json keeps). The first
``segmentation.log_images`` validation volumes go to TensorBoard as image | label | prediction.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from omegaconf import DictConfig

from ctvlp.config.checkpoint_file import load_checkpoint_file
from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import checkpoint_config
from datamodules.errors import DataRootError
from datamodules.segmentation_datamodule import SegmentationDataModule, class_names
from datamodules.sources.msd import read_dataset_json
from datamodules.transforms import as_size3
from lightning_modules.base import ObjectiveModule
from lightning_modules.nets.primus_encoder import set_activation_checkpointing
from lightning_modules.nets.primus_segmenter import (
    build_primus_segmenter,
    load_primus_encoder,
    primus_encoder_weights,
)

log = logging.getLogger(__name__)

# model.image keys that shape the encoder's tensors: the checkpoint's must be this run's.
ENCODER_SHAPE_KEYS = (
    "size",
    "patch_size",
    "layer_scale_init",
    "scale_attn_inner",
    "use_abs_pos_embed",
    "num_register_tokens",
)
# Distinct colours of foreground classes 1, 2, ... in the TensorBoard overlays.
PALETTE = (
    (1.0, 0.2, 0.2),
    (0.2, 1.0, 0.2),
    (0.3, 0.5, 1.0),
    (1.0, 1.0, 0.2),
    (1.0, 0.3, 1.0),
    (0.2, 1.0, 1.0),
)


def with_label_names(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``segmentation.labels`` filled from ``<data.root>/dataset.json`` when null, so
    the checkpoint names its output channels."""
    if config.get("segmentation", {}).get("labels") is not None:
        return config
    try:
        names = class_names(read_dataset_json(config["data"]["root"]).labels)
    except DataRootError as error:
        raise ConfigError(f"segmentation: the labels of data.root: {error}") from error
    config = copy.deepcopy(config)
    config.setdefault("segmentation", {})["labels"] = names
    return config


def initialise_encoder(network: torch.nn.Module, cfg: DictConfig) -> str:
    """Copy the Primus image encoder of ``segmentation.init_ckpt`` into ``network`` (null: leave it
    randomly initialised). Returns a line saying where the encoder came from."""
    path = cfg.segmentation.init_ckpt
    if path is None:
        log.warning(
            "segmentation.init_ckpt is null: the Primus encoder trains from scratch (random init); give a "
            "checkpoint of ctvlp fit (COLIPRI, MAE, CapPa) to fine-tune a pretrained encoder"
        )
        return "scratch (random init)"
    file = Path(str(path))
    if not file.is_file():
        raise ConfigError(
            f"segmentation.init_ckpt={path}: no such checkpoint file; give a ctvlp fit checkpoint "
            "(runs/<experiment>/version_<k>/checkpoints/last.ckpt) or null to train from scratch"
        )
    raw = load_checkpoint_file(file)
    saved = (raw.get("hyper_parameters") or {}).get("config") if isinstance(raw, dict) else None
    if saved is None or "state_dict" not in raw:
        raise ConfigError(f"segmentation.init_ckpt={path} is not a checkpoint written by ctvlp fit")
    source = checkpoint_config(saved)
    weights = primus_encoder_weights(raw["state_dict"])
    if source.model.image.arch != "primus" or not weights:
        raise ConfigError(
            f"segmentation.init_ckpt={path} is a '{source.module}' checkpoint without a Primus image encoder "
            f"(model.image.arch={source.model.image.arch}): use a COLIPRI, MAE or CapPa checkpoint "
            "(to continue a segmentation run, resume it instead)"
        )
    differ = {
        key: source.model.image[key]
        for key in ENCODER_SHAPE_KEYS
        if source.model.image[key] != cfg.model.image[key]
    }
    if differ:
        settings = " ".join(f"model.image.{key}={value}" for key, value in differ.items())
        raise ConfigError(
            f"segmentation.init_ckpt={path}: its encoder was built with other sizes than this run's; set {settings}"
        )
    if cfg.model.image.use_abs_pos_embed and as_size3(source.data.crop_size) != as_size3(cfg.data.crop_size):
        raise ConfigError(
            f"segmentation.init_ckpt={path} has a learned position embedding for crops of "
            f"{as_size3(source.data.crop_size)} voxels: set data.crop_size={list(as_size3(source.data.crop_size))}"
        )
    try:
        copied = load_primus_encoder(network, weights)
    except ValueError as error:
        raise ConfigError(f"segmentation.init_ckpt={path}: {error}") from error
    step = raw.get("global_step", "?")
    return f"{source.module} checkpoint {file} (step {step}, {len(copied)} encoder tensors)"


def per_class_dice(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K-1) Dice of each foreground class between two (B, 1, X, Y, Z) label maps; NaN where the
    class is absent from the label map."""
    return compute_dice(
        one_hot(prediction, num_classes),
        one_hot(label, num_classes),
        include_background=False,
        ignore_empty=True,
    )


def overlay_panel(image: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """(3, H, 3W) RGB in [0, 1]: an axial slice of the (X, Y, Z) volume, its label and the prediction
    over it. The slice: through the centre of the labelled foreground (the middle slice when there is
    none), displayed as ``callbacks/volume_preview.py`` does (anterior up, patient right on the left)."""
    foreground = torch.nonzero(label > 0)
    z = int(foreground[:, 2].float().mean()) if len(foreground) else label.shape[2] // 2

    def axial(volume: torch.Tensor) -> torch.Tensor:
        return volume[:, :, z].T.flip(0, 1)

    gray = ((axial(image.float()).clamp(-3, 3) + 3) / 6).expand(3, -1, -1)
    panels = [gray]
    for classes in (axial(label), axial(prediction)):
        panel = gray.clone()
        for value in range(1, int(max(label.max(), prediction.max())) + 1):
            colour = torch.tensor(PALETTE[(value - 1) % len(PALETTE)])[:, None]
            mask = classes == value
            panel[:, mask] = 0.5 * panel[:, mask] + 0.5 * colour
        panels.append(panel)
    return torch.cat(panels, dim=2)


class SegmentationModule(ObjectiveModule):
    best_metric = "val/dice_mean"
    best_mode = "max"
    evaluation_tasks: tuple[str, ...] = ()  # scored by its own Dice

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(with_label_names(config))
        image = self.cfg.model.image
        self.label_names = [str(name) for name in self.cfg.segmentation.labels]
        self.crop = as_size3(self.cfg.data.crop_size)
        self.network = build_primus_segmenter(
            str(image.size),
            self.crop,
            len(self.label_names),
            int(image.patch_size),
            drop_path=float(image.drop_path),
            layer_scale_init=image.layer_scale_init,
            scale_attn_inner=bool(image.scale_attn_inner),
            use_abs_pos_embed=bool(image.use_abs_pos_embed),
            num_register_tokens=int(image.num_register_tokens),
        )
        self.encoder_source = initialise_encoder(self.network, self.cfg)
        log.info("Segmentation of %s; encoder: %s", self.label_names, self.encoder_source)
        if image.activation_checkpointing:
            set_activation_checkpointing(self.network, True)
        if image.compile:
            self.network.compile()
        self.loss = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
        )
        self._dice: list[torch.Tensor] = []
        self._index: list[torch.Tensor] = []

    @classmethod
    def build_datamodule(cls, cfg: DictConfig) -> L.LightningDataModule:
        labels = cfg.segmentation.labels
        return SegmentationDataModule(
            cfg.data,
            int(cfg.seed),
            float(cfg.segmentation.foreground_oversample),
            None if labels is None else [str(name) for name in labels],
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) crops of ``data.crop_size`` -> (B, K, X, Y, Z) logits."""
        return self.network(images)

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 1, X, Y, Z) whole volume -> (1, K, X, Y, Z) logits, by Gaussian-weighted sliding windows."""
        seg = self.cfg.segmentation
        return sliding_window_inference(
            image,
            roi_size=self.crop,
            sw_batch_size=int(seg.sw_batch_size),
            predictor=self.network,
            overlap=float(seg.sw_overlap),
            mode="gaussian",
        )

    # ---------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.guard_loss(self.loss(logits.float(), batch["label"]))
        size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/foreground_centred", batch["foreground_centred"].float().mean(), batch_size=size)
        return loss

    # -------------------------------------------------------------------------- evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    def _evaluation_step(self, batch: dict[str, Any], batch_idx: int, split: str) -> None:
        prediction = self.predict_volume(batch["image"]).argmax(dim=1, keepdim=True)
        self._dice.append(per_class_dice(prediction, batch["label"], len(self.label_names)).float())
        self._index.append(batch["index"])
        if split == "val" and batch_idx < int(self.cfg.segmentation.log_images):
            self._log_overlay(batch, prediction, batch_idx)

    def _log_overlay(self, batch: dict[str, Any], prediction: torch.Tensor, batch_idx: int) -> None:
        logger = self.logger
        if not isinstance(logger, TensorBoardLogger) or self.global_rank != 0 or self.trainer.sanity_checking:
            return
        panel = overlay_panel(batch["image"][0, 0].cpu(), batch["label"][0, 0].cpu(), prediction[0, 0].cpu())
        logger.experiment.add_image(
            f"segmentation/{batch_idx}_{batch['image_id'][0]}", panel, self.global_step
        )

    def on_validation_epoch_end(self) -> None:
        self._log_dice("val")

    def on_test_epoch_end(self) -> None:
        self._log_dice("test")

    def _log_dice(self, split: str) -> None:
        dice, index, self._dice, self._index = self._dice, self._index, [], []
        if not dice:
            return
        gathered = self.gather_once_per_volume({"dice": torch.cat(dice), "index": torch.cat(index)})
        per_class = torch.nanmean(gathered["dice"], dim=0)
        for name, value in zip(self.label_names[1:], per_class, strict=True):
            self.log(f"{split}/dice/{name}", value)
        mean = torch.nanmean(per_class)
        self.log(f"{split}/dice_mean", mean)
        self.log(f"{split}/dice/mean", mean)  # the same, as <split>/<task>/<metric> for results.json
