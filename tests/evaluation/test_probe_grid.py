"""The probe grid: exact attention pooling, 5 x 4 layout, independent joint training."""

from __future__ import annotations

import copy

import pytest
import torch

from evaluation.probe_grid import (
    AGGREGATORS,
    PAPER_LEARNING_RATES,
    ProbeAttentionPool,
    ProbeGrid,
    attention_heads,
    pool_jointly,
)
from lightning_modules.nets.attention_pool import (
    AttentionPool1D,
    MaxPool1D,
    MeanPool1D,
    MultiLearnedQueryAttentionPool1D,
)


@pytest.mark.parametrize(
    ("num_queries", "reference"),
    [
        (None, AttentionPool1D(24, 4)),
        (1, MultiLearnedQueryAttentionPool1D(24, 4, num_queries=1)),
        (4, MultiLearnedQueryAttentionPool1D(24, 4, num_queries=4)),
    ],
)
def test_few_query_attention_equals_multihead_attention(
    num_queries: int | None, reference: torch.nn.Module
) -> None:
    torch.manual_seed(0)
    pool = ProbeAttentionPool(24, 4, num_queries)
    reference.load_state_dict(pool.state_dict())  # same parameter names
    tokens = torch.randn(3, 40, 24)
    torch.testing.assert_close(pool(tokens), reference(tokens), atol=1e-5, rtol=1e-5)


def test_joint_pooling_equals_pooling_one_by_one() -> None:
    torch.manual_seed(0)
    pools = [ProbeAttentionPool(12, 2, 4) for _ in range(3)]
    tokens = torch.randn(2, 9, 12)
    joint = pool_jointly(pools, tokens)
    for row, pool in enumerate(pools):
        torch.testing.assert_close(joint[row], pool(tokens))


def test_grid_is_five_aggregators_times_four_learning_rates() -> None:
    grid = ProbeGrid(embed_dim=12, num_labels=3, num_heads=2)
    assert len(grid.specs) == 20
    assert {s.aggregator for s in grid.specs} == set(AGGREGATORS)
    assert sorted({s.lr for s in grid.specs}) == sorted(PAPER_LEARNING_RATES)
    assert "mean_query@lr=0.03" in grid.names
    assert [g["lr"] for g in grid.param_groups()] == [s.lr for s in grid.specs]
    assert isinstance(grid.aggregators[0], MeanPool1D) and isinstance(grid.aggregators[4], MaxPool1D)
    assert grid({"tokens": torch.randn(5, 7, 12)}).shape == (20, 5, 3)


def test_grid_logits_are_each_probes_own_head_on_its_own_pooling() -> None:
    torch.manual_seed(0)
    grid = ProbeGrid(embed_dim=12, num_labels=3, num_heads=2)
    tokens = torch.randn(4, 6, 12)
    logits = grid({"tokens": tokens})
    for index in (0, 5, 9, 13, 19):
        expected = grid.heads[index](grid.aggregators[index](tokens))
        torch.testing.assert_close(logits[index], expected)


def test_the_grid_needs_tokens() -> None:
    tokens = torch.randn(4, 6, 12)
    with pytest.raises(ValueError, match="needs token features"):
        ProbeGrid(12, 3, 2, aggregators=("avg", "max"))({"avg": tokens.mean(dim=1)})


def test_unknown_aggregator_is_rejected() -> None:
    with pytest.raises(ValueError, match="valid: avg, max"):
        ProbeGrid(12, 3, 2, aggregators=("median",))


def test_joint_training_trains_each_probe_as_if_alone() -> None:
    """Summed losses + per-probe SGD groups: a probe's update does not depend on the others."""
    torch.manual_seed(0)
    joint = ProbeGrid(8, 2, 2, aggregators=("learned_query",), lrs=(0.1, 0.01))
    alone = ProbeGrid(8, 2, 2, aggregators=("learned_query",), lrs=(0.01,))
    alone.aggregators[0] = copy.deepcopy(joint.aggregators[1])
    alone.heads[0] = copy.deepcopy(joint.heads[1])
    tokens, labels = torch.randn(6, 5, 8), torch.randint(0, 2, (6, 2)).float()
    for grid in (joint, alone):
        optimizer = torch.optim.SGD(grid.param_groups(), momentum=0.95)
        for _ in range(5):
            logits = grid({"tokens": tokens})
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, labels.expand_as(logits), reduction="none"
            ).mean(dim=(1, 2))
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
    torch.testing.assert_close(joint.heads[1].weight, alone.heads[0].weight)
    torch.testing.assert_close(joint.aggregators[1].query, alone.aggregators[0].query)


@pytest.mark.parametrize(
    ("width", "wanted", "heads"),
    [(768, 12, 12), (512, 12, 8), (96, 6, 6), (64, 6, 4), (97, 6, 1), (4, 12, 4)],
)
def test_attention_probes_take_the_largest_head_count_that_divides_the_token_width(
    width: int, wanted: int, heads: int, caplog: pytest.LogCaptureFixture
) -> None:
    """GreenRFM's r3d_18 tokens are 512 wide: 12 heads (COLIPRI's) do not divide them."""
    assert attention_heads(width, wanted) == heads
    assert ("does not divide the token width" in caplog.text) == (heads != wanted)
    grid = ProbeGrid(width, 3, wanted)
    logits = grid({"tokens": torch.randn(2, 5, width)})
    assert logits.shape == (20, 2, 3)
    attention = [m for m in grid.aggregators if hasattr(m, "attn")]
    assert attention and all(m.attn.num_heads == heads for m in attention)
    with pytest.raises(ValueError, match="at least one head"):
        attention_heads(width, 0)
