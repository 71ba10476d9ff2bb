"""The frozen text backbone's cache on the real MiniLM: exact values, hit counts, the memory bound."""

import pytest
import torch

from lightning_modules.nets.frozen_text_cache import FrozenBackboneCache
from lightning_modules.nets.text_encoder import TextEncoder, eval_mode, load_tokenizer

REPORTS = [
    "No pleural effusion.",
    "A 6 mm nodule in the right upper lobe, unchanged since the prior study. No lymphadenopathy.",
    "Heart size is normal.",
    "Mild emphysema in both upper lobes. Trachea and main bronchi are patent. No consolidation.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def encoders() -> tuple[TextEncoder, TextEncoder]:
    """The same frozen MiniLM encoder with the cache and without it."""
    torch.manual_seed(0)
    cached = TextEncoder("minilm", proj_dim=384, pool_heads=6, freeze_backbone=True, frozen_cache_mb=64)
    plain = TextEncoder("minilm", proj_dim=384, pool_heads=6, freeze_backbone=True)
    plain.load_state_dict(cached.state_dict())
    return cached.train(), plain.train()


def _batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, padding="longest", return_tensors="pt"))


def test_hits_return_exactly_what_the_backbone_computes(tokenizer, encoders) -> None:
    cached, plain = encoders
    cache = cached.frozen_cache
    cache.clear()
    first = _batch(tokenizer, REPORTS[:3])
    out_first = cached(first["input_ids"], first["attention_mask"])
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 3)
    threads = torch.get_num_threads()

    # Another composition and padding: reports 2 and 0 hit, report 3 is new.
    second = _batch(tokenizer, [REPORTS[2], REPORTS[0], REPORTS[3]])
    out_second = cached(second["input_ids"], second["attention_mask"])
    assert (cache.hits, cache.misses) == (2, 4)
    lengths_first = first["attention_mask"].sum(1).tolist()
    lengths_second = second["attention_mask"].sum(1).tolist()
    for row_second, row_first in ((0, 2), (1, 0)):
        n = lengths_first[row_first]
        assert lengths_second[row_second] == n
        assert torch.equal(out_second.tokens[row_second, :n], out_first.tokens[row_first, :n])
        assert not out_second.tokens[row_second, n:].any()  # padding positions are zero

    # Bit for bit the uncached backbone on each report alone, on one thread as the cache runs it
    # (hits and misses alike), which leaves the thread count as it was ...
    assert torch.get_num_threads() == threads
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), eval_mode(plain.backbone):
            for row, n in enumerate(lengths_second):
                ids = second["input_ids"][row : row + 1, :n]
                alone = plain.backbone(input_ids=ids, attention_mask=torch.ones_like(ids))
                assert torch.equal(out_second.tokens[row, :n], alone.last_hidden_state[0])
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        # ... and, to float rounding, the uncached padded batch, tokens and pooled embedding.
        reference = plain(second["input_ids"], second["attention_mask"])
    for row, n in enumerate(lengths_second):
        torch.testing.assert_close(out_second.tokens[row, :n], reference.tokens[row, :n], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_second.pooled, reference.pooled, atol=1e-5, rtol=0)
    assert cache.hit_rate == pytest.approx(2 / 6)


def test_the_pooler_still_trains_through_cached_states(tokenizer, encoders) -> None:
    cached, _ = encoders
    batch = _batch(tokenizer, REPORTS[:2])
    cached.pooler.zero_grad()
    cached(batch["input_ids"], batch["attention_mask"]).pooled.square().sum().backward()
    grads = [p.grad for p in cached.pooler.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in cached.backbone.parameters())


def test_eviction_keeps_the_bound_least_recently_used_first(tokenizer, encoders) -> None:
    backbone = encoders[1].backbone.eval()
    ids = [tokenizer(text, return_tensors="pt")["input_ids"] for text in REPORTS[:3]]
    entry_bytes = [x.shape[1] * backbone.config.hidden_size * 4 for x in ids]  # fp32 states
    # Room for reports 0 and 1 (and 2 bytes short of all three).
    cache = FrozenBackboneCache((sum(entry_bytes) - 2) / 2**20)

    def encode(i: int) -> None:
        with torch.no_grad():
            cache.hidden_states(backbone, ids[i], None)
        assert cache.bytes <= cache.max_bytes

    encode(0)
    encode(1)
    encode(0)  # 0 is now the most recently used
    assert (cache.hits, cache.misses, cache.evictions) == (1, 2, 0)
    encode(2)  # over the bound: 1, the least recently used, goes
    assert (cache.evictions, len(cache), cache.bytes) == (1, 2, entry_bytes[0] + entry_bytes[2])
    encode(0)
    assert cache.hits == 2
    encode(1)
    assert cache.misses == 4


def test_new_weights_or_device_empty_the_cache(tokenizer, encoders) -> None:
    cached, plain = encoders
    batch = _batch(tokenizer, REPORTS[:1])
    cached(batch["input_ids"], batch["attention_mask"])
    assert len(cached.frozen_cache) > 0
    cached.load_state_dict(plain.state_dict())
    assert len(cached.frozen_cache) == 0
    cached(batch["input_ids"], batch["attention_mask"])
    cached.to(torch.float32)
    assert len(cached.frozen_cache) == 0


def test_no_cache_without_a_frozen_backbone_or_with_zero_mb() -> None:
    assert TextEncoder("minilm", proj_dim=384, pool_heads=6, frozen_cache_mb=64).frozen_cache is None
    frozen_off = TextEncoder("minilm", proj_dim=384, pool_heads=6, freeze_backbone=True, frozen_cache_mb=0)
    assert frozen_off.frozen_cache is None
