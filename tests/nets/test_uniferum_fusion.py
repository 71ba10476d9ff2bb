"""Uniferum fusion: the first N layers of the configured text model over [CLS] + visual + [SEP] + task."""

from __future__ import annotations

import os

import torch
from transformers import AutoModel

from lightning_modules.nets.text_encoder import load_tokenizer, resolve_text_model_path
from lightning_modules.nets.uniferum_fusion import TaskFusion

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_layers_are_the_first_n_of_the_text_model() -> None:
    fusion = TaskFusion("minilm", num_layers=4, visual_dim=32)
    full = AutoModel.from_pretrained(resolve_text_model_path("minilm"))
    assert len(fusion.model.encoder.layer) == 4 < len(full.encoder.layer)
    for i in range(4):
        ours, theirs = fusion.model.encoder.layer[i].state_dict(), full.encoder.layer[i].state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert torch.equal(fusion.model.embeddings.word_embeddings.weight, full.embeddings.word_embeddings.weight)
    assert fusion.model.training, "the fusion trains with dropout like any fresh module"


def test_outputs_and_task_padding_is_ignored() -> None:
    torch.manual_seed(0)
    fusion = TaskFusion("minilm", num_layers=2, visual_dim=16).eval()
    tokenizer = load_tokenizer("minilm")
    texts = ["Diagnose the presence of cardiomegaly in the heart", "Segment lungs in the image."]
    tokens = tokenizer(texts, padding="longest", add_special_tokens=False, return_tensors="pt")
    visual = fusion.project(torch.randn(2, 6, 16))
    out = fusion(visual, tokens["input_ids"], tokens["attention_mask"])
    assert out.cls.shape == (2, fusion.hidden) and out.visual.shape == (2, 6, fusion.hidden)
    # The shorter text alone (no padding) gives the same outputs as inside the padded batch.
    alone = tokenizer(texts[1:], add_special_tokens=False, return_tensors="pt")
    single = fusion(visual[1:], alone["input_ids"], alone["attention_mask"])
    torch.testing.assert_close(single.cls, out.cls[1:], rtol=1e-4, atol=1e-5)
    # The task text changes the [CLS] state: the output is conditioned on it.
    swapped = fusion(visual[:1], tokens["input_ids"][1:], tokens["attention_mask"][1:])
    assert not torch.allclose(swapped.cls, out.cls[:1], atol=1e-3)
