import pytest
import torch
from torch import nn

from lightning_modules.nets.attention_pool import (
    AttentionPool1D,
    MaxPool1D,
    MeanPool1D,
    MultiLearnedQueryAttentionPool1D,
    build_pooler,
)


def _reference(pool: AttentionPool1D, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Hand-written: an MHA with the same weights, one query = mean of the valid tokens."""
    mha = nn.MultiheadAttention(x.shape[-1], pool.attn.num_heads, batch_first=True)
    mha.load_state_dict(pool.attn.state_dict())
    outputs = []
    for b in range(x.shape[0]):
        tokens = x[b : b + 1, valid[b]]
        query = tokens.mean(dim=1, keepdim=True)
        out, _ = mha(query, tokens, tokens)
        outputs.append(out[0, 0])
    return torch.stack(outputs)


def test_matches_hand_written_masked_attention():
    torch.manual_seed(0)
    pool = AttentionPool1D(16, 4).eval()
    x = torch.randn(3, 7, 16)
    valid = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]).bool()
    with torch.no_grad():
        torch.testing.assert_close(pool(x, valid.long()), _reference(pool, x, valid))
        torch.testing.assert_close(pool(x), _reference(pool, x, torch.ones_like(valid)))


def test_padding_tokens_do_not_change_output():
    torch.manual_seed(0)
    pool = AttentionPool1D(16, 2).eval()
    x = torch.randn(2, 5, 16)
    padded = torch.cat([x, 100 * torch.randn(2, 3, 16)], dim=1)
    mask = torch.cat([torch.ones(2, 5), torch.zeros(2, 3)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(pool(padded, mask), pool(x))


def test_parameter_names_match_colipri():
    assert set(AttentionPool1D(16, 2).state_dict()) == {
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
    }
    multi = MultiLearnedQueryAttentionPool1D(16, 2)
    assert multi.query.shape == (1, 4, 16)
    assert multi(torch.randn(2, 5, 16), torch.ones(2, 5)).shape == (2, 16)


def test_to_dense_equals_value_then_out_projection():
    torch.manual_seed(0)
    dim = 12
    pool = AttentionPool1D(dim, 3)
    feature_map = torch.randn(2, dim, 3, 4, 5)
    w_v = pool.attn.in_proj_weight[2 * dim :]
    b_v = pool.attn.in_proj_bias[2 * dim :]
    with torch.no_grad():
        tokens = feature_map.permute(0, 2, 3, 4, 1)  # (B, x, y, z, C)
        expected = (tokens @ w_v.T + b_v) @ pool.attn.out_proj.weight.T + pool.attn.out_proj.bias
        expected = expected.permute(0, 4, 1, 2, 3)
        torch.testing.assert_close(pool.to_dense()(feature_map), expected)
        torch.testing.assert_close(pool.forward_dense(feature_map), expected)


def test_dense_equals_pool_for_a_single_token():
    torch.manual_seed(0)
    pool = AttentionPool1D(8, 2).eval()
    x = torch.randn(2, 1, 8)
    with torch.no_grad():
        dense = pool.to_dense()(x.permute(0, 2, 1)[..., None, None])  # (B, C, 1, 1, 1)
        torch.testing.assert_close(dense.flatten(1), pool(x))


def test_simple_poolers_and_errors():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert MeanPool1D()(x, mask).item() == 2.0
    assert MaxPool1D()(x, mask).item() == 3.0
    with pytest.raises(ValueError, match="at least one valid token"):
        AttentionPool1D(1, 1)(x, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="Unknown pooler"):
        build_pooler("cls", 8, 2)


def _hand_set_pool(pool: AttentionPool1D) -> None:
    """Value projection 2x + (1, 0), output projection swaps the channels and adds (0, -1)."""
    with torch.no_grad():
        pool.attn.in_proj_weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 2 + [[2.0, 0.0], [0.0, 2.0]]))
        pool.attn.in_proj_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        pool.attn.out_proj.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        pool.attn.out_proj.bias.copy_(torch.tensor([0.0, -1.0]))


@pytest.mark.parametrize(
    "pool", [AttentionPool1D(2, 1), MultiLearnedQueryAttentionPool1D(2, 1, num_queries=3)]
)
def test_token_embeddings_are_the_pooled_output_when_attention_is_one_hot(pool: AttentionPool1D):
    _hand_set_pool(pool)
    tokens = torch.tensor([[[5.0, -4.0], [1.0, 3.0], [-2.0, 7.0]]])
    with torch.no_grad():
        maskclip = pool.token_embeddings(tokens)
        # token (1, 3): value (2*1 + 1, 2*3) = (3, 6); swapped (6, 3); plus (0, -1) -> (6, 2)
        torch.testing.assert_close(maskclip[0, 1], torch.tensor([6.0, 2.0]))
        torch.testing.assert_close(maskclip[0, 0], torch.tensor([-8.0, 10.0]))
        # Only token 1 valid: every attention weight is one-hot on it.
        pooled = pool(tokens, torch.tensor([[0, 1, 0]]))
    torch.testing.assert_close(pooled[0], maskclip[0, 1])
    feature_map = tokens.permute(0, 2, 1)[..., None, None]  # (B, C, 3, 1, 1)
    torch.testing.assert_close(pool.forward_dense(feature_map).flatten(2).permute(0, 2, 1), maskclip)
