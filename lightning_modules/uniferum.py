"""UniferumModule: Uniferum, segmentation-conditioned classification.

One model f(x, t) for every task: a 3D vision encoder, the task text, a fusion transformer
initialised from a text model's first layers, and two heads (``nets/seg_conditioned_head.py``).
Training batches hold one task per sample (``datamodules/uniferum_datamodule.py``); validation and
test encode each volume once and score it on every task:

* ``<split>/diagnosis.<task>/auroc|auprc`` per diagnosis task and ``<split>/diagnosis/auroc_mean``
  (the checkpoint-selection metric) and ``auprc_mean`` over them; likewise ``prognosis``;
* ``<split>/heldout.<task>/...`` and ``<split>/heldout/auroc_mean``: tasks never trained on
  (``uniferum.held_out_labels``), i.e. zero-shot on a new task text;
* ``<split>/seg.<organ>/dice`` and ``<split>/seg/dice_mean``: Dice of the unpacked segmentation
  output (logit > 0) against the max-pooled mask, at 1/(d/u) of the input resolution.

A task whose split has no positive or no negative is left out of the metrics (torchmetrics would
report 0 AUROC for it).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

import torch
from omegaconf import DictConfig
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from ctvlp.config.schema import RANDOM_INIT
from datamodules.seg_targets import dice, unpatchify
from datamodules.uniferum_datamodule import UniferumDataModule
from datamodules.uniferum_tasks import DIAGNOSIS, PROGNOSIS, SEGMENTATION
from lightning_modules.base import ObjectiveModule
from lightning_modules.nets.seg_conditioned_head import HeadOutput, SegConditionedHead
from lightning_modules.nets.text_encoder import load_tokenizer
from lightning_modules.nets.uniferum_fusion import TaskFusion
from lightning_modules.nets.uniferum_vision import VisionTokens, build_uniferum_vision
from lightning_modules.optim import param_groups_with_lrs

log = logging.getLogger(__name__)

# Fusion sequences per forward pass when a batch of volumes is scored on many tasks.
EVAL_SEQUENCES_PER_PASS = 256


def build_vision(cfg: DictConfig) -> VisionTokens:
    uniferum = cfg.uniferum
    weights = uniferum.vision_weights_2d
    if uniferum.vision == "efficientnet_b0" and weights in (None, RANDOM_INIT):
        log.warning(
            "uniferum.vision_weights_2d=%s: the 3D EfficientNet-B0 starts from a random initialisation, "
            "not the paper's inflated 2D ImageNet weights",
            weights,
        )
    return build_uniferum_vision(
        str(uniferum.vision),
        [int(s) for s in uniferum.input_shape],
        inflate_from=None if weights == RANDOM_INIT else weights,
        inflate_mode=str(uniferum.inflate_mode),
        primus_size=str(cfg.model.image.size),
        primus_patch=int(uniferum.primus_patch),
        drop_path=float(cfg.model.image.drop_path),
    )


def vision_downsample(cfg: DictConfig) -> int:
    return 32 if cfg.uniferum.vision == "efficientnet_b0" else int(cfg.uniferum.primus_patch)


def task_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float] | None:
    """AUROC and AUPRC over the known labels, or ``None`` without both classes."""
    known = ~torch.isnan(labels)
    scores, labels = scores[known].float(), labels[known].long()
    if labels.numel() == 0 or labels.min() == labels.max():
        return None
    return {
        "auroc": float(binary_auroc(scores, labels)),
        "auprc": float(binary_average_precision(scores, labels)),
    }


class UniferumModule(ObjectiveModule):
    best_metric = "val/diagnosis/auroc_mean"
    best_mode = "max"
    # No image-encoder evaluation (retrieval, zero-shot, probes need an image_encoder and CT-RATE
    # style batches): this module evaluates its tasks in its own validation loop
    # (trainer.val_check_interval) and `ctvlp eval --task-text`.
    evaluation_tasks = ()
    # "Models were selected based on the best average AUROC across validation tasks."
    evaluate_best = True

    @classmethod
    def build_datamodule(cls, cfg: DictConfig) -> UniferumDataModule:
        tokenizer = load_tokenizer(cfg.model.text.name_or_path)
        return UniferumDataModule(cfg, tokenizer, vision_downsample(cfg), seed=int(cfg.seed))

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        uniferum = self.cfg.uniferum
        self.vision = build_vision(self.cfg)
        self.fusion = TaskFusion(
            self.cfg.model.text.name_or_path,
            int(uniferum.fusion_layers),
            self.vision.channels,
            # model.text.freeze: the text-only part, the word embeddings (the fusion layers train).
            freeze_word_embeddings=bool(self.cfg.model.text.freeze),
        )
        self.head = SegConditionedHead(
            self.fusion.hidden,
            u=int(uniferum.u),
            focal_alpha=float(uniferum.focal_alpha),
            focal_gamma=float(uniferum.focal_gamma),
            seg_weight=float(uniferum.seg_weight),
        )
        self.grid = self.vision.grid([int(s) for s in uniferum.input_shape])
        self._collected: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._tasks: dict[str, list[Any]] = {}

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Two learning rates (AdamW, warm-up then the configured decay; linear in the paper):
        ``uniferum.lr_text_layers`` for the fusion's pretrained text-model layers and embeddings,
        ``uniferum.lr_other`` for everything else (each ``optim.lr`` when null)."""
        optim, uniferum = self.cfg.optim, self.cfg.uniferum
        lr = float(optim.lr)
        lr_text = float(uniferum.lr_text_layers) if uniferum.lr_text_layers is not None else lr
        lr_other = float(uniferum.lr_other) if uniferum.lr_other is not None else lr
        return param_groups_with_lrs(
            self, float(optim.weight_decay), lr_other, [(self.fusion.model, lr_text)]
        )

    # ------------------------------------------------------------------------------- forward
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens (B, N, hidden), computed once per volume."""
        return self.fusion.project(self.vision(images))

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> HeadOutput:
        fused = self.fusion(self.encode(images), input_ids, attention_mask)
        return self.head(fused.cls, fused.visual)

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        output = self(batch["image"], batch["input_ids"], batch["attention_mask"])
        losses = self.head.losses(output, batch["target"], batch["seg_target"], batch["is_seg"])
        self.guard_loss(losses.loss)
        size = batch["image"].shape[0]
        self.log("train/loss", losses.loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/loss_cls", losses.cls, batch_size=size)
        self.log("train/loss_seg_focal", losses.seg, batch_size=size)
        self.log("train/seg_fraction", losses.n_seg / size, batch_size=size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=size)
        return losses.loss

    # ---------------------------------------------------------------------------- evaluation
    def score_tasks(
        self, visual: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, segment: bool
    ) -> torch.Tensor:
        """Every volume on every task: (B, T) classification logits, or with ``segment`` the
        (B, T, N, u^3) segmentation logits. ``visual`` (B, N, H); task tokens (T, L)."""
        batch, tasks = visual.shape[0], input_ids.shape[0]
        per_pass = max(1, EVAL_SEQUENCES_PER_PASS // batch)
        chunks = []
        for start in range(0, tasks, per_pass):
            ids, mask = input_ids[start : start + per_pass], attention_mask[start : start + per_pass]
            t = ids.shape[0]
            fused = self.fusion(
                visual.repeat_interleave(t, dim=0), ids.repeat(batch, 1), mask.repeat(batch, 1)
            )
            if segment:
                chunks.append(self.head.seg_logits(fused.visual).unflatten(0, (batch, t)))
            else:
                chunks.append(self.head.cls_logits(fused.cls).view(batch, t))
        return torch.cat(chunks, dim=1)

    def _evaluate(self, batch: dict[str, Any]) -> None:
        kinds = list(batch["task_kinds"])
        self._tasks = {
            "names": list(batch["task_names"]),
            "kinds": kinds,
            "held_out": list(batch["task_held_out"]),
        }
        visual = self.encode(batch["image"])
        ids, mask = batch["task_input_ids"], batch["task_attention_mask"]
        cls_index = [i for i, k in enumerate(kinds) if k != SEGMENTATION]
        seg_index = [i for i, k in enumerate(kinds) if k == SEGMENTATION]
        scores = torch.full(batch["labels"].shape, math.nan, device=visual.device)
        if cls_index:
            scores[:, cls_index] = self.score_tasks(visual, ids[cls_index], mask[cls_index], False).float()
        dices = torch.full(batch["seg_available"].shape, math.nan, device=visual.device)
        available = batch["seg_available"]
        if seg_index and bool(available.any()):
            logits = self.score_tasks(visual, ids[seg_index], mask[seg_index], True)
            u = self.head.u
            predicted = unpatchify((logits > 0).float(), self.grid, u)
            target = unpatchify(batch["seg_targets"].float(), self.grid, u)
            dices = torch.where(available, dice(predicted, target), dices)
        self._collected["scores"].append(scores)
        self._collected["labels"].append(batch["labels"].float())
        self._collected["dice"].append(dices)
        self._collected["index"].append(batch["index"])

    def _gathered(self) -> dict[str, torch.Tensor]:
        """The split's collected values, once per volume, across all ranks."""
        collected = {key: torch.cat(values) for key, values in self._collected.items()}
        self._collected = defaultdict(list)
        return self.gather_once_per_volume(collected)

    def evaluation_metrics(self, prefix: str) -> dict[str, float]:
        """Per-task and mean metrics of everything collected since the last call."""
        if not self._collected:
            return {}
        values = self._gathered()
        names, kinds, held = self._tasks["names"], self._tasks["kinds"], self._tasks["held_out"]
        metrics: dict[str, float] = {}
        groups: dict[str, list[dict[str, float]]] = defaultdict(list)
        seg_column = 0
        for t, (name, kind) in enumerate(zip(names, kinds, strict=True)):
            if kind == SEGMENTATION:
                organ_dice = values["dice"][:, seg_column]
                seg_column += 1
                organ_dice = organ_dice[~torch.isnan(organ_dice)]
                if organ_dice.numel():
                    metrics[f"{prefix}/seg.{name}/dice"] = float(organ_dice.mean())
                    groups["seg"].append({"dice": float(organ_dice.mean())})
                continue
            result = task_metrics(values["scores"][:, t], values["labels"][:, t])
            if result is None:
                continue
            group = "heldout" if held[t] else (DIAGNOSIS if kind == DIAGNOSIS else PROGNOSIS)
            for metric, value in result.items():
                metrics[f"{prefix}/{group}.{name}/{metric}"] = value
            groups[group].append(result)
        groups.setdefault(DIAGNOSIS, [])  # the checkpoint metric is always logged (NaN: no usable task)
        for group, results in groups.items():
            if not results:
                metrics[f"{prefix}/{group}/auroc_mean"] = math.nan
                continue
            for metric in results[0]:
                metrics[f"{prefix}/{group}/{metric}_mean"] = sum(r[metric] for r in results) / len(results)
            metrics[f"{prefix}/{group}/tasks"] = float(len(results))
        return metrics

    def _log_metrics(self, prefix: str) -> None:
        for key, value in self.evaluation_metrics(prefix).items():
            self.log(key, value)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
