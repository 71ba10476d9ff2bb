"""Named Primus (EVA ViT) sizes and a builder for encoder-only Primus backbones.

The builder mirrors the ``colipri`` image backbone config: ``Primus`` from
dynamic-network-architectures with RoPE on, one input channel, and its decoder
(``up_projection``) replaced by ``nn.Identity`` so that the forward pass returns the
encoder tokens as a feature map ``(B, C, d, h, w)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch.utils.checkpoint
from dynamic_network_architectures.architectures.primus import _PRIMUS_CONFIGS, Primus
from dynamic_network_architectures.building_blocks import eva as _dna_eva
from torch import nn

PRIMUS_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=96, eva_depth=4, eva_numheads=4),
    **{name: dict(conf) for name, conf in _PRIMUS_CONFIGS.items()},  # S, B, M, L
}


def _as_triplet(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    triplet = tuple(int(v) for v in value)
    if len(triplet) != 3:
        raise ValueError(f"{name} must be an int or a sequence of 3 ints, got {value!r}")
    return triplet  # type: ignore[return-value]


def rope_head_dim_is_valid(embed_dim: int, num_heads: int) -> bool:
    """Whether Primus' 3D RoPE accepts this width: head_dim / 1.5 must be an integer divisible by 4."""
    if num_heads <= 0 or embed_dim % num_heads != 0:
        return False
    head_dim = embed_dim // num_heads
    rope_dim = round(head_dim / 1.5)
    return rope_dim == head_dim / 1.5 and rope_dim % 4 == 0


def _valid_sizes_text() -> str:
    return ", ".join(
        f"{name} (embed_dim={c['embed_dim']}, depth={c['eva_depth']}, heads={c['eva_numheads']})"
        for name, c in PRIMUS_SIZES.items()
    )


def build_primus(
    size: str,
    input_size: int | Sequence[int],
    patch_size: int | Sequence[int] = 8,
    drop_path: float = 0.2,
    layer_scale_init: float | None = 0.1,
    scale_attn_inner: bool = True,
    use_abs_pos_embed: bool = False,
    num_register_tokens: int = 0,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    num_classes: int | None = None,
) -> Primus:
    """Build an encoder-only Primus; ``forward(x: (B,1,D,H,W)) -> (B, C, D/p, H/p, W/p)``.

    ``size`` picks a row of ``PRIMUS_SIZES``; ``embed_dim``/``depth``/``num_heads`` override it.
    RoPE is built for exactly ``input_size``, so the backbone only accepts that input shape.
    ``num_classes``: keep Primus' own patch decoder (``up_projection``) with that many output
    channels, the whole Primus segmentation network: ``forward -> (B, num_classes, D, H, W)`` logits.
    """
    if size not in PRIMUS_SIZES:
        raise ValueError(f"Unknown Primus size {size!r}. Valid sizes: {_valid_sizes_text()}")
    conf = dict(PRIMUS_SIZES[size])
    if embed_dim is not None:
        conf["embed_dim"] = int(embed_dim)
    if depth is not None:
        conf["eva_depth"] = int(depth)
    if num_heads is not None:
        conf["eva_numheads"] = int(num_heads)

    shape = _as_triplet(input_size, "input_size")
    patch = _as_triplet(patch_size, "patch_size")
    if any(s % p != 0 for s, p in zip(shape, patch, strict=True)):
        raise ValueError(f"input_size {shape} must be divisible by patch_size {patch}")

    dim, heads = conf["embed_dim"], conf["eva_numheads"]
    if not rope_head_dim_is_valid(dim, heads):
        valid_heads = [h for h in range(1, dim + 1) if rope_head_dim_is_valid(dim, h)]
        raise ValueError(
            f"Primus RoPE needs embed_dim / num_heads / 1.5 to be an integer divisible by 4 "
            f"(i.e. head_dim = embed_dim / num_heads a multiple of 6); got embed_dim={dim}, "
            f"num_heads={heads}. Valid num_heads for embed_dim={dim}: {valid_heads or 'none'}. "
            f"Valid named sizes: {_valid_sizes_text()}"
        )
    if conf["eva_depth"] < 1:
        raise ValueError(f"depth must be >= 1, got {conf['eva_depth']}")

    backbone = Primus(
        input_channels=1,
        embed_dim=dim,
        patch_embed_size=patch,
        num_classes=1 if num_classes is None else int(num_classes),
        eva_depth=conf["eva_depth"],
        eva_numheads=heads,
        input_shape=shape,
        num_register_tokens=num_register_tokens,
        use_rot_pos_emb=True,
        use_abs_pos_embed=use_abs_pos_embed,
        drop_path_rate=drop_path,
        init_values=layer_scale_init,
        scale_attn_inner=scale_attn_inner,
    )
    if num_classes is None:
        backbone.up_projection = nn.Identity()
    return backbone


def _patch_eva_checkpoint() -> None:
    """Make Eva's built-in activation checkpointing work on recent torch.

    ``Eva.forward_features`` calls ``checkpoint(blk, x, rope=...)`` without ``use_reentrant``;
    torch then defaults to the re-entrant variant, which rejects keyword arguments
    (``ValueError: Unexpected keyword arguments: rope``). We point the name ``checkpoint`` in
    that module at the non-re-entrant variant. This only touches the code path that crashes.
    """
    if getattr(_dna_eva.checkpoint, "_ctvlp_patched", False):
        return
    patched = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    patched._ctvlp_patched = True  # type: ignore[attr-defined]
    _dna_eva.checkpoint = patched


def set_activation_checkpointing(backbone: Primus, enabled: bool) -> None:
    """Turn activation (gradient) checkpointing of the Eva blocks on or off."""
    if enabled:
        _patch_eva_checkpoint()
    backbone.eva.set_grad_checkpointing(enabled)
