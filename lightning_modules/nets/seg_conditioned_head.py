"""Uniferum's two heads and their task-masked losses.

* classification: [CLS] state -> Linear -> 1 logit, binary cross-entropy;
* segmentation: each visual state -> Linear -> u^3 logits (``datamodules.seg_targets``), sigmoid focal loss
  (alpha 0.25, gamma 2) averaged over the sample's cells, times 10 (the paper's weight against the
  focal loss shrinking as training goes).

In a mixed batch each sample's loss counts only for its own task type; the total is the batch mean
of ``cls_b`` (classification samples) or ``10 * focal_b`` (segmentation samples), as in the public
Uniferum code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss


class HeadOutput(NamedTuple):
    cls_logits: torch.Tensor  # (B,)
    seg_logits: torch.Tensor  # (B, N, u^3)


class SegConditionedLosses(NamedTuple):
    loss: torch.Tensor  # the total that is optimised
    cls: torch.Tensor  # mean BCE over the classification samples (0 when there are none)
    seg: torch.Tensor  # mean unweighted focal loss over the segmentation samples (0 when none)
    n_cls: int
    n_seg: int


class SegConditionedHead(nn.Module):
    def __init__(
        self,
        hidden: int,
        u: int = 4,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        seg_weight: float = 10.0,
    ) -> None:
        super().__init__()
        self.u = int(u)
        self.cls_head = nn.Linear(hidden, 1)
        self.seg_head = nn.Linear(hidden, self.u**3)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.seg_weight = float(seg_weight)

    def forward(self, cls_state: torch.Tensor, visual_states: torch.Tensor) -> HeadOutput:
        return HeadOutput(self.cls_head(cls_state).squeeze(-1), self.seg_head(visual_states))

    def cls_logits(self, cls_state: torch.Tensor) -> torch.Tensor:
        return self.cls_head(cls_state).squeeze(-1)

    def seg_logits(self, visual_states: torch.Tensor) -> torch.Tensor:
        return self.seg_head(visual_states)

    def losses(
        self,
        output: HeadOutput,
        cls_target: torch.Tensor,
        seg_target: torch.Tensor,
        is_seg: torch.Tensor,
    ) -> SegConditionedLosses:
        """``cls_target`` (B,) (ignored, may be NaN, for segmentation samples), ``seg_target``
        (B, N, u^3) (ignored for classification samples), ``is_seg`` (B,) bool."""
        is_seg = is_seg.bool()
        cls_target = torch.nan_to_num(cls_target.float(), nan=0.0)
        bce = F.binary_cross_entropy_with_logits(output.cls_logits.float(), cls_target, reduction="none")
        focal = sigmoid_focal_loss(
            output.seg_logits.float(),
            seg_target.float(),
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            reduction="none",
        ).mean(dim=(1, 2))
        per_sample = torch.where(is_seg, self.seg_weight * focal, bce)
        n_seg = int(is_seg.sum())
        n_cls = int(is_seg.numel()) - n_seg
        zero = per_sample.new_zeros(())
        return SegConditionedLosses(
            loss=per_sample.mean(),
            cls=bce[~is_seg].mean() if n_cls else zero,
            seg=focal[is_seg].mean() if n_seg else zero,
            n_cls=n_cls,
            n_seg=n_seg,
        )
