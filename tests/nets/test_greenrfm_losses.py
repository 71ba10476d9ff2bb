"""GreenRFM losses and heads against hand-computed values."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lightning_modules.nets.greenrfm_encoders import CoarseSegDecoder
from lightning_modules.nets.greenrfm_losses import (
    balanced_masked_bce,
    coarse_seg_cross_entropy,
    dot_product_clip_loss,
)

NAN = math.nan
LN2 = math.log(2.0)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# BCE(z, 1) = softplus(-z), BCE(z, 0) = softplus(z). B = 3 samples, K = 4 labels:
#   label 0: positive b0 (z=0), negatives b1 (z=1), b2 (z=-2)
#            L0 = 0.5·ln2 + 0.5·(softplus(1) + softplus(-2))/2            = 0.7066210149202714
#   label 1: positives b0 (z=3), b1 (z=-1), negative b2 (z=0)
#            L1 = 0.5·(softplus(-3) + softplus(1))/2 + 0.5·ln2            = 0.6870358500529639
#   label 2: b0 NaN, b1 -1 (unknown), only positive b2 (z=2): L2 = softplus(-2) = 0.1269280110429725
#   label 3: all unknown (-1, NaN, -1): left out of the mean
#   loss = (L0 + L1 + L2) / 3 = 0.5068616253387359
LOGITS = torch.tensor([[0.0, 3.0, 1.0, 0.0], [1.0, -1.0, 0.0, 3.0], [-2.0, 0.0, 2.0, 5.0]])
TARGETS = torch.tensor([[1.0, 1.0, NAN, -1.0], [0.0, 1.0, -1.0, NAN], [0.0, 0.0, 1.0, -1.0]])


def test_balanced_masked_bce_matches_hand_computed_value() -> None:
    by_hand = (
        0.5 * LN2
        + 0.5 * (softplus(1) + softplus(-2)) / 2
        + 0.5 * (softplus(-3) + softplus(1)) / 2
        + 0.5 * LN2
        + softplus(-2)
    ) / 3
    assert by_hand == pytest.approx(0.5068616253387359, abs=1e-12)
    assert balanced_masked_bce(LOGITS, TARGETS).item() == pytest.approx(0.5068616253387359, abs=1e-6)


def test_nan_and_minus_one_mask_the_same_and_keep_gradients_finite() -> None:
    logits = LOGITS.clone().requires_grad_(True)
    loss = balanced_masked_bce(logits, TARGETS)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # Unknown entries get no gradient; label 3 is all unknown.
    unknown = ~((TARGETS == 0) | (TARGETS == 1))
    assert (logits.grad[unknown] == 0).all()
    as_minus_one = torch.nan_to_num(TARGETS, nan=-1.0)
    assert balanced_masked_bce(LOGITS, as_minus_one).item() == pytest.approx(loss.item(), abs=1e-7)


def test_positives_and_negatives_weigh_the_same_whatever_their_counts() -> None:
    # One positive (z=0, ln2) against three negatives (z=0, ln2 each; z=2, softplus(2)):
    # 0.5·ln2 + 0.5·(2·ln2 + softplus(2))/3, not the plain mean (3·ln2 + softplus(2))/4.
    logits = torch.tensor([[0.0], [0.0], [0.0], [2.0]])
    targets = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    by_hand = 0.5 * LN2 + 0.5 * (2 * LN2 + softplus(2)) / 3
    assert balanced_masked_bce(logits, targets).item() == pytest.approx(by_hand, abs=1e-6)


def test_all_unknown_gives_a_zero_with_gradient() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    loss = balanced_masked_bce(logits, torch.tensor([[NAN, -1.0, NAN], [-1.0, -1.0, NAN]]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(2, 3))


def test_dot_product_clip_loss_matches_hand_computed_value() -> None:
    # I = [[1, 0], [0, 2]], T = [[1, 0], [1, 1]], raw dot products (no normalisation, T = 1):
    #   I·Tᵀ = [[1, 1], [0, 2]]: CE rows ln2, ln(1+e²)-2 = softplus(-2)   mean 0.4100375958014589
    #   T·Iᵀ = [[1, 0], [1, 2]]: CE rows ln(e+1)-1 = softplus(-1),
    #                            ln(e+e²)-2 = softplus(1)-1               mean 0.3132616875182228
    #   loss = 0.5·(0.4100375958 + 0.3132616875) = 0.3616496416598408
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    by_hand = 0.5 * ((LN2 + softplus(-2)) / 2 + (softplus(-1) + softplus(1) - 1) / 2)
    assert by_hand == pytest.approx(0.3616496416598408, abs=1e-12)
    assert dot_product_clip_loss(image, text).item() == pytest.approx(0.3616496416598408, abs=1e-6)
    # Norms matter (no L2 normalisation): doubling the embeddings changes the loss.
    assert dot_product_clip_loss(2 * image, text).item() != pytest.approx(0.3616496416598408, abs=1e-3)


DDP_WORLD = 2
DDP_BATCH = 8


def _clip_loss_and_grads(rows: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Identical tiny towers on every rank; the loss of ``rows`` of one fixed batch, and its grads."""
    torch.manual_seed(0)
    towers = torch.nn.ModuleDict({"image": torch.nn.Linear(5, 6), "text": torch.nn.Linear(4, 6)})
    image_inputs, text_inputs = torch.randn(DDP_BATCH, 5), torch.randn(DDP_BATCH, 4)
    loss = dot_product_clip_loss(towers["image"](image_inputs[rows]), towers["text"](text_inputs[rows]))
    loss.backward()
    return loss.detach(), {name: p.grad.detach().clone() for name, p in towers.named_parameters()}


def _ddp_worker(rank: int, port: int, out_path: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=DDP_WORLD)
    half = DDP_BATCH // DDP_WORLD
    loss, grads = _clip_loss_and_grads(slice(rank * half, (rank + 1) * half))
    for tensor in (loss, *grads.values()):  # DDP: the mean over ranks of the loss and the grads
        dist.all_reduce(tensor)
        tensor /= DDP_WORLD
    if rank == 0:
        torch.save((loss, grads), out_path)
    dist.destroy_process_group()


def test_dot_product_clip_loss_under_ddp_equals_the_full_batch(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out_path = tmp_path / "ddp.pt"
    # fork, not spawn: the children inherit the imported modules instead of re-importing torch and
    # timm (seconds each on 2 cores); they run CPU-only gloo, which is fork-safe.
    mp.start_processes(
        _ddp_worker, args=(port, str(out_path)), nprocs=DDP_WORLD, join=True, start_method="fork"
    )
    ddp_loss, ddp_grads = torch.load(out_path)
    loss, grads = _clip_loss_and_grads(slice(0, DDP_BATCH))
    torch.testing.assert_close(ddp_loss, loss, rtol=0, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(ddp_grads[name], grad, rtol=0, atol=1e-5, msg=name)


def test_dot_product_clip_loss_rejects_unpaired_batches() -> None:
    with pytest.raises(ValueError, match="Batch sizes differ"):
        dot_product_clip_loss(torch.zeros(2, 3), torch.zeros(3, 3))


def test_coarse_seg_decoder_upsamples_to_the_requested_size() -> None:
    decoder = CoarseSegDecoder(num_classes=5, in_channels=8, hidden=4)
    feature_map = torch.randn(2, 8, 2, 3, 3)
    assert decoder(feature_map).shape == (2, 5, 2, 3, 3)
    logits = decoder(feature_map, size=(8, 12, 12))
    assert logits.shape == (2, 5, 8, 12, 12)
    loss = F.cross_entropy(logits, torch.randint(0, 5, (2, 8, 12, 12)))
    loss.backward()
    assert all(p.grad is not None for p in decoder.parameters())


def test_coarse_seg_cross_entropy_uses_each_cells_class_fractions() -> None:
    # One sample, 2 classes, cell 2: the crop is 2 x 2 x 4 voxels = two cells along z. Cell 0 is
    # all class 0; cell 1 holds 6 voxels of class 1 and 2 of class 0 (fractions 0.25 / 0.75).
    classes = torch.zeros(1, 2, 2, 4, dtype=torch.uint8)
    classes[0, :, :, 2:] = 1
    classes[0, 0, 0, 2] = classes[0, 1, 1, 3] = 0
    logits = torch.zeros(1, 2, 1, 1, 2)
    logits[0, 1, 0, 0, 1] = math.log(3.0)  # cell 1 predicts p = (0.25, 0.75): its own mix
    loss = coarse_seg_cross_entropy(logits, classes, cell=2)
    # cell 0: -log 0.5; cell 1: -(0.25 log 0.25 + 0.75 log 0.75), the mix's entropy
    expected = (math.log(2.0) - (0.25 * math.log(0.25) + 0.75 * math.log(0.75))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_coarse_seg_cross_entropy_skips_samples_without_a_target() -> None:
    classes = torch.zeros(2, 2, 2, 2, dtype=torch.uint8)
    classes[1] = 255  # the second crop's volume has no organ masks
    logits = torch.randn(2, 3, 1, 1, 1, requires_grad=True)
    loss = coarse_seg_cross_entropy(logits, classes, cell=2)
    assert loss.item() == pytest.approx(-torch.log_softmax(logits[0, :, 0, 0, 0], 0)[0].item(), abs=1e-6)
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    # no target in the batch: a zero that still reaches the logits (every DDP rank runs backward)
    none = coarse_seg_cross_entropy(logits, torch.full_like(classes, 255), cell=2)
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="cell 4"):
        coarse_seg_cross_entropy(logits, classes, cell=4)
