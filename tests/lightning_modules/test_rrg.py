"""Report-generation plumbing: per-step mode draw, validation loss, config, parts from config."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ctvlp.config.loader import load_experiment
from lightning_modules import rrg
from lightning_modules.nets.cappa_head import IGNORE_INDEX, CapPaHead


def test_mode_draw_follows_parallel_prob_and_is_a_function_of_seed_and_step():
    assert not any(rrg.draw_causal(0, step, 1.0) for step in range(200))
    assert all(rrg.draw_causal(0, step, 0.0) for step in range(200))
    draws = [rrg.draw_causal(0, step, 0.25) for step in range(2000)]
    assert sum(draws) / len(draws) == pytest.approx(0.75, abs=0.04)  # causal = 1 - parallel_prob
    assert draws == [rrg.draw_causal(0, step, 0.25) for step in range(2000)]  # same on resume/ranks
    assert draws != [rrg.draw_causal(1, step, 0.25) for step in range(2000)]


def test_mode_weights_keep_only_trained_modes():
    assert rrg.mode_weights(1.0) == {"parallel": 1.0}
    assert rrg.mode_weights(0.0) == {"causal": 1.0}
    assert rrg.mode_weights(0.75) == {"parallel": 0.75, "causal": 0.25}


def test_expected_loss_weights_the_two_modes():
    torch.manual_seed(0)
    head = CapPaHead(vocab_size=7, width=16, depth=1, heads=2, image_dim=8, max_len=5).eval()
    image = torch.randn(2, 3, 8)
    targets = {
        "input_ids": torch.randint(0, 7, (2, 5)),
        "parallel_input_ids": torch.tensor([[1, 2, 7, 7, 7], [2, 1, 7, 7, 7]]),
        "labels": torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5]] * 2),
    }
    causal = head.caption_loss(image, targets, causal=True)
    parallel = head.caption_loss(image, targets, causal=False)
    torch.testing.assert_close(rrg.expected_loss(head, image, targets, 1.0), parallel)
    torch.testing.assert_close(rrg.expected_loss(head, image, targets, 0.0), causal)
    torch.testing.assert_close(rrg.expected_loss(head, image, targets, 0.25), 0.25 * parallel + 0.75 * causal)


def test_colipri_cr_has_the_paper_settings():
    cfg = load_experiment("colipri_cr", overrides=["data.root=/data/ct-rate"])
    assert cfg.module == "colipri"
    assert cfg.objectives.rrg.enabled is True
    paper = cfg.objectives.rrg
    assert (paper.weight, paper.depth, paper.parallel_prob) == (0.3, 6, 1.0)
    colipri_c = load_experiment("colipri_c", overrides=["data.root=/data/ct-rate"])
    assert colipri_c.objectives.rrg.enabled is False
    # Everything but the objective and the name is COLIPRI-C.
    for key in ("data", "model", "loss", "optim", "trainer", "evaluation"):
        assert cfg[key] == colipri_c[key], key
    cappa = load_experiment("cappa", overrides=["data.root=/data/ct-rate"])
    assert cappa.module == "cappa" and cappa.objectives.rrg == cfg.objectives.rrg


def test_head_and_targets_from_config():
    cfg = load_experiment("colipri_cr", "cpu_demo")
    targets = rrg.target_builder(cfg)
    head = rrg.build_head(cfg, targets, image_dim=int(cfg.model.proj_dim))
    assert targets.num_slots == cfg.objectives.rrg.slots
    assert head.max_len == targets.length == targets.header_length + targets.num_slots
    assert head.vocab_size == targets.vocab_size and head.mask_token_id == targets.mask_token_id
    assert len(head.blocks) == cfg.objectives.rrg.depth
    bad = OmegaConf.merge(cfg, {"objectives": {"rrg": {"parallel_prob": 1.5}}})
    with pytest.raises(ValueError, match="parallel_prob"):
        rrg.build_head(bad, targets, image_dim=int(cfg.model.proj_dim))
