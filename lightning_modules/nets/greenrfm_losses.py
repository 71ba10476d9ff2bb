"""GreenRFM losses: label-balanced BCE with unknown labels masked out, and CLIP on raw dot products.

Both follow the paper's "task-aligning" choices: labels are LLM-extracted with an explicit
uncertain/missing state (-1) that carries no target, positives are rare, and zero-shot inference
scores images by raw dot products, so training uses raw dot products too (no L2 normalisation,
no temperature) and lets the embedding norm carry diagnostic confidence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_modules.nets.clip_loss import _distributed_world, _local_sizes, gather_with_grad


def balanced_masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE in which a label's positives and negatives weigh the same.

    ``logits`` and ``targets`` are (B, K). A target of 1 is positive, 0 negative; anything else
    (NaN or -1: uncertain or missing) is unknown and contributes nothing. With ℓ_bk the BCE of
    sample b on label k, P_k / N_k its known positives / negatives in the batch:

        L_k = 0.5 · mean_{b∈P_k} ℓ_bk + 0.5 · mean_{b∈N_k} ℓ_bk    if P_k ≠ ∅ and N_k ≠ ∅
        L_k = mean_{b∈P_k} ℓ_bk  (or mean_{b∈N_k} ℓ_bk)          if only P_k (only N_k) ≠ ∅
        L   = mean of L_k over the labels with P_k ∪ N_k ≠ ∅

    Positives are rare (often < 5 %), so a plain mean would let negatives dominate; averaging the
    two class means gives each the weight of half the batch. When no target is known the loss is a
    zero that is still connected to ``logits`` (so every rank runs the same backward).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    logits = logits.float()
    positive = targets == 1
    negative = targets == 0
    # Unknown targets become 0 before the BCE so that NaN never enters the graph (0 · NaN = NaN).
    per_element = F.binary_cross_entropy_with_logits(logits, positive.float(), reduction="none")
    class_means = []
    for mask in (positive, negative):
        count = mask.sum(dim=0)
        class_means.append(((per_element * mask).sum(dim=0) / count.clamp(min=1), count > 0))
    (pos_mean, has_pos), (neg_mean, has_neg) = class_means
    kinds = has_pos.float() + has_neg.float()  # 0, 1 or 2 kinds of known target per label
    per_label = (pos_mean * has_pos + neg_mean * has_neg) / kinds.clamp(min=1)
    known = kinds > 0
    if not known.any():
        return logits.sum() * 0.0
    return per_label[known].mean()


def dot_product_clip_loss(image: torch.Tensor, text: torch.Tensor, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE on raw dot products (paper Eq. 3): no L2 normalisation, no temperature.

        L = 0.5 · (CE(I·Tᵀ, arange) + CE(T·Iᵀ, arange)),  I, T: (B, C), row i of each a pair.

    DDP-aware like ``ClipLoss``'s softmax path: under an initialised process group (world > 1,
    ``gather``) the embeddings of all ranks are gathered with gradients and each rank scores its
    local rows against the global columns, so the mean of the local losses is the full-batch loss.
    Computed in float32: unnormalised 768-d dot products are large and bf16 would round them.
    """
    if image.shape[0] != text.shape[0]:
        raise ValueError(f"Batch sizes differ: {image.shape[0]} images vs {text.shape[0]} texts")
    with torch.autocast(image.device.type, enabled=False):
        image, text = image.float(), text.float()
        batch = image.shape[0]
        _, world = _distributed_world()
        if gather and world > 1:
            sizes = _local_sizes(batch, image.device, world)
            all_image, offset = gather_with_grad(image, sizes)
            all_text, _ = gather_with_grad(text, sizes)
        else:
            all_image, all_text, offset = image, text, 0
        targets = torch.arange(batch, device=image.device) + offset
        return 0.5 * (
            F.cross_entropy(image @ all_text.T, targets) + F.cross_entropy(text @ all_image.T, targets)
        )


def coarse_seg_cross_entropy(
    logits: torch.Tensor, classes: torch.Tensor, cell: int, unknown: int = 255
) -> torch.Tensor:
    """Cross-entropy of coarse organ logits against the class fractions of each cell.

    ``logits`` (B, K, x, y, z): one prediction per ``cell``³ block of the crop; ``classes``
    (B, X, Y, Z) integer class maps with X = x · cell (etc.), or every voxel ``unknown`` for a
    sample without a target. The target of a cell is the fraction of its voxels in each class
    (one-hot, average-pooled by ``cell``): a soft target, so a cell on an organ boundary asks for
    the mix it holds. Mean over the cells of the samples with a target; a zero still connected to
    ``logits`` when no sample has one.
    """
    if classes.shape[0] != logits.shape[0] or any(
        s != c * cell for s, c in zip(classes.shape[1:], logits.shape[2:], strict=True)
    ):
        raise ValueError(
            f"class maps {tuple(classes.shape)} are not logits {tuple(logits.shape)} x cell {cell}"
        )
    known = (classes != unknown).flatten(1).all(dim=1)
    if not known.any():
        return logits.float().sum() * 0.0
    one_hot = F.one_hot(classes[known].long(), logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    fractions = F.avg_pool3d(one_hot, kernel_size=cell) if cell > 1 else one_hot
    return F.cross_entropy(logits[known].float(), fractions)
