import math

import pytest
import torch

from lightning_modules.nets.cappa_head import IGNORE_INDEX, CapPaHead


def _head(**kwargs) -> CapPaHead:
    config = {"vocab_size": 12, "width": 32, "depth": 2, "heads": 4, "image_dim": 16, "max_len": 16}
    return CapPaHead(**(config | kwargs))


def test_attention_masks():
    causal = CapPaHead.attention_mask(4, causal=True)
    parallel = CapPaHead.attention_mask(4, causal=False)
    assert causal.dtype == parallel.dtype == torch.bool
    assert parallel.all()
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(causal, expected)


def test_causal_mode_ignores_future_tokens_parallel_does_not():
    torch.manual_seed(0)
    head = _head().eval()
    image = torch.randn(1, 5, 16)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    changed = ids.clone()
    changed[0, -1] = 7
    with torch.no_grad():
        causal_a, causal_b = head(ids, image, causal=True), head(changed, image, causal=True)
        parallel_a, parallel_b = head(ids, image, causal=False), head(changed, image, causal=False)
    torch.testing.assert_close(causal_a[:, :-1], causal_b[:, :-1])
    assert not torch.allclose(parallel_a[:, 0], parallel_b[:, 0])
    assert causal_a.shape == (1, 6, 12)


def test_mask_token_row_and_image_conditioning():
    torch.manual_seed(0)
    head = _head().eval()
    assert head.token_embed.num_embeddings == 13 and head.mask_token_id == 12
    ids = torch.tensor([[1, 2, 12, 12]])
    with torch.no_grad():
        a = head(ids, torch.randn(1, 5, 16), causal=False)
        b = head(ids, torch.randn(1, 5, 16), causal=False)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="max_len"):
        head(torch.zeros(1, 17, dtype=torch.long), torch.randn(1, 5, 16), causal=True)


def test_loss_matches_hand_computed_cross_entropy():
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0, 0.0], [9.0, -3.0, 1.0, 0.0, 5.0]]]
    )
    labels = torch.tensor([[2, 0, IGNORE_INDEX]])
    # Token 1: uniform over 5 -> log 5. Token 2: -log(e^2 / (e^2 + 4)). Token 3 ignored.
    expected = (math.log(5.0) + math.log(1.0 + 4.0 * math.exp(-2.0))) / 2
    assert CapPaHead.loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1.02105, abs=1e-5)
    none = torch.full_like(labels, IGNORE_INDEX)
    assert CapPaHead.loss(logits.requires_grad_(), none).item() == 0.0


@pytest.fixture
def single_thread():
    """Tiny models run fastest on one thread (and do not fight a busy machine for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_overfits_one_target_in_both_modes(single_thread):
    torch.manual_seed(0)
    head = _head(max_len=12)
    start_id, mask_id = 0, head.mask_token_id
    headers = torch.tensor([[3, 7, 5]])
    slots = torch.tensor([[7, 1, 4, 5, 9, 9, 2, 11]])  # content + end token, no padding
    target = torch.cat([headers, slots], dim=1)
    labels = torch.cat([torch.full_like(headers, IGNORE_INDEX), slots], dim=1)
    causal_input = torch.cat([torch.tensor([[start_id]]), target[:, :-1]], dim=1)
    parallel_input = torch.cat([headers, torch.full_like(slots, mask_id)], dim=1)
    image = torch.randn(1, 6, 16)
    optimiser = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(150):
        causal = step % 2 == 0
        logits = head(causal_input if causal else parallel_input, image, causal=causal)
        loss = head.loss(logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    head.eval()
    for causal in (True, False):
        generated = head.generate_greedy(
            image, headers[0], num_slots=slots.shape[1], causal=causal, start_id=0
        )
        torch.testing.assert_close(generated, slots)


def test_caption_loss_is_the_hand_computed_cross_entropy_of_the_chosen_mode():
    """Toy vocabulary of 6: the loss of each mode is -mean log softmax(logits)[label] over the
    labelled positions of that mode's input, computed here by hand from the full logits."""
    torch.manual_seed(0)
    head = _head(vocab_size=6, max_len=8).eval()
    mask = head.mask_token_id
    image = torch.randn(2, 3, 16)
    targets = {
        "input_ids": torch.tensor([[0, 4, 2, 3, 1, 5], [0, 2, 4, 1, 1, 0]]),
        "parallel_input_ids": torch.tensor([[4, 2, mask, mask, mask, mask], [2, 4, mask, mask, mask, mask]]),
        "labels": torch.tensor(
            [[IGNORE_INDEX, IGNORE_INDEX, 3, 1, 5, 1], [IGNORE_INDEX, IGNORE_INDEX, 1, 1, 0, -100]]
        ),
    }
    for causal in (True, False):
        ids = targets["input_ids"] if causal else targets["parallel_input_ids"]
        with torch.no_grad():
            logits = head(ids, image, causal=causal)
        terms = []
        for b in range(2):
            for j in range(6):
                label = int(targets["labels"][b, j])
                if label == IGNORE_INDEX:
                    continue
                row = [math.exp(float(v)) for v in logits[b, j]]
                terms.append(-math.log(row[label] / sum(row)))
        expected = sum(terms) / len(terms)
        assert len(terms) == 7
        assert head.caption_loss(image, targets, causal=causal).item() == pytest.approx(expected, rel=1e-5)
    # The two modes read different inputs, so their losses differ.
    assert head.caption_loss(image, targets, causal=True) != head.caption_loss(image, targets, causal=False)
    nothing = dict(targets, labels=torch.full_like(targets["labels"], IGNORE_INDEX))
    zero = head.train().caption_loss(image, nothing, causal=False)
    assert zero.item() == 0.0 and zero.requires_grad
