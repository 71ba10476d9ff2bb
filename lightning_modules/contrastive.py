"""ContrastiveModule: the COLIPRI CLIP recipe (image encoder + text encoder + CLIP loss).

Thin by design: the parts live in ``lightning_modules/nets``; this file composes them,
logs, and evaluates retrieval on the embeddings of a whole split.
"""

from __future__ import annotations

from typing import Any

import torch

from evaluation.retrieval import recall_at_k
from lightning_modules.base import ObjectiveModule
from lightning_modules.nets.clip_loss import ClipLoss
from lightning_modules.nets.image_encoder import build_image_encoder
from lightning_modules.nets.primus_encoder import set_activation_checkpointing
from lightning_modules.nets.text_encoder import TextEncoder


class ContrastiveModule(ObjectiveModule):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.cfg
        image = cfg.model.image
        self.image_encoder = build_image_encoder(
            size=image.size,
            input_size=int(cfg.data.crop_size),
            patch_size=int(image.patch_size),
            proj_dim=int(cfg.model.proj_dim),
            pool_heads=int(cfg.model.pool_heads),
            pooler=image.pooler,
            drop_path=float(image.drop_path),
            layer_scale_init=image.layer_scale_init,
            scale_attn_inner=bool(image.scale_attn_inner),
            use_abs_pos_embed=bool(image.use_abs_pos_embed),
            num_register_tokens=int(image.num_register_tokens),
        )
        if image.activation_checkpointing:
            set_activation_checkpointing(self.image_encoder.backbone, True)
        if image.compile:
            self.image_encoder.backbone.compile()
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
        self._eval_embeddings: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "index": []}

    # ----------------------------------------------------------------------------- encoding
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images).pooled

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, attention_mask).pooled

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image_emb = self.encode_image(batch["image"])
        text_emb = self.encode_text(batch["input_ids"], batch["attention_mask"])
        loss = self.clip_loss(image_emb, text_emb)
        self.guard_loss(loss)
        batch_size = batch["image"].shape[0]
        # Mean over ranks: equals the single-process loss on the global batch.
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("train/loss_clip", loss, batch_size=batch_size)
        self.log("train/temperature", self.clip_loss.temperature, batch_size=batch_size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
        return loss

    # --------------------------------------------------------------------------- evaluation
    def _collect(self, batch: dict[str, Any]) -> None:
        collected = self._eval_embeddings
        collected["image"].append(self.encode_image(batch["image"]).float())
        collected["text"].append(self.encode_text(batch["input_ids"], batch["attention_mask"]).float())
        collected["index"].append(batch["index"])

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
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        self._retrieval("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        self._retrieval("test")
