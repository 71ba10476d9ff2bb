import math

import pytest
import torch

from lightning_modules.nets.clip_loss import ClipLoss

# 3×3 toy. After L2 normalisation image_i = e_i and text = (e1, e2, e1), so the cosine matrix is
#   C = [[1, 0, 1],
#        [0, 1, 0],
#        [0, 0, 0]]   (rows: images, columns: texts)
# The raw inputs are scaled by different norms to check that the loss normalises them.
IMAGES = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.5]])
TEXTS = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0], [7.0, 0.0, 0.0]])


def test_softmax_matches_hand_computed_value():
    # temperature 1 -> logits = C.
    # image->text CE rows: log(2e+1) - 1, log(e+2) - 1, log(3)       mean 0.8373637...
    # text->image CE rows: log(e+2) - 1, log(e+2) - 1, log(e+2)      mean 0.8847648...
    # loss = 0.5 * (0.8373637 + 0.8847648) = 0.8610643247424274
    loss_fn = ClipLoss("softmax", init_temperature=1.0)
    e = math.e
    by_hand = 0.5 * (
        (math.log(2 * e + 1) - 1 + math.log(e + 2) - 1 + math.log(3)) / 3
        + (2 * (math.log(e + 2) - 1) + math.log(e + 2)) / 3
    )
    assert by_hand == pytest.approx(0.8610643247424274, abs=1e-12)
    assert loss_fn(IMAGES, TEXTS).item() == pytest.approx(0.8610643247424274, abs=1e-6)


def test_sigmoid_matches_hand_computed_value():
    # temperature 1, bias -1 -> logits = C - 1 = [[0, -1, 0], [-1, 0, -1], [-1, -1, -1]];
    # z = +1 on the diagonal, -1 elsewhere; -log σ(z·l) per pair:
    #   row 1: ln2, ln(1+e^-1), ln2        row 2: ln(1+e^-1), ln2, ln(1+e^-1)
    #   row 3: ln(1+e^-1), ln(1+e^-1), ln(1+e)
    # sum = 3 ln2 + 5 ln(1+e^-1) + ln(1+e) = 4.959011666789173; / B=3 -> 1.6530038889297243
    loss_fn = ClipLoss("sigmoid", init_temperature=1.0, sigmoid_init_bias=-1.0)
    by_hand = (3 * math.log(2) + 5 * math.log1p(math.exp(-1)) + math.log1p(math.e)) / 3
    assert by_hand == pytest.approx(1.6530038889297243, abs=1e-12)
    assert loss_fn(IMAGES, TEXTS).item() == pytest.approx(1.6530038889297243, abs=1e-6)


def test_init_and_temperature():
    softmax = ClipLoss()
    assert softmax.temperature.item() == pytest.approx(0.07)
    assert softmax.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert isinstance(softmax.logit_scale, torch.nn.Parameter)
    sigmoid = ClipLoss("sigmoid")
    assert sigmoid.logit_scale.item() == pytest.approx(math.log(10))
    assert sigmoid.logit_bias.item() == -10.0
    fixed = ClipLoss(learn_temperature=False)
    assert not list(fixed.parameters()) and "logit_scale" in fixed.state_dict()
    with pytest.raises(ValueError, match="softmax"):
        ClipLoss("hinge")  # type: ignore[arg-type]


def test_scale_is_clamped_at_100():
    loss_fn = ClipLoss(init_temperature=1e-4)
    assert loss_fn.scale.item() == pytest.approx(100.0)
    assert loss_fn.temperature.item() == pytest.approx(0.01)


def test_similarity_and_gradients():
    loss_fn = ClipLoss("softmax", init_temperature=0.5)
    sims = loss_fn.similarity(IMAGES, TEXTS)
    expected = 2.0 * torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(sims, expected)
    images = IMAGES.clone().requires_grad_(True)
    loss_fn(images, TEXTS).backward()
    assert images.grad is not None and loss_fn.logit_scale.grad is not None
