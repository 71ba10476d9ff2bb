"""GreenRFMModule: GreenRFM's supervised-then-aligned recipe in one ``ctvlp fit`` (docs/recipes.md).

**Stage 1, unimodal supervision** (the first ``greenrfm.stage1_fraction`` of ``trainer.max_steps``;
the paper's 5 of 5 + 5 epochs):

- image: ``classifier(projection(GAP(r3d_18(x))))`` against the diagnostic labels with the
  label-balanced BCE (-1 / NaN masked), at ``greenrfm.lr_image`` (1e-4). The classifier is the one
  stage 2 shares with the text ("the encoder is supervised by the shared linear classifier").
- image, where the crop has organ masks (``data.organ_masks``): ``+ greenrfm.seg_weight ·`` the
  cross-entropy of a light decoder's coarse organ map (``CoarseSegDecoder`` on layer4, one
  prediction per ``greenrfm.seg_cell``³ voxels, soft targets: each cell's class fractions).
- text: the [CLS] state through its own classification head, same BCE, at ``greenrfm.lr_text`` (1e-5).
- AdamW, weight decay ``greenrfm.stage1_weight_decay`` (1e-4), each lr cosine-annealed to
  ``greenrfm.stage1_min_lr`` (1e-6) over the stage (the public code).

**Stage 2, alignment**: ``L_CLIP + λ (BCE(classifier(img)) + BCE(classifier(txt)))`` with the CLIP
loss on raw dot products (no L2 normalisation, no temperature), λ = ``greenrfm.cls_weight`` (0.5,
the public code), every parameter at ``greenrfm.lr_align`` (1e-5), weight decay 0, no schedule,
gradient norm clipped at ``greenrfm.align_grad_clip`` (0.5). The optimiser's moments are reset at
the boundary, as the public code starts a fresh optimiser for stage 2.

Both stages are a pure function of the global step (the stage, each group's lr and weight decay),
so a run resumes anywhere, also across the boundary. ``train/stage`` logs which stage ran.

Validation logs the image classifier's macro AUROC (``val/classifier/AUROC``: the stage-1 oracle the
zero-shot score is compared with), the default prompt's zero-shot AUROC (``val/zeroshot_p1/AUROC``)
and report retrieval by dot product. ``ctvlp eval`` reads the same encoders (``embedding_similarity``
tells it to score by dot product).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from callbacks.grad_cam_images import GradCamImagesCallback
from datamodules.datamodule import CTDataModule
from datamodules.mixing import data_sources
from datamodules.organ_classes import NUM_ORGAN_CLASSES, UNKNOWN_CLASS
from evaluation.grad_cam import similarity_grad_cam
from evaluation.metrics import classification_metrics
from evaluation.prompt_zero_shot import prompt_scores, prompt_texts
from evaluation.retrieval import query_similarity, retrieval_metrics
from lightning_modules.base import ObjectiveModule
from lightning_modules.nets.greenrfm_encoders import ClsTextEncoder, CoarseSegDecoder, GreenRFMImageEncoder
from lightning_modules.nets.greenrfm_losses import (
    balanced_masked_bce,
    coarse_seg_cross_entropy,
    dot_product_clip_loss,
)
from lightning_modules.nets.r3d_encoder import build_r3d_encoder
from lightning_modules.nets.text_encoder import load_tokenizer

STAGES = ("supervised", "alignment")


def cosine_lr(step: int, steps: int, lr: float, min_lr: float) -> float:
    """``lr`` annealed to ``min_lr`` along half a cosine over ``steps`` (torch's CosineAnnealingLR)."""
    progress = min(max(step, 0), steps) / max(steps, 1)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class GreenRFMModule(ObjectiveModule):
    best_metric = "val/zeroshot_p1/AUROC"
    best_mode = "max"
    embedding_similarity = "dot"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.cfg
        # The primary source's own label names (18 CT-RATE findings, 30 Merlin diseases).
        self.label_names = list(data_sources(cfg.data)[0].spec.label_names)
        latent = int(cfg.model.proj_dim)
        self.image_encoder = GreenRFMImageEncoder(
            build_r3d_encoder(int(cfg.model.image.stem), cfg.model.image.weights), latent
        )
        self.text_encoder = ClsTextEncoder(
            cfg.model.text.name_or_path, len(self.label_names), latent, bool(cfg.model.text.freeze)
        )
        # One classifier for both projected embeddings ("consistency in semantic focus").
        self.classifier = torch.nn.Linear(latent, len(self.label_names))
        g = cfg.greenrfm
        self.seg_weight, self.seg_cell = float(g.seg_weight), int(g.seg_cell)
        self.seg_decoder = CoarseSegDecoder(NUM_ORGAN_CLASSES) if self.seg_weight > 0 else None
        self.stage1_steps = round(float(cfg.greenrfm.stage1_fraction) * int(cfg.trainer.max_steps))
        self._reset_at_step: int | None = None
        self._eval: dict[str, list[torch.Tensor]] = {}

    @classmethod
    def build_datamodule(cls, cfg: DictConfig) -> L.LightningDataModule:
        return CTDataModule(
            cfg.data,
            load_tokenizer(cfg.model.text.name_or_path),
            int(cfg.model.text.max_length),
            int(cfg.seed),
        )

    # ----------------------------------------------------------------------------- encoding
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images).pooled

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, attention_mask)

    def _tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``texts`` tokenised as the training collator does, on the module's device."""
        tokenizer = getattr(self, "_tokenizer", None) or load_tokenizer(self.cfg.model.text.name_or_path)
        self._tokenizer = tokenizer
        return tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=int(self.cfg.model.text.max_length),
            return_tensors="pt",
        ).to(self.device)

    def grad_cam(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        """(B, 1, X, Y, Z) -> (B, X, Y, Z) in [0, 1]: Grad-CAM of the similarity image · prompt at
        the trunk's layer4, the paper's Fig. 5 (``ctvlp explain``, the TensorBoard overlays)."""
        tokens = self._tokens([prompt])
        with torch.no_grad():
            text = self.encode_text(tokens["input_ids"], tokens["attention_mask"])[0]
        return similarity_grad_cam(self.image_encoder, text, images)

    def configure_callbacks(self) -> list[L.Callback]:
        """Grad-CAM overlays of a few validation volumes at every validation."""
        return [*super().configure_callbacks(), GradCamImagesCallback(num_volumes=2)]

    def stage(self, step: int | None = None) -> str:
        return STAGES[int((self.global_step if step is None else step) >= self.stage1_steps)]

    # ----------------------------------------------------------------------------- training
    def stage_losses(self, batch: dict[str, Any], stage: str) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        feature_map = self.image_encoder.feature_map(batch["image"])
        image = self.image_encoder.pool(feature_map)
        if stage == "supervised":
            cls = self.text_encoder.cls(batch["input_ids"], batch["attention_mask"])
            losses = {
                "cls_image": balanced_masked_bce(self.classifier(image), labels),
                "cls_text": balanced_masked_bce(self.text_encoder.head(cls), labels),
            }
            if self.seg_decoder is not None:
                losses["seg"] = self.seg_loss(feature_map, batch["organ_classes"])
            return losses
        text = self.text_encoder(batch["input_ids"], batch["attention_mask"])
        return {
            "clip": dot_product_clip_loss(image, text),
            "cls_image": balanced_masked_bce(self.classifier(image), labels),
            "cls_text": balanced_masked_bce(self.classifier(text), labels),
        }

    def seg_loss(self, feature_map: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The coarse organ cross-entropy of a batch (crops without masks carry no target)."""
        assert self.seg_decoder is not None
        size = [side // self.seg_cell for side in classes.shape[1:]]
        logits = self.seg_decoder(feature_map, size)
        return coarse_seg_cross_entropy(logits, classes, self.seg_cell, UNKNOWN_CLASS)

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        if "clip" not in losses:  # stage 1: the two encoders' losses touch disjoint parameters
            seg = self.seg_weight * losses["seg"] if "seg" in losses else 0.0
            return losses["cls_image"] + losses["cls_text"] + seg
        weight = float(self.cfg.greenrfm.cls_weight)
        return losses["clip"] + weight * (losses["cls_image"] + losses["cls_text"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        stage = self.stage()
        losses = self.stage_losses(batch, stage)
        loss = self.guard_loss(self.total_loss(losses))
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size, sync_dist=True)
        self.log("train/stage", float(STAGES.index(stage) + 1), batch_size=batch_size)
        (lr_image, _), (lr_text, _) = self.stage_hparams(self.global_step)  # what this step applies
        self.log("train/lr_image", lr_image, batch_size=batch_size)
        self.log("train/lr_text", lr_text, batch_size=batch_size)
        return loss

    # ---------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One AdamW; its two groups' lr and weight decay are set every step (``_set_stage_hparams``)."""
        text = list(self.text_encoder.parameters())
        text_ids = {id(p) for p in text}
        image = [p for p in self.parameters() if id(p) not in text_ids]
        g = self.cfg.greenrfm
        return torch.optim.AdamW(
            [{"params": image, "lr": float(g.lr_image)}, {"params": text, "lr": float(g.lr_text)}],
            weight_decay=float(g.stage1_weight_decay),
            betas=tuple(self.cfg.optim.betas),
        )

    def stage_hparams(self, step: int) -> list[tuple[float, float]]:
        """(lr, weight decay) of the image and text groups at ``step``."""
        g = self.cfg.greenrfm
        if self.stage(step) == "alignment":
            return [(float(g.lr_align), float(g.align_weight_decay))] * 2
        min_lr, decay = float(g.stage1_min_lr), float(g.stage1_weight_decay)
        return [
            (cosine_lr(step, self.stage1_steps, float(lr), min_lr), decay) for lr in (g.lr_image, g.lr_text)
        ]

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        raw = getattr(optimizer, "optimizer", optimizer)
        step = self.global_step
        if step == self.stage1_steps and self._reset_at_step != step:
            raw.state.clear()  # stage 2 starts a fresh AdamW, as the public code does
            self._reset_at_step = step
        for group, (lr, decay) in zip(raw.param_groups, self.stage_hparams(step), strict=True):
            group["lr"], group["weight_decay"] = lr, decay
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Stage 2 clips the gradient norm at ``greenrfm.align_grad_clip``; stage 1 uses the trainer's."""
        if self.stage() == "alignment":
            gradient_clip_val, gradient_clip_algorithm = float(self.cfg.greenrfm.align_grad_clip), "norm"
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # --------------------------------------------------------------------------- evaluation
    def _collect(self, batch: dict[str, Any]) -> None:
        image = self.image_encoder(batch["image"]).pooled.float()
        text = self.encode_text(batch["input_ids"], batch["attention_mask"]).float()
        values = {
            "image": image,
            "text": text,
            "logits": self.classifier(image).float(),
            "labels": batch["labels"].float(),
            "index": batch["index"],
        }
        for key, value in values.items():
            self._eval.setdefault(key, []).append(value)

    def _prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The default prompt pair P1 ("{p}." / "not {p}.") embedded by the text encoder."""
        positive, negative = prompt_texts(self.label_names, 0)
        tokens = self._tokens([*positive, *negative])
        embeddings = self.encode_text(tokens["input_ids"], tokens["attention_mask"]).float()
        return embeddings[: len(positive)], embeddings[len(positive) :]

    def _evaluate(self, prefix: str) -> None:
        collected = {key: torch.cat(values) for key, values in self._eval.items()}
        self._eval = {}
        once = self.gather_once_per_volume(collected)
        labels = once["labels"].cpu()
        positive, negative = self._prompt_embeddings()
        scores = {
            "classifier": torch.sigmoid(once["logits"]).cpu(),
            "zeroshot_p1": prompt_scores(once["image"], positive, negative).cpu(),
        }
        for name, score in scores.items():
            macro = classification_metrics(score, labels, self.label_names).macro
            self.log(f"{prefix}/{name}/AUROC", macro["AUROC"], rank_zero_only=True)
        direction = str(self.cfg.evaluation.retrieval_direction)
        similarity = query_similarity(once["image"] @ once["text"].T, direction)
        for name, value in retrieval_metrics(similarity, list(self.cfg.evaluation.recall_ks)).items():
            self.log(f"{prefix}/retrieval/{name}", value, rank_zero_only=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")
