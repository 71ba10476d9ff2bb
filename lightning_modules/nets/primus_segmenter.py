"""The Primus segmentation network (encoder + Primus' own patch decoder) and the transfer of a ctvlp
checkpoint's Primus image encoder into it (segmentation fine-tuning, ``ctvlp export-nnunet``).

A ctvlp checkpoint keeps its Primus backbone under ``image_encoder.backbone.<key>`` (COLIPRI family,
MAE, CapPa and report generation alike). ``<key>`` is the key of dynamic-network-architectures'
``Primus`` unchanged, so the encoder's tensors land in a segmentation ``Primus`` (and in nnU-Net's)
under the same name; only the decoder ``up_projection.*`` is not in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from dynamic_network_architectures.architectures.primus import Primus

from lightning_modules.nets.primus_encoder import build_primus

ENCODER_PREFIX = "image_encoder.backbone."
DECODER_PREFIX = "up_projection."


def primus_encoder_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Primus backbone tensors of a ctvlp checkpoint's ``state_dict`` under Primus' own keys (a
    ``torch.compile`` wrapper's ``_orig_mod.`` dropped); empty when it has no Primus image encoder."""
    return {
        key[len(ENCODER_PREFIX) :].replace("_orig_mod.", ""): value
        for key, value in state_dict.items()
        if key.startswith(ENCODER_PREFIX)
    }


def build_primus_segmenter(
    size: str, input_size: int | Sequence[int], num_classes: int, patch_size: int = 8, **primus_kwargs: Any
) -> Primus:
    """The Primus segmentation network: ``forward((B, 1, X, Y, Z)) -> (B, num_classes, X, Y, Z)``
    logits, its encoder built exactly as ctvlp's image encoder (``build_primus``)."""
    return build_primus(size, input_size, patch_size, num_classes=num_classes, **primus_kwargs)


def load_primus_encoder(network: Primus, weights: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy ``weights`` (:func:`primus_encoder_weights`) into every tensor of ``network`` except its
    decoder. Raises ``ValueError`` naming the keys that are missing, unknown or of another shape.
    Returns the keys copied."""
    template = network.state_dict()
    encoder_keys = {key for key in template if not key.startswith(DECODER_PREFIX)}
    missing = sorted(encoder_keys - set(weights))
    unknown = sorted(set(weights) - encoder_keys)
    reshaped = sorted(
        f"{key} {tuple(weights[key].shape)} vs {tuple(template[key].shape)}"
        for key in encoder_keys & set(weights)
        if tuple(weights[key].shape) != tuple(template[key].shape)
    )
    problems = [
        f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
        for label, keys in (("missing", missing), ("unknown", unknown), ("other shape", reshaped))
        if keys
    ]
    if problems:
        raise ValueError("the encoder weights do not fit the network: " + "; ".join(problems))
    network.load_state_dict({key: weights[key] for key in encoder_keys}, strict=False)
    return sorted(encoder_keys)
