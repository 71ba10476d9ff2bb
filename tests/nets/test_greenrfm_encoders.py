"""GreenRFM's encoders: the image encoder's layout and pooling, and the frozen text encoder's
memoised [CLS] states (same values as a fresh forward, one backbone call per new sequence)."""

from __future__ import annotations

import torch

from lightning_modules.nets.greenrfm_encoders import ClsTextEncoder, GreenRFMImageEncoder
from lightning_modules.nets.r3d_encoder import build_r3d_encoder
from lightning_modules.nets.text_encoder import eval_mode, load_tokenizer

REPORTS = ["Pleural effusion on the left.", "No findings.", "Cardiomegaly.", "Normal lungs and heart."]


def test_image_encoder_pools_the_feature_map_it_returns() -> None:
    torch.manual_seed(0)
    encoder = GreenRFMImageEncoder(build_r3d_encoder(4), latent_dim=16).eval()
    images = torch.randn(2, 1, 64, 48, 32)  # (x, y, z): non-cubic, so an axis mix-up shows
    with torch.no_grad():
        out = encoder(images)
        feature_map = encoder.feature_map(images)
    assert feature_map.shape == (2, 512, 2, 2, 1) and out.grid == (2, 2, 1)
    torch.testing.assert_close(out.pooled, encoder.pool(feature_map))
    torch.testing.assert_close(out.pooled, encoder.projection(out.tokens.mean(dim=1)))


def test_frozen_text_encoder_memoises_cls_states() -> None:
    torch.manual_seed(0)
    encoder = ClsTextEncoder("minilm", num_classes=3, latent_dim=8, freeze_backbone=True, memo_size=3)
    tokens = load_tokenizer("minilm")(REPORTS, padding=True, return_tensors="pt")
    calls: list[int] = []
    encoder.backbone.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    with torch.no_grad(), eval_mode(encoder.backbone):  # frozen = eval mode: no dropout
        fresh = encoder.backbone(**tokens).last_hidden_state[:, 0]
    calls.clear()
    first = encoder.cls(tokens["input_ids"][:2], tokens["attention_mask"][:2])
    torch.testing.assert_close(first, fresh[:2], rtol=0, atol=1e-5)
    assert len(calls) == 2  # one unpadded forward per new sequence
    # rows 0 and 1 are known: only rows 2 and 3 reach the backbone
    every = encoder.cls(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(every, fresh, rtol=0, atol=1e-5)
    assert len(calls) == 4
    # a state depends on the tokens only, not on the batch's padding
    alone = load_tokenizer("minilm")(REPORTS[2:3], return_tensors="pt")
    assert torch.equal(encoder.cls(alone["input_ids"], alone["attention_mask"])[0], every[2])
    assert len(encoder._memo) == 3  # memo_size: the least recently used sequence left
    encoder.cls(tokens["input_ids"][1:], tokens["attention_mask"][1:])
    assert len(calls) == 4  # rows 1..3 were the three most recent
    # the head and the projection still train through memoised states
    encoder(tokens["input_ids"][1:], tokens["attention_mask"][1:]).sum().backward()
    assert encoder.projection.weight.grad is not None
    # new weights make the memo stale
    encoder.load_state_dict(encoder.state_dict())
    assert len(encoder._memo) == 0


def test_trainable_text_encoder_does_not_memoise() -> None:
    encoder = ClsTextEncoder("minilm", num_classes=3, latent_dim=8, freeze_backbone=False)
    tokens = load_tokenizer("minilm")(REPORTS[:2], padding=True, return_tensors="pt")
    encoder(tokens["input_ids"], tokens["attention_mask"]).sum().backward()
    assert not encoder._memo
    assert any(p.grad is not None for p in encoder.backbone.parameters())
