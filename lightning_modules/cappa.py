"""CapPaModule: captioning-only pretraining (image encoder + CapPa decoder, no text encoder).

The CapPa recipe (Tschannen et al.) on CT: the image encoder's projected tokens (before pooling)
feed the CapPa decoder, which writes the structured report, parallel or causal per step
(``objectives.rrg``; ``lightning_modules/rrg.py``). The loss is ``L_RRG`` alone (the weight
``objectives.rrg.weight`` only matters beside CLIP). The sweep that compares objectives trains
this beside ColipriModule. The tokenizer of ``model.text`` supplies the vocabulary; no text
model is built.

Validation and test log the RRG loss (``val/rrg/loss``, which also picks the best checkpoint).
There are no text embeddings, so the periodic evaluation can only run probes.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from einops import rearrange
from omegaconf import DictConfig

from callbacks.report_samples import ReportSamplesCallback
from ctvlp.config.evaluation_tasks import IMAGE_ONLY_TASKS
from datamodules.report_classifier import labeller_from_config
from lightning_modules import rrg
from lightning_modules.base import ObjectiveModule, image_encoder_from_config


class CapPaModule(rrg.ReportSamples, ObjectiveModule):
    best_metric = "val/rrg/loss"
    best_mode = "min"
    # No text encoder: no retrieval or zero-shot; the periodic evaluation runs the probe grid
    # (evaluation.callback_tasks), validation logs the RRG loss and generated reports.
    evaluation_tasks = IMAGE_ONLY_TASKS

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.cfg
        self.image_encoder = image_encoder_from_config(cfg)
        # Captioning reads the tokens before pooling, so the pooler gets no gradient. Frozen, it
        # is no unused trainable parameter under DDP; encode_image (probes) still works.
        self.image_encoder.pooler.requires_grad_(False)
        self.rrg_targets = rrg.target_builder(cfg)
        self.rrg_head = rrg.build_head(cfg, self.rrg_targets, int(cfg.model.proj_dim))

    @classmethod
    def rrg_active(cls, cfg: DictConfig) -> bool:
        return True

    def configure_callbacks(self) -> list[L.Callback]:
        """The periodic probes, plus greedy report samples at every validation."""
        return [
            *super().configure_callbacks(),
            ReportSamplesCallback(int(self.cfg.objectives.rrg.log_reports), labeller_from_config(self.cfg)),
        ]

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) → projected tokens (B, N, proj_dim), without the pooler."""
        return rearrange(self.image_encoder.feature_map(images), "b c d h w -> b (d h w) c")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images).pooled

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        parallel_prob = float(self.cfg.objectives.rrg.parallel_prob)
        causal = rrg.draw_causal(int(self.cfg.seed), self.global_step, parallel_prob)
        loss = self.rrg_head.caption_loss(self.image_tokens(batch["image"]), batch["cappa"], causal=causal)
        self.guard_loss(loss)
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("train/loss_rrg", loss, batch_size=batch_size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
        return loss

    def _evaluate(self, prefix: str, batch: dict[str, Any]) -> None:
        parallel_prob = float(self.cfg.objectives.rrg.parallel_prob)
        loss = rrg.expected_loss(
            self.rrg_head, self.image_tokens(batch["image"]), batch["cappa"], parallel_prob
        )
        self.log(f"{prefix}/rrg/loss", loss, batch_size=batch["image"].shape[0], sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("test", batch)
