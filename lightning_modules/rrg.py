"""Report generation (RRG, CapPa style) as the modules use it: parts from ``objectives.rrg``,
the per-step choice of decoding mode, the validation loss and greedy reports.

The parts themselves are ``nets.cappa_head.CapPaHead`` and ``datamodules.cappa_targets``; this file
only reads the config and holds the few rules shared by ``ColipriModule`` (COLIPRI-CR) and
``CapPaModule`` (captioning only):

- **Mode per step.** A step is parallel with probability ``parallel_prob``, else causal. The
  draw is a pure function of ``(seed, global step)``: every DDP rank takes the same mode, and a
  resumed run takes the same modes as an uninterrupted one without any RNG state.
- **Validation loss.** The expectation of the training loss over the modes:
  ``p * L_parallel + (1 - p) * L_causal``, computing only the modes with non-zero weight.
- **Generated reports.** Greedy decoding in every trained mode, as ``"<Section>: text"`` lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from datamodules.cappa_targets import CapPaTargetBuilder
from lightning_modules.nets.cappa_head import CapPaHead
from lightning_modules.nets.text_encoder import load_tokenizer

# Mixed into the per-step seed so the mode draw is independent of other (seed, step) streams.
_MODE_STREAM = 0x525247  # "RRG"


def target_builder(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> CapPaTargetBuilder:
    """The CapPa target builder of ``cfg`` (``objectives.rrg.slots``, the text model's tokenizer)."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model.text.name_or_path)
    return CapPaTargetBuilder(tokenizer, num_slots=int(cfg.objectives.rrg.slots))


def check_rrg_config(cfg: DictConfig) -> None:
    rrg = cfg.objectives.rrg
    if not 0.0 <= float(rrg.parallel_prob) <= 1.0:
        raise ValueError(f"objectives.rrg.parallel_prob must be in [0, 1], got {rrg.parallel_prob}")
    if int(rrg.width) % int(rrg.heads):
        raise ValueError(
            f"objectives.rrg.width={rrg.width} must be divisible by objectives.rrg.heads={rrg.heads}"
        )


def build_head(cfg: DictConfig, targets: CapPaTargetBuilder, image_dim: int) -> CapPaHead:
    """The decoder of ``objectives.rrg``, reading ``image_dim``-wide image tokens."""
    check_rrg_config(cfg)
    rrg = cfg.objectives.rrg
    return CapPaHead(
        vocab_size=targets.vocab_size,
        width=int(rrg.width),
        depth=int(rrg.depth),
        heads=int(rrg.heads),
        image_dim=image_dim,
        max_len=targets.length,
        mlp_ratio=float(rrg.mlp_ratio),
    )


def draw_causal(seed: int, step: int, parallel_prob: float) -> bool:
    """True for a causal (teacher-forcing) step, False for a parallel one; see the module doc."""
    if parallel_prob >= 1.0:
        return False
    if parallel_prob <= 0.0:
        return True
    return bool(np.random.default_rng([seed, step, _MODE_STREAM]).random() >= parallel_prob)


def mode_weights(parallel_prob: float) -> dict[str, float]:
    """``{"parallel"|"causal": probability}`` of the modes that are trained (probability > 0)."""
    weights = {"parallel": float(parallel_prob), "causal": 1.0 - float(parallel_prob)}
    return {mode: weight for mode, weight in weights.items() if weight > 0}


def expected_loss(
    head: CapPaHead, image_tokens: torch.Tensor, targets: Mapping[str, torch.Tensor], parallel_prob: float
) -> torch.Tensor:
    """``p * L_parallel + (1 - p) * L_causal`` over the trained modes."""
    losses = [
        weight * head.caption_loss(image_tokens, targets, causal=mode == "causal")
        for mode, weight in mode_weights(parallel_prob).items()
    ]
    return torch.stack(losses).sum()


@torch.no_grad()
def generate_reports(
    head: CapPaHead,
    targets: CapPaTargetBuilder,
    image_tokens: torch.Tensor,
    header_ids: torch.Tensor,
    orders: list[tuple[str, ...]],
    causal: bool,
) -> list[str]:
    """Greedy reports (one ``"<Section>: text"`` line per section) for a batch of image tokens.

    ``header_ids`` (B, H) and ``orders`` give each sample's section order (the header prompt).
    """
    slots = head.generate_greedy(
        image_tokens, header_ids, targets.num_slots, causal=causal, start_id=targets.start_id
    )
    return [targets.decode(row, order) for row, order in zip(slots.tolist(), orders, strict=True)]


class ReportSamples:
    """Mixin for modules that generate reports (``rrg_head``, ``rrg_targets``, ``image_encoder``):
    the greedy samples that ``callbacks.report_samples.ReportSamplesCallback`` logs."""

    def report_samples(self, batch: dict[str, Any]) -> list[dict[str, str]]:
        """Per volume of a collated batch: the reference, then one greedy report per trained mode."""
        targets = self.rrg_targets
        orders = [tuple(sections) for sections in batch["sections"]]
        header_ids = batch["cappa"]["header_ids"].to(self.device)
        tokens = self.image_encoder(batch["image"].to(self.device)).tokens
        modes = mode_weights(float(self.cfg.objectives.rrg.parallel_prob))
        generated = {
            mode: generate_reports(
                self.rrg_head, targets, tokens, header_ids, orders, causal=mode == "causal"
            )
            for mode in modes
        }
        samples = []
        for i, order in enumerate(orders):
            reference = targets.decode(targets.slot_ids(batch["cappa"]["labels"][i]), order)
            samples.append({"reference": reference, **{f"{m} (greedy)": r[i] for m, r in generated.items()}})
        return samples
