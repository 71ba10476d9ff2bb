"""Frozen-encoder features of one split: one encoder pass per volume, reused by every task.

Per volume we keep the encoder's own pooled image embedding (retrieval, zero-shot), the pooled
report embedding (retrieval) and the label row. For the probes we keep the projected image tokens
in fp16, memory-mapped from ``<cache_dir>/<split>/tokens.npy``, so that the 20 probes of the grid
train for thousands of steps without another encoder pass. When the tokens of all needed splits
do not fit the disk budget, none are kept and the probes train with the encoder in the loop
(:mod:`evaluation.joint_probes`).

A directory whose ``meta.json`` carries the same fingerprint (checkpoint, crop, volumes, mode) is
reused instead of re-encoded; anything else is overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

TokenMode = Literal["none", "tokens"]
TOKEN_DTYPE = np.float16
TOKEN_TORCH_DTYPE = torch.float16  # the same dtype, for tokens that never reach the cache
META_NAME = "meta.json"
EMBEDDINGS_NAME = "embeddings.pt"


class VisionLanguageModel(Protocol):
    """What feature extraction needs from a model (``ColipriModule`` provides it)."""

    image_encoder: nn.Module  # images -> ImageOutput(tokens (B, N, C), grid, pooled (B, C))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


class TokenFeatures:
    """Probe inputs per volume: ``{"tokens": (V, N, C)}``.

    Arrays may be ``np.memmap``; :meth:`batch` reads only the requested volumes.
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        if not arrays:
            raise ValueError("TokenFeatures needs at least one array")
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(
                f"Token feature arrays differ in length: { {k: len(a) for k, a in arrays.items()} }"
            )
        self.arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def dim(self) -> int:
        return int(next(iter(self.arrays.values())).shape[-1])

    def batch(self, indices: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """float32 rows ``indices`` (any order, repeats allowed) of every array."""
        wanted = indices.cpu().numpy()
        order = np.argsort(wanted, kind="stable")  # sorted reads are sequential on a memmap
        batch = {}
        for name, array in self.arrays.items():
            rows = torch.from_numpy(np.ascontiguousarray(array[wanted[order]])).float()
            values = torch.empty_like(rows)
            values[torch.from_numpy(order)] = rows
            batch[name] = values.to(device)
        return batch


@dataclass
class SplitFeatures:
    split: str
    image_ids: list[str]
    labels: torch.Tensor  # (V, K), NaN = unknown
    image: torch.Tensor  # (V, C) pooled image embeddings (the encoder's own pooler), float32
    text: torch.Tensor | None  # (V, C) pooled report embeddings, float32
    tokens: TokenFeatures | None


def token_cache_bytes(volumes: int, tokens_per_volume: int, dim: int) -> int:
    return volumes * tokens_per_volume * dim * np.dtype(TOKEN_DTYPE).itemsize


def tokens_per_volume(patch_size: Sequence[int], input_size: int) -> int:
    return math.prod(input_size // int(p) for p in patch_size)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (checkpoint identity, crop, volume ids, ...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_identity(path: Path) -> dict[str, Any]:
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class _TokenWriter:
    """Fills the probe arrays volume by volume (fp16 memmap on disk, or RAM without a cache dir)."""

    def __init__(self, mode: TokenMode, directory: Path | None, volumes: int) -> None:
        self.mode, self.directory, self.volumes = mode, directory, volumes
        self.arrays: dict[str, np.ndarray] = {}

    def _array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.arrays:
            full = (self.volumes, *shape)
            if self.directory is None:
                self.arrays[name] = np.zeros(full, dtype=TOKEN_DTYPE)
            else:
                path = self.directory / f"{name}.npy"
                self.arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=TOKEN_DTYPE, shape=full)
        return self.arrays[name]

    def write(self, rows: np.ndarray, tokens: torch.Tensor) -> None:
        if self.mode == "tokens":
            self._array("tokens", tuple(tokens.shape[1:]))[rows] = tokens.half().cpu().numpy()

    def finish(self) -> TokenFeatures | None:
        if self.mode == "none":
            return None
        for array in self.arrays.values():
            if isinstance(array, np.memmap):
                array.flush()
        return TokenFeatures(self.arrays)


def _load_cached(directory: Path, key: str, mode: TokenMode, with_text: bool) -> SplitFeatures | None:
    """The cached features when their fingerprint matches (and they hold text if needed)."""
    meta_path = directory / META_NAME
    if not meta_path.is_file() or json.loads(meta_path.read_text(encoding="utf-8")).get("fingerprint") != key:
        return None
    saved = torch.load(directory / EMBEDDINGS_NAME, weights_only=True)
    if with_text and "text" not in saved:
        return None
    names = {"tokens": ["tokens"], "none": []}[mode]
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in names}
    log.info("Reusing cached features in %s", directory)
    return SplitFeatures(
        split=saved["split"],
        image_ids=list(saved["image_ids"]),
        labels=saved["labels"],
        image=saved["image"],
        text=saved.get("text"),
        tokens=TokenFeatures(arrays) if arrays else None,
    )


@torch.no_grad()
def extract_features(
    model: VisionLanguageModel,
    loader: Iterable[dict[str, Any]],
    split: str,
    volumes: int,
    *,
    with_text: bool = True,
    token_mode: TokenMode = "none",
    cache_dir: Path | None = None,
    key: str | None = None,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    progress: bool = True,
) -> SplitFeatures:
    """Encode every volume of ``loader`` (batches with ``image``, ``index``, ``labels``, ...) once.

    Rows are placed by ``batch["index"]`` (0 .. volumes-1); repeats (padded shards) are ignored and
    a missing index is an error. With ``cache_dir`` and ``key``, the result is stored under
    ``cache_dir/split`` and reused when the key matches (and it holds report embeddings when
    ``with_text`` asks for them).
    """
    directory = None if cache_dir is None else Path(cache_dir) / split
    if directory is not None and key is not None:
        cached = _load_cached(directory, key, token_mode, with_text)
        if cached is not None:
            return cached
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)

    writer = _TokenWriter(token_mode, directory, volumes)
    image_ids: list[str] = [""] * volumes
    seen = torch.zeros(volumes, dtype=torch.bool)
    image: torch.Tensor | None = None
    text: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    for batch in tqdm(loader, desc=f"features {split}", disable=not progress, leave=False):
        index = batch["index"]
        fresh = ~seen[index]
        if not bool(fresh.any()):
            continue
        rows = index[fresh]
        with autocast():
            output = model.image_encoder(batch["image"][fresh].to(device))
            text_emb = (
                model.encode_text(
                    batch["input_ids"][fresh].to(device), batch["attention_mask"][fresh].to(device)
                )
                if with_text
                else None
            )
        if image is None:
            image = torch.full((volumes, output.pooled.shape[-1]), math.nan)
            labels = torch.full((volumes, batch["labels"].shape[-1]), math.nan)
            text = None if text_emb is None else torch.full((volumes, text_emb.shape[-1]), math.nan)
        image[rows] = output.pooled.float().cpu()
        labels[rows] = batch["labels"][fresh].float()  # type: ignore[index]
        if text is not None and text_emb is not None:
            text[rows] = text_emb.float().cpu()
        writer.write(rows.numpy(), output.tokens)
        for row, image_id in zip(
            rows.tolist(), np.asarray(batch["image_id"], dtype=object)[fresh.numpy()], strict=True
        ):
            image_ids[row] = str(image_id)
        seen[rows] = True
    if image is None or labels is None or not bool(seen.all()):
        missing = (~seen).nonzero().flatten().tolist()[:10]
        raise ValueError(
            f"Feature extraction for '{split}' saw no batch for volume indices {missing} (of {volumes})"
        )

    features = SplitFeatures(split, image_ids, labels, image, text, writer.finish())
    if directory is not None:
        saved = {"split": split, "image_ids": image_ids, "labels": labels, "image": image}
        if text is not None:
            saved["text"] = text
        torch.save(saved, directory / EMBEDDINGS_NAME)
        (directory / META_NAME).write_text(
            json.dumps({"fingerprint": key, "volumes": volumes, "mode": token_mode}), encoding="utf-8"
        )
    return features


@torch.no_grad()
def encode_texts(
    model: VisionLanguageModel,
    tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
    texts: Sequence[str],
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """(len(texts), C) pooled text embeddings, float32 on the CPU."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenize(list(texts[start : start + batch_size]))
        with autocast():
            chunks.append(
                model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
                .float()
                .cpu()
            )
    return torch.cat(chunks)
