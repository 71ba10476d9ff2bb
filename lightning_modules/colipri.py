"""ColipriModule: the COLIPRI CLIP recipe (image encoder + text encoder + CLIP loss).

With ``objectives.rrg.enabled`` (COLIPRI-CR) a CapPa decoder reads the image tokens before
pooling and the loss is ``L_CLIP + objectives.rrg.weight * L_RRG`` (``lightning_modules/rrg.py``).

With ``objectives.mae.enabled`` (COLIPRI-CM, with RRG COLIPRI-CRM) an MAE head reads the Primus
tokens of the visible patches (``lightning_modules/mae_objective.py``). Which objectives train on
a step, which batch kind the step draws and the LR factor come from one place,
``lightning_modules/objective_schedule.py``; the module asks it once per step and logs the answer
(``train/objective/*``) beside every loss (``train/loss_clip``, ``train/loss_rrg``, ``train/loss_mae``).
With ``objectives.mae.cross_view.enabled`` (RadFound's CC-MIM) an MAE step reconstructs two crops of
each volume and adds ``cross_view.weight`` times their InfoNCE (``train/loss_cross_view``).

Thin by design: the parts live in ``lightning_modules/nets``; this file composes them,
logs, and evaluates retrieval on the embeddings of a whole split.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from callbacks.mae_reconstruction import MAEReconstructionCallback
from callbacks.report_samples import ReportSamplesCallback
from datamodules.batching import IMAGE_ONLY, SECOND_VIEW
from datamodules.mixing import data_sources
from datamodules.report_classifier import labeller_from_config
from evaluation.retrieval import retrieval_metrics
from lightning_modules import mae_objective, rrg
from lightning_modules.base import ObjectiveModule, image_encoder_from_config
from lightning_modules.nets.clip_loss import ClipLoss
from lightning_modules.nets.image_encoder import ImageOutput
from lightning_modules.nets.text_encoder import TextEncoder
from lightning_modules.objective_schedule import ObjectiveSchedule, with_objective_lr
from lightning_modules.optim import param_groups_with_lrs
from lightning_modules.window_means import WindowMeans


class ColipriModule(rrg.ReportSamples, mae_objective.MAEReconstructions, ObjectiveModule):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.cfg
        self.image_encoder = image_encoder_from_config(cfg)
        self.text_encoder = TextEncoder(
            cfg.model.text.name_or_path,
            proj_dim=int(cfg.model.proj_dim),
            pool_heads=int(cfg.model.pool_heads),
            freeze_backbone=bool(cfg.model.text.freeze),
            frozen_cache_mb=float(cfg.model.text.frozen_cache_mb),
        )
        self.clip_loss = ClipLoss(
            kind=cfg.loss.kind,
            init_temperature=float(cfg.loss.init_temperature),
            learn_temperature=bool(cfg.loss.learn_temperature),
        )
        # COLIPRI-CR: the CapPa decoder on the projected image tokens (before pooling).
        self.rrg_targets = rrg.target_builder(cfg) if self.rrg_active(cfg) else None
        self.rrg_head = (
            rrg.build_head(cfg, self.rrg_targets, int(cfg.model.proj_dim))
            if self.rrg_targets is not None
            else None
        )
        # COLIPRI-CM/CRM: the MAE head, and the schedule that alternates it with CLIP (+ RRG).
        self.objective_schedule = ObjectiveSchedule.from_config(cfg)
        self.mae_head = (
            mae_objective.build_head(cfg, self.image_encoder) if mae_objective.mae_enabled(cfg) else None
        )
        self.cross_view_head = (
            mae_objective.build_cross_view_head(cfg, self.image_encoder)
            if self.mae_head is not None
            else None
        )
        self.loss_weights = {
            "clip": 1.0,
            "rrg": float(cfg.objectives.rrg.weight),
            "mae": float(cfg.objectives.mae.weight) if self.mae_head is not None else 0.0,
            "cross_view": float(cfg.objectives.mae.cross_view.weight),
        }
        self._window_means = WindowMeans()
        self._eval_embeddings: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "index": []}

    @classmethod
    def build_datamodule(cls, cfg: DictConfig) -> L.LightningDataModule:
        """The base DataModule, drawing each step's batch kind from the objective schedule."""
        schedule = ObjectiveSchedule.from_config(cfg)
        image_only = [s.name for s in data_sources(cfg.data) if s.kind == IMAGE_ONLY]
        if image_only and not schedule.mae_enabled:
            raise ValueError(
                f"data.sources has image-only sources ({', '.join(image_only)}), which only the MAE "
                "objective trains on: set objectives.mae.enabled=true or remove them"
            )
        datamodule = mae_objective.with_second_view(super().build_datamodule(cfg), cfg)
        datamodule.kind_plan = schedule.batch_kind
        return datamodule

    def configure_callbacks(self) -> list[L.Callback]:
        """The periodic evaluation, plus report samples with RRG and reconstructions with MAE."""
        callbacks = super().configure_callbacks()
        if self.rrg_head is not None:
            callbacks.append(
                ReportSamplesCallback(
                    int(self.cfg.objectives.rrg.log_reports), labeller_from_config(self.cfg)
                )
            )
        if self.mae_head is not None:
            callbacks.append(MAEReconstructionCallback(int(self.cfg.objectives.mae.log_volumes)))
        return callbacks

    def optimizer_groups(self) -> list[dict[str, Any]] | None:
        """The MAE decoder at ``objectives.mae.decoder_lr_factor`` times ``optim.lr``."""
        factor = float(self.cfg.objectives.mae.decoder_lr_factor)
        if self.mae_head is None or factor == 1.0:
            return None
        optim = self.cfg.optim
        lr = float(optim.lr)
        return param_groups_with_lrs(self, float(optim.weight_decay), lr, [(self.mae_head, lr * factor)])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizers = with_objective_lr(super().configure_optimizers(), self.objective_schedule)
        if self.mae_head is not None:  # the group train/lr_mae_decoder reads, found once
            first = next(self.mae_head.parameters())
            groups = optimizers["optimizer"].param_groups
            self._mae_decoder_group = next(
                i for i, g in enumerate(groups) if any(p is first for p in g["params"])
            )
        return optimizers

    # ----------------------------------------------------------------------------- encoding
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images).pooled

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, attention_mask).pooled

    # ----------------------------------------------------------------------------- training
    # The CLIP (+ RRG) losses, run only on vision-language steps.
    def _vision_language_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = self.image_encoder(batch["image"])
        text_emb = self.encode_text(batch["input_ids"], batch["attention_mask"])
        losses = {"clip": self.clip_loss(image.pooled, text_emb)}
        if self.rrg_head is not None:
            rrg_cfg = self.cfg.objectives.rrg
            causal = rrg.draw_causal(int(self.cfg.seed), self.global_step, float(rrg_cfg.parallel_prob))
            losses["rrg"] = self.rrg_head.caption_loss(image.tokens, batch["cappa"], causal=causal)
        return losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # The schedule picks the objectives of this step.
        kind = batch["kind"][0]
        active = self.objective_schedule.active(self.global_step, kind)
        losses = self._vision_language_losses(batch) if active.vision_language else {}
        if active.mae:
            losses.update(
                mae_objective.training_losses(self.mae_head, self.cross_view_head, self.image_encoder, batch)
            )
        loss = sum(self.loss_weights[name] * value for name, value in losses.items())
        batch_size = batch["image"].shape[0]
        self.guard_loss(loss)
        # Mean over ranks: equals the single-process loss on the global batch.
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        # Objectives alternate between steps, so each scalar is logged as its mean over the
        # logging window (lightning_modules/window_means.py).
        scalars = {f"train/loss_{name}": float(value.detach()) for name, value in losses.items()}
        scalars["train/objective/vision_language"] = float(active.vision_language)
        scalars["train/objective/mae"] = float(active.mae)
        scalars["train/image_only_batch"] = float(kind == IMAGE_ONLY)
        every = int(self.trainer.log_every_n_steps)
        for name, value in self._window_means.update(self.global_step, every, scalars).items():
            self.log(name, value, batch_size=batch_size, sync_dist=name.startswith("train/loss_"))
        self.log("train/temperature", self.clip_loss.temperature, batch_size=batch_size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
        if self.text_encoder.frozen_cache is not None:  # model.text.frozen_cache_mb: hits so far
            self.log(
                "train/text_cache_hit_rate", self.text_encoder.frozen_cache.hit_rate, batch_size=batch_size
            )
        if self.mae_head is not None:  # objectives.mae.decoder_lr_factor times train/lr
            decoder_lr = self.trainer.optimizers[0].param_groups[self._mae_decoder_group]["lr"]
            self.log("train/lr_mae_decoder", decoder_lr, batch_size=batch_size)
        return loss

    # --------------------------------------------------------------------------- evaluation
    def _collect(self, batch: dict[str, Any]) -> ImageOutput:
        collected = self._eval_embeddings
        image = self.image_encoder(batch["image"])
        collected["image"].append(image.pooled.float())
        collected["text"].append(self.encode_text(batch["input_ids"], batch["attention_mask"]).float())
        collected["index"].append(batch["index"])
        return image

    def _log_rrg_loss(self, prefix: str, image: ImageOutput, batch: dict[str, Any]) -> None:
        if self.rrg_head is None:
            return
        parallel_prob = float(self.cfg.objectives.rrg.parallel_prob)
        loss = rrg.expected_loss(self.rrg_head, image.tokens, batch["cappa"], parallel_prob)
        self.log(f"{prefix}/rrg/loss", loss, batch_size=batch["image"].shape[0], sync_dist=True)

    def _gathered_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text embeddings of the whole split, once per volume, across all ranks."""
        collected = {key: torch.cat(values) for key, values in self._eval_embeddings.items()}
        self._eval_embeddings = {key: [] for key in collected}
        once = self.gather_once_per_volume(collected)
        return once["image"], once["text"]

    def _retrieval(self, prefix: str) -> None:
        image, text = self._gathered_embeddings()
        similarity = self.clip_loss.similarity(image, text)
        metrics = retrieval_metrics(similarity, list(self.cfg.evaluation.recall_ks))
        for name, value in metrics.items():
            self.log(f"{prefix}/retrieval/{name}", value)

    def _log_mae_loss(self, prefix: str, batch: dict[str, Any], batch_idx: int) -> None:
        if self.mae_head is not None:
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

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_rrg_loss("val", self._collect(batch), batch)
        self._log_mae_loss("val", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._retrieval("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_rrg_loss("test", self._collect(batch), batch)
        self._log_mae_loss("test", batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._retrieval("test")
