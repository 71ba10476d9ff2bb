"""Report generation (module report_generation) on a tiny random Qwen2 built from a config with an
offline tokenizer: the loss covers the report tokens only (checked against a hand computation),
RadFM's term weights, each projector learns and generates, LoRA trains only its adapters, and bad
inputs are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import config_from_sections
from lightning_modules.nets.causal_lm import write_tiny_causal_lm
from lightning_modules.nets.report_projectors import build_projector
from lightning_modules.report_generation import ReportGenerationModule
from lightning_modules.report_terms import TermMatcher, default_term_patterns

REPORTS = [
    "The heart is enlarged. There is a pleural effusion on the right.",
    "Lungs are clear. No pleural effusion. The heart is normal in size.",
]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_lm")
    return write_tiny_causal_lm(out, REPORTS * 20, vocab_size=300, hidden_size=32, layers=1, heads=2)


def _module(lm_dir: Path, **reportgen) -> ReportGenerationModule:
    torch.manual_seed(0)
    sections = {
        "lm": {"name_or_path": str(lm_dir), "train": "full", "max_length": 64},
        "num_latents": 4,
        "projector_layers": 1,
        "projector_heads": 2,
        "max_new_tokens": 24,
    }
    for key, value in reportgen.items():
        if isinstance(value, dict):
            sections[key] = {**sections.get(key, {}), **value}
        else:
            sections[key] = value
    return ReportGenerationModule.from_sections(
        module="report_generation",
        data={"crop_size": 16, "augmentation": {"level": "none"}},  # as the reportgen recipes
        model={"image": {"size": "tiny"}, "proj_dim": 32, "pool_heads": 2},
        reportgen=sections,
    )


def _images() -> torch.Tensor:
    """Two volumes that differ visibly: a bright cube in the first one only."""
    images = torch.full((2, 1, 16, 16, 16), -0.8)
    images[0, :, 4:12, 4:12, 4:12] = 0.8
    return images


def _tokens(module: ReportGenerationModule, images: torch.Tensor | None = None) -> torch.Tensor:
    """The frozen encoder's tokens of two volumes (the module's own path, token cache included)."""
    return module.image_tokens({"image": _images() if images is None else images, "image_id": ["a", "b"]})


@pytest.mark.parametrize("kind", ["mlp2x", "perceiver", "qformer"])
def test_projector_output_positions(kind: str) -> None:
    projector = build_projector(kind, vision_dim=32, lm_dim=48, width=16, num_latents=5, layers=2, heads=2)
    tokens, instruction = torch.randn(3, 7, 32), torch.randn(1, 4, 48)
    out = projector(tokens, instruction)
    assert out.shape == (3, 7 if kind == "mlp2x" else 5, 48)
    if kind == "qformer":  # the queries read the instruction: another instruction, other outputs
        assert not torch.allclose(out, projector(tokens, torch.randn(1, 4, 48)))
        with pytest.raises(ValueError, match="instruction"):
            projector(tokens)


def test_loss_is_the_mean_over_report_tokens_only(tiny_lm: Path) -> None:
    module = _module(tiny_lm).eval()
    tokens = _tokens(module)
    loss = module.report_loss(tokens, REPORTS)
    # by hand: the LM over [prompt; report; </s>], each report token (and </s>) predicted from the
    # position before it; prompt positions and padding carry no loss
    tokenizer = module.tokenizer
    prompt = module.prompt_embeddings(tokens)
    total, count = 0.0, 0
    for i, report in enumerate(REPORTS):
        ids = [*tokenizer(report, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        ids_t = torch.tensor(ids)
        inputs = torch.cat([prompt[i], module.lm.get_input_embeddings()(ids_t)]).unsqueeze(0)
        logits = module.lm(inputs_embeds=inputs).logits[0]
        start = prompt.shape[1] - 1
        ce = torch.nn.functional.cross_entropy(logits[start : start + len(ids)], ids_t, reduction="sum")
        total, count = total + ce.item(), count + len(ids)
    assert loss.item() == pytest.approx(total / count, rel=1e-4)


def test_term_weights_mark_medical_terms(tiny_lm: Path) -> None:
    matcher = TermMatcher(default_term_patterns())
    text = "Mild pleural effusion. Bones are fine."
    spans = [text[a:b] for a, b in matcher.spans(text)]
    assert "pleural effusion" in spans and not any("fine" in s for s in spans)
    module = _module(tiny_lm, term_weight=3.0)
    ids, weight = module.report_tokens([text, "Fine."])
    words = [module.tokenizer.decode([t]) for t in ids[0]]
    term = {w.strip() for w, v in zip(words, weight[0].tolist(), strict=True) if v == 3.0}
    assert "".join(sorted(term)) and all(piece in "pleural effusion" for piece in term), term
    fine = len(module.tokenizer("Fine.", add_special_tokens=False)["input_ids"])
    assert weight[1].tolist() == [1.0] * (fine + 1) + [0.0] * (ids.shape[1] - fine - 1)  # + </s>, padding 0


def test_long_reports_are_truncated_and_counted(tiny_lm: Path) -> None:
    module = _module(tiny_lm, lm={"max_length": 8})
    ids, weight = module.report_tokens([REPORTS[0] * 3, "Fine."])
    assert ids.shape[1] == 8 and ids[0, -1] == module.tokenizer.eos_token_id
    assert module.truncated_reports == 1


# Optimiser steps on two (volume, report) pairs. mlp2x maps each volume to its own report within
# 60; the perceiver and the Q-Former halve the loss as fast but still write one report for both
# volumes at 60 steps (their few latents average the random encoder's tokens), so they are only
# checked for learning and generating.
STEPS = {"mlp2x": 60, "perceiver": 30, "qformer": 30}


@pytest.mark.parametrize("kind", ["mlp2x", "perceiver", "qformer"])
def test_each_projector_learns_and_generates_from_the_image(tiny_lm: Path, kind: str) -> None:
    module = _module(tiny_lm, projector=kind)
    if kind == "perceiver":  # RadFM's image markers are tokens of the tokenizer
        assert module.marker_ids.numel() == 2
        assert module.prompt_embeddings(_tokens(module)).shape[1] == 4 + 2 + module.instruction_ids.numel()
    tokens = _tokens(module)  # the encoder is frozen: the same tokens at every step
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(STEPS[kind]):
        loss = module.report_loss(tokens, REPORTS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    module.eval()
    generated = module.generate(tokens)
    assert len(generated) == 2 and all(isinstance(g, str) for g in generated)
    if kind == "mlp2x":  # the image decides the report: each volume's generation is its own report
        assert generated[0] != generated[1], generated
        assert generated[0].startswith("The heart is enlarged"), generated


def test_lora_trains_adapters_and_projector_only(tiny_lm: Path) -> None:
    module = _module(tiny_lm, lm={"train": "lora", "lora_rank": 4, "lora_targets": ["q_proj", "v_proj"]})
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("projector.") for name in trainable)
    assert any(name.startswith("projector.") for name in trainable)
    frozen = _module(tiny_lm, lm={"train": "projector"})
    assert {n.split(".")[0] for n, p in frozen.named_parameters() if p.requires_grad} == {"projector"}


def test_unusable_lm_directories_are_clear_errors(tiny_lm: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ctvlp tiny-lm"):
        _module(tmp_path / "missing")
    no_pad = tmp_path / "no_pad"
    no_pad.mkdir()
    for file in tiny_lm.iterdir():
        (no_pad / file.name).write_bytes(file.read_bytes())
    config = json.loads((no_pad / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("pad_token", None)
    (no_pad / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    # (a qwen2 config would make transformers give its tokenizer class's default pad token)
    model_config = json.loads((no_pad / "config.json").read_text(encoding="utf-8"))
    (no_pad / "config.json").write_text(json.dumps({**model_config, "model_type": "gpt2"}), encoding="utf-8")
    with pytest.raises(ConfigError, match="no pad token"):
        _module(no_pad)
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_bytes((tiny_lm / "config.json").read_bytes())
    with pytest.raises(ConfigError, match="tokenizer"):
        _module(no_tokenizer)


def test_a_checkpoint_without_a_freezable_encoder_is_refused(tiny_lm: Path, tmp_path: Path) -> None:
    uniferum = config_from_sections({"module": "uniferum", "name": "u", "data": {"root": str(tmp_path)}})
    path = tmp_path / "uniferum.ckpt"
    torch.save({"hyper_parameters": {"config": uniferum}, "state_dict": {}}, path)
    with pytest.raises(ConfigError, match="cannot be frozen"):
        _module(tiny_lm, encoder_ckpt=str(path))
    with pytest.raises(ConfigError, match="no such checkpoint"):
        _module(tiny_lm, encoder_ckpt=str(tmp_path / "none.ckpt"))


def test_token_cache_encodes_each_volume_once_within_its_budget(tiny_lm: Path) -> None:
    module = _module(tiny_lm, token_cache_mb=1.0).eval()
    calls = []
    module.image_encoder.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    images = _images()
    direct = module.image_encoder(images).tokens
    calls.clear()
    first = _tokens(module, images)
    again = _tokens(module, images)
    assert calls == [2]  # one encoder pass for both volumes, none for the repeat
    # fp16 on the host: a miss returns what a later hit does, the encoder's tokens rounded to fp16
    assert torch.equal(first, again) and torch.equal(first, direct.half().float())
    cache = module.token_cache
    assert (cache.misses, cache.hits, cache.uncached, len(cache)) == (2, 2, 0, 2)
    assert cache.hit_rate == 0.5
    # a batch of a cached and a new volume: only the new one is encoded
    cache_b = module.image_tokens({"image": images, "image_id": ["a", "c"]})
    assert calls == [2, 1] and torch.equal(cache_b, first)
    # A budget for one volume only: the second is encoded at every visit, counted, with a warning.
    row_mb = direct[0].numel() * 2 / 2**20
    small = _module(tiny_lm, token_cache_mb=row_mb * 1.5).eval()
    for _ in range(3):
        _tokens(small, images)
    assert (small.token_cache.misses, small.token_cache.hits, small.token_cache.uncached) == (1, 2, 3)
    assert small.token_cache.hit_rate == pytest.approx(2 / 6)  # over every lookup, the uncached too


def test_token_cache_needs_the_same_input_at_every_epoch(tiny_lm: Path) -> None:
    with pytest.raises(ConfigError, match="data.augmentation.level=low"):
        ReportGenerationModule.from_sections(
            module="report_generation",
            data={"crop_size": 16, "augmentation": {"level": "low"}},
            model={"image": {"size": "tiny"}, "proj_dim": 32, "pool_heads": 2},
            reportgen={"lm": {"name_or_path": str(tiny_lm)}, "token_cache_mb": 8.0},
        )
