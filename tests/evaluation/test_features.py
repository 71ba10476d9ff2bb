"""One encoder pass per volume, fp16 token cache on disk, reuse by fingerprint, a mode without tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evaluation.features import TokenFeatures, extract_features, token_cache_bytes, tokens_per_volume


def test_every_volume_is_encoded_once_and_placed_by_index(toy_data: Any, toy_model: Any) -> None:
    batches = toy_data.batches("val", batch_size=8)
    padded = [*reversed(batches), batches[0]]  # out of order, with a repeated (padding) batch
    features = extract_features(toy_model, padded, "val", volumes=40)
    assert toy_model.image_encoder.calls == 40
    images = toy_data.splits["val"]["images"].flatten(1)
    torch.testing.assert_close(features.image, images)
    torch.testing.assert_close(features.labels, toy_data.splits["val"]["labels"])
    assert features.image_ids[3] == "vol3" and features.text is not None and features.tokens is None


def test_tokens_are_cached_in_fp16_on_disk_and_reused(toy_data: Any, toy_model: Any, tmp_path: Path) -> None:
    batches = toy_data.batches("val")
    features = extract_features(
        toy_model, batches, "val", 40, token_mode="tokens", cache_dir=tmp_path, key="weights-1"
    )
    stored = np.load(tmp_path / "val" / "tokens.npy", mmap_mode="r")
    assert stored.dtype == np.float16 and stored.shape == (40, 8, 8)
    assert features.tokens is not None
    expected = torch.diag_embed(toy_data.splits["val"]["images"].flatten(1)).half().float()
    torch.testing.assert_close(features.tokens.batch(torch.arange(40))["tokens"], expected)

    again = extract_features(
        toy_model, batches, "val", 40, token_mode="tokens", cache_dir=tmp_path, key="weights-1"
    )
    assert toy_model.image_encoder.calls == 40  # reused: no second encoder pass
    torch.testing.assert_close(again.image, features.image)
    extract_features(toy_model, batches, "val", 40, token_mode="tokens", cache_dir=tmp_path, key="weights-2")
    assert toy_model.image_encoder.calls == 80  # other weights: encoded again


def test_no_token_mode_keeps_only_the_embeddings(toy_data: Any, toy_model: Any) -> None:
    features = extract_features(
        toy_model, toy_data.batches("val"), "val", 40, token_mode="none", with_text=False
    )
    assert features.tokens is None and features.text is None
    torch.testing.assert_close(features.image, toy_data.splits["val"]["images"].flatten(1))


def test_token_batches_keep_the_requested_order_and_repeats() -> None:
    array = np.arange(5, dtype=np.float16).reshape(5, 1, 1)
    batch = TokenFeatures({"tokens": array}).batch(torch.tensor([3, 0, 3, 1]))
    assert batch["tokens"].flatten().tolist() == [3.0, 0.0, 3.0, 1.0]


def test_a_volume_without_batch_is_an_error(toy_data: Any, toy_model: Any) -> None:
    with pytest.raises(ValueError, match="no batch for volume indices"):
        extract_features(toy_model, toy_data.batches("val")[:-1], "val", 40)


def test_cache_size_estimate() -> None:
    # 160^3 crop, patch 8 -> 8000 tokens of 768 channels in fp16 = 12.3 MB per volume.
    assert tokens_per_volume((8, 8, 8), 160) == 8000
    assert token_cache_bytes(1, 8000, 768) == 8000 * 768 * 2
