"""ContrastiveModule: the COLIPRI CLIP recipe (image encoder + text encoder + CLIP loss).

With ``objectives.rrg.enabled`` (COLIPRI-CR) a CapPa decoder reads the image tokens before
pooling and the loss is ``L_CLIP + objectives.rrg.weight * L_RRG`` (``lightning_modules/rrg.py``).

Thin by design: the parts live in ``lightning_modules/nets``; this file composes them,
logs, and evaluates retrieval on the embeddings of a whole split.
"""

from __future__ import annotations

from typing import Any

import torch

from evaluation.retrieval import recall_at_k
from lightning_modules import rrg
from lightning_modules.base import ObjectiveModule, image_encoder_from_config
from lightning_modules.nets.clip_loss import ClipLoss
from lightning_modules.nets.image_encoder import ImageOutput
from lightning_modules.nets.text_encoder import TextEncoder


class ContrastiveModule(ObjectiveModule):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.cfg
        self.image_encoder = image_encoder_from_config(cfg)
        self.text_encoder = TextEncoder(
            cfg.model.text.name_or_path,
            proj_dim=int(cfg.model.proj_dim),
            pool_heads=int(cfg.model.pool_heads),
            freeze_backbone=bool(cfg.model.text.freeze),
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
        self._eval_embeddings: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "index": []}

    # ----------------------------------------------------------------------------- encoding
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images).pooled

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, attention_mask).pooled

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image = self.image_encoder(batch["image"])
        text_emb = self.encode_text(batch["input_ids"], batch["attention_mask"])
        loss_clip = self.clip_loss(image.pooled, text_emb)
        batch_size = batch["image"].shape[0]
        loss = loss_clip
        if self.rrg_head is not None:
            rrg_cfg = self.cfg.objectives.rrg
            causal = rrg.draw_causal(int(self.cfg.seed), self.global_step, float(rrg_cfg.parallel_prob))
            loss_rrg = self.rrg_head.caption_loss(image.tokens, batch["cappa"], causal=causal)
            loss = loss_clip + float(rrg_cfg.weight) * loss_rrg
            self.log("train/loss_rrg", loss_rrg, batch_size=batch_size, sync_dist=True)
        self.guard_loss(loss)
        # Mean over ranks: equals the single-process loss on the global batch.
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("train/loss_clip", loss_clip, batch_size=batch_size)
        self.log("train/temperature", self.clip_loss.temperature, batch_size=batch_size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
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
        self.log(f"{prefix}/loss_rrg", loss, batch_size=batch["image"].shape[0], sync_dist=True)

    def _gathered_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text embeddings of the whole split, once per volume, across all ranks."""
        collected = {key: torch.cat(values) for key, values in self._eval_embeddings.items()}
        self._eval_embeddings = {key: [] for key in collected}
        if self.trainer.world_size > 1:
            collected = {key: self.all_gather(value).flatten(0, 1) for key, value in collected.items()}
        # Evaluation shards are padded with repeats under DDP: keep the first copy of each index.
        index = collected["index"]
        order = torch.argsort(index, stable=True)
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[order][1:] != index[order][:-1]
        keep = order[first]
        return collected["image"][keep], collected["text"][keep]

    def _retrieval(self, prefix: str) -> None:
        image, text = self._gathered_embeddings()
        similarity = self.clip_loss.similarity(image, text)
        metrics = recall_at_k(similarity, list(self.cfg.evaluation.recall_ks))
        for name, value in metrics.items():
            self.log(f"{prefix}/retrieval/{name}", value)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_rrg_loss("val", self._collect(batch), batch)

    def on_validation_epoch_end(self) -> None:
        self._retrieval("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_rrg_loss("test", self._collect(batch), batch)

    def on_test_epoch_end(self) -> None:
        self._retrieval("test")
