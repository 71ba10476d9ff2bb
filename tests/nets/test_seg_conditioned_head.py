"""Uniferum heads: the focal loss against its formula, and task-type masking in a mixed batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.nets.seg_conditioned_head import HeadOutput, SegConditionedHead


def _focal_by_formula(logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """FL = -alpha_t (1 - p_t)^gamma log(p_t), elementwise (Lin et al. 2017)."""
    p = torch.sigmoid(logits)
    p_t = torch.where(target == 1, p, 1 - p)
    alpha_t = torch.where(target == 1, torch.full_like(p, alpha), torch.full_like(p, 1 - alpha))
    return -alpha_t * (1 - p_t) ** gamma * torch.log(p_t)


def _batch(n: int = 6, tokens: int = 5, u: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cls_logits = torch.randn(n, generator=g, requires_grad=True)
    seg_logits = torch.randn(n, tokens, u**3, generator=g, requires_grad=True)
    seg_target = (torch.rand(n, tokens, u**3, generator=g) > 0.7).float()
    is_seg = torch.tensor([False, True, False, True, True, False][:n])
    cls_target = torch.tensor([1.0, float("nan"), 0.0, float("nan"), float("nan"), 1.0][:n])
    seg_target[~is_seg] = 0.0
    return cls_logits, seg_logits, cls_target, seg_target, is_seg


def test_focal_loss_matches_its_formula() -> None:
    head = SegConditionedHead(hidden=8, u=2, focal_alpha=0.25, focal_gamma=2.0, seg_weight=10.0)
    cls_logits, seg_logits, cls_target, seg_target, _ = _batch()
    all_seg = torch.ones(6, dtype=torch.bool)
    losses = head.losses(HeadOutput(cls_logits, seg_logits), cls_target, seg_target, all_seg)
    per_sample = _focal_by_formula(seg_logits, seg_target, 0.25, 2.0).mean(dim=(1, 2))
    assert float(losses.seg.detach()) == pytest.approx(float(per_sample.detach().mean()), rel=1e-5)
    assert float(losses.loss.detach()) == pytest.approx(float(10.0 * per_sample.detach().mean()), rel=1e-5)


def test_total_is_the_batch_mean_of_each_samples_own_loss() -> None:
    head = SegConditionedHead(hidden=8, u=2)
    cls_logits, seg_logits, cls_target, seg_target, is_seg = _batch()
    losses = head.losses(HeadOutput(cls_logits, seg_logits), cls_target, seg_target, is_seg)
    bce = F.binary_cross_entropy_with_logits(cls_logits, torch.nan_to_num(cls_target), reduction="none")
    focal = _focal_by_formula(seg_logits, seg_target, 0.25, 2.0).mean(dim=(1, 2))
    expected = torch.where(is_seg, 10.0 * focal, bce).mean()
    assert float(losses.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(losses.cls.detach()) == pytest.approx(float(bce[~is_seg].detach().mean()), rel=1e-5)
    assert (losses.n_cls, losses.n_seg) == (3, 3)
    assert torch.isfinite(losses.loss)


def test_classification_samples_give_no_segmentation_gradient_and_the_reverse() -> None:
    head = SegConditionedHead(hidden=8, u=2)
    cls_logits, seg_logits, cls_target, seg_target, is_seg = _batch()
    # Targets a sample does not own are garbage: they must not matter.
    seg_target[~is_seg] = 1.0
    head.losses(HeadOutput(cls_logits, seg_logits), cls_target, seg_target, is_seg).loss.backward()
    assert cls_logits.grad is not None and seg_logits.grad is not None
    assert torch.all(cls_logits.grad[is_seg] == 0), "a segmentation sample contributed classification loss"
    assert torch.all(cls_logits.grad[~is_seg] != 0)
    assert torch.all(seg_logits.grad[~is_seg] == 0), "a classification sample contributed segmentation loss"
    assert seg_logits.grad[is_seg].abs().sum() > 0
    assert torch.isfinite(cls_logits.grad).all() and torch.isfinite(seg_logits.grad).all()


def test_head_shapes() -> None:
    head = SegConditionedHead(hidden=16, u=4)
    out = head(torch.randn(3, 16), torch.randn(3, 7, 16))
    assert out.cls_logits.shape == (3,)
    assert out.seg_logits.shape == (3, 7, 64)
