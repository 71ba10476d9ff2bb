"""GreenRFMModule's two stages: which losses and parameters each trains, the shared classifier,
the per-step learning rates and weight decay, and the optimiser reset at the boundary."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.labels import CT_RATE_LABELS
from lightning_modules.greenrfm import GreenRFMModule, cosine_lr
from lightning_modules.nets.text_encoder import load_tokenizer

STEPS = 10


@pytest.fixture(scope="module")
def module() -> GreenRFMModule:
    torch.manual_seed(0)
    return GreenRFMModule.from_sections(
        module="greenrfm",
        data={"root": "unused", "crop_size": 32},
        model={"image": {"arch": "r3d_18", "stem": 4}, "text": {"name_or_path": "minilm"}, "proj_dim": 16},
        trainer={"max_steps": STEPS},
    )


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    tokens = load_tokenizer("minilm")(
        ["Pleural effusion.", "No findings.", "Cardiomegaly.", "Normal."], padding=True, return_tensors="pt"
    )
    labels = torch.zeros(4, len(CT_RATE_LABELS))
    labels[0, 0] = labels[2, 1] = 1.0
    labels[3] = math.nan  # an unlabelled volume
    generator = torch.Generator().manual_seed(0)
    organ_classes = torch.randint(0, 6, (4, 32, 32, 32), generator=generator, dtype=torch.uint8)
    organ_classes[1] = 255  # a volume without organ masks
    return {
        "image": torch.randn(4, 1, 32, 32, 32, generator=generator),
        "labels": labels,
        "organ_classes": organ_classes,
        **tokens,
    }


def _grads(module: GreenRFMModule, loss: torch.Tensor) -> dict[str, bool]:
    module.zero_grad()
    loss.backward()
    parts = {
        "image": module.image_encoder.trunk,
        "image_projection": module.image_encoder.projection,
        "classifier": module.classifier,
        "text_backbone": module.text_encoder.backbone,
        "text_head": module.text_encoder.head,
        "text_projection": module.text_encoder.projection,
        "seg_decoder": module.seg_decoder,
    }
    return {
        name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
        for name, part in parts.items()
    }


def test_stage_one_supervises_each_encoder_on_its_own(module, batch):
    losses = module.stage_losses(batch, "supervised")
    assert set(losses) == {"cls_image", "cls_text", "seg"}
    total = module.total_loss(losses)
    assert total.item() == pytest.approx(sum(loss.item() for loss in losses.values()), rel=1e-6)
    grads = _grads(module, total)
    # image through the (later shared) classifier and the coarse segmentation decoder, text
    # through its [CLS] head; no projection of the text and no alignment yet
    assert grads == {
        "seg_decoder": True,
        "image": True,
        "image_projection": True,
        "classifier": True,
        "text_backbone": True,
        "text_head": True,
        "text_projection": False,
    }


def test_stage_two_aligns_through_one_shared_classifier(module, batch):
    losses = module.stage_losses(batch, "alignment")
    assert set(losses) == {"clip", "cls_image", "cls_text"}
    total = module.total_loss(losses)
    value = {name: loss.item() for name, loss in losses.items()}
    assert total.item() == pytest.approx(
        value["clip"] + 0.5 * (value["cls_image"] + value["cls_text"]), rel=1e-6
    )
    weight = module.classifier.weight
    from_image = torch.autograd.grad(losses["cls_image"], weight, retain_graph=True)[0]
    from_text = torch.autograd.grad(losses["cls_text"], weight, retain_graph=True)[0]
    assert from_image.abs().sum() > 0 and from_text.abs().sum() > 0  # both modalities reach it
    grads = _grads(module, total)
    assert grads["text_projection"] and grads["image_projection"] and not grads["text_head"]
    assert not grads["seg_decoder"]  # L_seg is stage 1's
    # the CLIP term does not touch the classifier: its gradient is lambda x (image + text paths)
    assert torch.allclose(weight.grad, 0.5 * (from_image + from_text), atol=1e-6)


def test_learning_rates_and_weight_decay_per_step(module):
    # Stage 1 = steps 0..4: cosine from 1e-4 (image) and 1e-5 (text) to 1e-6 over 5 steps.
    assert module.stage(4) == "supervised" and module.stage(5) == "alignment"
    assert module.stage_hparams(0) == [(1e-4, 1e-4), (1e-5, 1e-4)]
    half = module.stage_hparams(2)  # cos(pi * 2/5)
    assert half[0][0] == pytest.approx(1e-6 + 0.5 * (1e-4 - 1e-6) * (1 + math.cos(math.pi * 0.4)))
    assert half[1][0] == pytest.approx(1e-6 + 0.5 * (1e-5 - 1e-6) * (1 + math.cos(math.pi * 0.4)))
    # Stage 2: one lr, no weight decay, no schedule.
    assert module.stage_hparams(5) == module.stage_hparams(9) == [(1e-5, 0.0), (1e-5, 0.0)]
    assert cosine_lr(5, 5, 1e-4, 1e-6) == pytest.approx(1e-6)
