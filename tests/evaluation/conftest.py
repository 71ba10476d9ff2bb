"""Fixtures: a tiny synthetic vision–language model and dataset for runner/feature tests (no Lightning).

Each "volume" is a (1, 2, 2, 2) image whose voxel k carries label k (+ noise), so probes and
zero-shot prompts have signal. Texts are looked up in a registry: a report embeds near its
image, "{label} present" along that label's voxel axis, "No {label} present" against it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from einops import rearrange
from torch import nn
from torch.utils.data import DataLoader

from lightning_modules.nets.image_encoder import ImageOutput

LABELS = ["alpha", "beta", "gamma"]
DIM = 8


class TextRegistry:
    def __init__(self) -> None:
        self.vectors: list[torch.Tensor] = []
        self.ids: dict[str, int] = {}

    def add(self, text: str, vector: torch.Tensor) -> None:
        self.ids[text] = len(self.vectors)
        self.vectors.append(vector)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = torch.tensor([[self.ids[t]] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class ToyImageEncoder(nn.Module):
    patch_size = (1, 1, 1)
    proj_dim = DIM

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> ImageOutput:
        self.calls += images.shape[0]
        voxels = rearrange(images, "b 1 x y z -> b (x y z)")  # (B, 8)
        tokens = torch.diag_embed(voxels)  # token n = voxel n along axis n
        return ImageOutput(tokens=tokens, grid=(2, 2, 2), pooled=voxels)


class ToyModel(nn.Module):
    def __init__(self, registry: TextRegistry) -> None:
        super().__init__()
        self.image_encoder = ToyImageEncoder()
        self.registry = registry

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.registry.vectors[int(i)] for i in input_ids[:, 0]])


def toy_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    reports: list[str],
    registry: TextRegistry,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    batches = []
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        tokens = registry.tokenize(reports[rows])
        batches.append(
            {
                "image": images[rows],
                "index": torch.arange(len(images))[rows],
                "image_id": [f"vol{i}" for i in range(len(images))][rows],
                "labels": labels[rows],
                **tokens,
            }
        )
    return batches


class ToyData:
    """Splits of toy volumes with labels, reports and batches."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.registry = TextRegistry()
        for k, name in enumerate(LABELS):
            axis = torch.zeros(DIM)
            axis[k] = 1.0
            self.registry.add(f"{name} present", axis + 0.5)
            self.registry.add(f"No {name} present", -axis + 0.5)
        self.splits = {name: self._split(name, n) for name, n in (("train", 60), ("val", 40), ("test", 40))}

    def _split(self, name: str, n: int) -> dict[str, Any]:
        labels = (torch.rand(n, len(LABELS), generator=self.generator) > 0.6).float()
        images = torch.rand(n, 1, 2, 2, 2, generator=self.generator) * 0.8
        images[:, 0, 0, 0, :2] += labels[:, :2]  # voxels 0, 1 <- alpha, beta
        images[:, 0, 0, 1, 0] += labels[:, 2]  # voxel 2 <- gamma
        reports = [f"{name} report {i}" for i in range(n)]
        for i, report in enumerate(reports):
            pooled = rearrange(images[i], "1 x y z -> (x y z)")
            self.registry.add(report, pooled + 0.05 * torch.randn(DIM, generator=self.generator))
        return {"images": images, "labels": labels, "reports": reports}

    def batches(self, split: str, batch_size: int = 8) -> list[dict[str, Any]]:
        data = self.splits[split]
        return toy_batches(data["images"], data["labels"], data["reports"], self.registry, batch_size)

    def loader(self, split: str, batch_size: int = 8) -> DataLoader:
        """The split as a DataLoader over an indexable dataset (item i carries index i), in order."""
        data = self.splits[split]
        items = [
            {
                "image": image,
                "index": i,
                "image_id": f"vol{i}",
                "labels": labels,
                **{k: v[0] for k, v in self.registry.tokenize([report]).items()},
            }
            for i, (image, labels, report) in enumerate(
                zip(data["images"], data["labels"], data["reports"], strict=True)
            )
        ]
        return DataLoader(items, batch_size=batch_size)  # type: ignore[arg-type]


@pytest.fixture
def toy_data() -> ToyData:
    return ToyData()


@pytest.fixture
def toy_model(toy_data: ToyData) -> ToyModel:
    return ToyModel(toy_data.registry)


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """These workloads are tiny: on a shared 2-core machine, intra-op threads only add waiting
    (an oversubscribed OpenMP barrier made one probe test 30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
