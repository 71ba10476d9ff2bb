"""Uniferum's 3D EfficientNet-B0 starts from the paper's inflated 2D ImageNet weights, or from a
random initialisation only when a config says so (uniferum.vision_weights_2d)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch

from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import load_experiment
from lightning_modules.uniferum import build_vision

SMALL = ["data.root=/data/ct-rate", "uniferum.input_shape=[32,32,32]"]


def test_paper_settings_without_the_2d_weights_stop_and_say_how_to_get_them() -> None:
    with pytest.raises(ConfigError) as error:
        load_experiment("uniferum_seg", None, ["data.root=/data/ct-rate"])
    message = str(error.value)
    assert message.startswith("uniferum.vision_weights_2d is not set")
    assert "timm.create_model('tf_efficientnet_b0.in1k', pretrained=True)" in message
    assert "uniferum.vision_weights_2d=none" in message
    with pytest.raises(ConfigError, match="uniferum.vision_weights_2d=/no/such.pth does not exist"):
        load_experiment("uniferum", None, ["data.root=/x", "uniferum.vision_weights_2d=/no/such.pth"])


def test_the_cpu_demo_opts_out_explicitly_and_the_random_start_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = load_experiment("uniferum", "cpu_demo", ["uniferum.vision=efficientnet_b0", *SMALL])
    assert cfg.uniferum.vision_weights_2d == "none"
    with caplog.at_level(logging.WARNING, logger="lightning_modules.uniferum"):
        build_vision(cfg)
    assert "uniferum.vision_weights_2d=none" in caplog.text and "random initialisation" in caplog.text


def test_the_configured_timm_file_initialises_the_vision_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = timm.create_model("tf_efficientnet_b0", pretrained=False).state_dict()
    path = tmp_path / "tf_efficientnet_b0.pth"
    torch.save(state, path)
    cfg = load_experiment("uniferum", None, [*SMALL, f"uniferum.vision_weights_2d={path}"])
    kernel = build_vision(cfg).backbone.state_dict()["net._conv_head.weight"]
    assert torch.equal(kernel[:, :, 0], state["conv_head.weight"])
