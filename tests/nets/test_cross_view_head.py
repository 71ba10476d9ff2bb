"""RadFound's cross-view term (nets.cross_view_head): mean of the visible tokens, MLP, symmetric
InfoNCE between the two views, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_modules.nets.cross_view_head import CrossViewHead


def _gelu(x: float) -> float:
    """GELU by its definition, x * Phi(x)."""
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _identity_head(dim: int, temperature: float) -> CrossViewHead:
    """A head whose linear layers are the identity, in evaluation mode: its batch norm divides by
    sqrt(1 + eps) (the initial running statistics: mean 0, variance 1), so the embedding is
    GELU(mean of the tokens / sqrt(1 + eps)); the eps changes no direction below."""
    head = CrossViewHead(encoder_dim=dim, proj_dim=dim, temperature=temperature).eval()
    for layer in head.project:
        if isinstance(layer, nn.Linear):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)
    return head


# Two studies, two visible tokens per view.
VIEW_A = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 3.0]]])  # means (1, 0), (0, 2)
VIEW_B = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])  # means (1, 0), (1, 1)


def _cross_entropy(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_two_studies_match_the_hand_computed_infonce() -> None:
    # Embeddings: A = (g(1), 0), (0, g(2)); B = (g(1), 0), (g(1), g(1)). Normalised: A = e1, e2;
    # B = e1, (1, 1)/sqrt 2 (GELU of a positive number is positive, of 0 is 0).
    assert _gelu(1.0) > 0 and _gelu(2.0) > 0
    r = 1 / math.sqrt(2.0)
    cos = [[1.0, r], [0.0, r]]  # rows: view A of study i, columns: view B of study j
    scale = 1 / 0.5
    a_to_b = [_cross_entropy([scale * c for c in cos[i]], i) for i in range(2)]
    b_to_a = [_cross_entropy([scale * cos[j][i] for j in range(2)], i) for i in range(2)]
    by_hand = 0.5 * (sum(a_to_b) / 2 + sum(b_to_a) / 2)
    # The same number written out: A->B rows ln(1 + e^{2(r-1)}), ln(1 + e^{-2r}); B->A rows
    # ln(1 + e^{-2}) and ln 2 (view B of study 2 is equally close to both A views).
    expanded = 0.25 * (
        math.log1p(math.exp(2 * (r - 1)))
        + math.log1p(math.exp(-2 * r))
        + math.log1p(math.exp(-2))
        + math.log(2)
    )
    assert by_hand == pytest.approx(expanded, abs=1e-12)
    assert _identity_head(2, 0.5)(VIEW_A, VIEW_B).item() == pytest.approx(by_hand, abs=1e-6)


def test_three_studies_with_unnormalised_embeddings() -> None:
    # Pooled means with different norms: A = (3, 0, 0), (0, 0.5, 0), (0, 0, 2); B = (1, 0, 0),
    # (0, 4, 0), (5, 0, 0). After GELU and normalisation A = e1, e2, e3 and B = e1, e2, e1: the cosine
    # matrix is [[1, 0, 1], [0, 1, 0], [0, 0, 0]]. Temperature 1: logits = cosines.
    head = _identity_head(3, 1.0)
    view_a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 2.0]])[:, None, :]
    view_b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 4.0, 0.0], [5.0, 0.0, 0.0]])[:, None, :]
    e = math.e
    # A->B rows: -1 + ln(2e + 1), -1 + ln(e + 2), ln 3; B->A rows (columns of C): -1 + ln(e + 2) twice,
    # and column 3 of C is (1, 0, 0) with target 3: ln(e + 2).
    a_to_b = (math.log(2 * e + 1) - 1 + math.log(e + 2) - 1 + math.log(3)) / 3
    b_to_a = (2 * (math.log(e + 2) - 1) + math.log(e + 2)) / 3
    assert head(view_a, view_b).item() == pytest.approx(0.5 * (a_to_b + b_to_a), abs=1e-6)


def test_symmetric_in_the_views_and_blind_to_token_order() -> None:
    torch.manual_seed(0)
    head = CrossViewHead(encoder_dim=8, proj_dim=4).eval()
    a, b = torch.randn(5, 6, 8), torch.randn(5, 6, 8)
    assert head(a, b).item() == pytest.approx(head(b, a).item(), abs=1e-6)
    shuffled = a[:, torch.randperm(6)]
    assert head(shuffled, b).item() == pytest.approx(head(a, b).item(), abs=1e-6)


def test_matching_views_score_lower_than_mismatched_ones() -> None:
    """Views that share their study's content beat the same views paired with another study."""
    torch.manual_seed(1)
    head = CrossViewHead(encoder_dim=8, proj_dim=8, temperature=0.1).eval()
    studies = torch.randn(6, 1, 8) * 3
    view_a = studies + 0.1 * torch.randn(6, 4, 8)
    view_b = studies + 0.1 * torch.randn(6, 4, 8)
    matched = head(view_a, view_b).item()
    mismatched = head(view_a, view_b.roll(1, dims=0)).item()
    assert matched < math.log(6) < mismatched


def test_training_mode_centres_nearly_parallel_embeddings() -> None:
    """Pooled features that share one large common part (as untrained encoders give similar scans)
    are told apart once the batch norm removes it: in training mode the matched views score far
    below ln(batch); the same head in evaluation mode (initial statistics) barely moves from it."""
    torch.manual_seed(2)
    head = CrossViewHead(encoder_dim=8, proj_dim=8, temperature=0.1)
    common = 50 * torch.randn(1, 1, 8)
    studies = torch.randn(6, 1, 8)
    view_a = common + studies + 0.05 * torch.randn(6, 4, 8)
    view_b = common + studies + 0.05 * torch.randn(6, 4, 8)
    assert head(view_a, view_b).item() < 0.5 * math.log(6)
    assert head.eval()(view_a, view_b).item() > 0.8 * math.log(6)
