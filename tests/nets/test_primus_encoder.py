import pytest
import torch
from torch import nn

from lightning_modules.nets.image_encoder import ImageOutput, build_image_encoder
from lightning_modules.nets.primus_encoder import (
    PRIMUS_SIZES,
    build_primus,
    rope_head_dim_is_valid,
    set_activation_checkpointing,
)


def test_named_sizes_match_dynamic_network_architectures():
    from dynamic_network_architectures.architectures.primus import _PRIMUS_CONFIGS

    assert set(PRIMUS_SIZES) == {"tiny", "S", "B", "M", "L"}
    assert PRIMUS_SIZES["M"] == dict(embed_dim=864, eva_depth=16, eva_numheads=12)
    for name, conf in _PRIMUS_CONFIGS.items():
        assert PRIMUS_SIZES[name] == conf
    for conf in PRIMUS_SIZES.values():
        assert rope_head_dim_is_valid(conf["embed_dim"], conf["eva_numheads"])


def test_tiny_forward_tokens_and_identity_decoder():
    torch.manual_seed(0)
    backbone = build_primus("tiny", input_size=32, patch_size=8).eval()
    assert isinstance(backbone.up_projection, nn.Identity)
    assert backbone.eva.pos_embed is None  # RoPE only, no absolute position embedding
    with torch.no_grad():
        feature_map = backbone(torch.randn(2, 1, 32, 32, 32))
    assert feature_map.shape == (2, 96, 4, 4, 4)


def test_image_encoder_outputs():
    torch.manual_seed(0)
    encoder = build_image_encoder("tiny", input_size=32, patch_size=8, proj_dim=48, pool_heads=4).eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 1, 32, 32, 32))
    assert isinstance(out, ImageOutput)
    assert out.tokens.shape == (2, 64, 48)
    assert out.grid == (4, 4, 4)
    assert out.pooled.shape == (2, 48)
    assert not torch.allclose(out.pooled.norm(dim=-1), torch.ones(2))  # not normalised
    assert encoder.patch_size == (8, 8, 8)
    state = encoder.state_dict()
    assert "projector.weight" in state and "pooler.attn.in_proj_weight" in state
    assert not any(k.startswith("backbone.up_projection") for k in state)
    with torch.no_grad():
        dense = encoder.dense(torch.randn(1, 1, 32, 32, 32))
    assert dense.shape == (1, 48, 4, 4, 4)


def test_primus_m_builds_with_colipri_shape():
    backbone = build_primus("M", input_size=160)
    n_params = sum(p.numel() for p in backbone.parameters())
    assert backbone.embed_dim == 864 and len(backbone.eva.blocks) == 16
    assert 100e6 < n_params < 200e6, n_params


def test_overrides_and_errors():
    backbone = build_primus(
        "tiny", input_size=(32, 16, 16), patch_size=(8, 8, 4), embed_dim=144, num_heads=6, depth=1
    )
    assert backbone.embed_dim == 144 and len(backbone.eva.blocks) == 1
    with pytest.raises(ValueError, match="Valid sizes"):
        build_primus("XL", input_size=32)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        build_primus("tiny", input_size=36, patch_size=8)
    with pytest.raises(ValueError, match=r"Valid num_heads for embed_dim=96: \[1, 2, 4, 8, 16\]") as info:
        build_primus("tiny", input_size=32, num_heads=3)
    assert "tiny (embed_dim=96" in str(info.value)


def test_activation_checkpointing_matches_plain_backward():
    torch.manual_seed(0)
    backbone = build_primus("tiny", input_size=16, drop_path=0.0, depth=2)
    x = torch.randn(1, 1, 16, 16, 16)
    backbone(x).square().mean().backward()
    reference = backbone.down_projection.proj.weight.grad.clone()
    backbone.zero_grad()
    set_activation_checkpointing(backbone, True)
    assert backbone.eva.grad_checkpointing
    backbone(x).square().mean().backward()
    torch.testing.assert_close(backbone.down_projection.proj.weight.grad, reference)
    set_activation_checkpointing(backbone, False)
    assert not backbone.eva.grad_checkpointing
