"""Weights round-trip between ctvlp and the ``colipri`` package's own classes (both directions).

A tiny colipri model is built from colipri's own default config (shrunk with overrides, random
weights, a tiny random BERT saved locally); embeddings must agree to 1e-5.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

colipri = pytest.importorskip(
    "colipri", reason="the colipri package is a test-only dependency (pip install colipri)"
)
from colipri.checkpoint import load_model_config  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from ctvlp.config.loader import load_experiment  # noqa: E402
from lightning_modules.colipri import ColipriModule  # noqa: E402
from lightning_modules.colipri_interop import (  # noqa: E402
    ColipriFormatError,
    export_colipri,
    load_colipri_weights,
)

CROP, EMBED, PROJ, HEADS, DEPTH = 32, 96, 48, 4, 4


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT (width = projection dim, as colipri has no text projection)."""
    path = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120,
        hidden_size=PROJ,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=2 * PROJ,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(path)
    return path


def _colipri_config(tiny_bert: Path) -> DictConfig:
    """colipri's own default model config, shrunk to the tiny sizes."""
    return load_model_config(
        overrides=[
            f"image_embed_dim={EMBED}",
            f"projection_dim={PROJ}",
            f"input_size={CROP}",
            f"model.image_encoder.backbone.eva_depth={DEPTH}",
            f"model.image_encoder.backbone.eva_numheads={HEADS}",
            f"model.image_encoder.pooler.num_heads={HEADS}",
            f"model.text_encoder.pooler.num_heads={HEADS}",
            f"model.text_encoder.backbone.pretrained_model_name_or_path={tiny_bert}",
            "model.text_encoder.backbone.trust_remote_code=false",
            "model.text_encoder.backbone.revision=null",
        ]
    )


def _our_module(tiny_bert: Path, seed: int) -> ColipriModule:
    cfg = load_experiment(
        "colipri_c",
        "cpu_demo",
        [
            "data.root=unused",
            f"data.crop_size={CROP}",
            f"model.proj_dim={PROJ}",
            f"model.pool_heads={HEADS}",
            f"model.text.name_or_path={tiny_bert}",
            "model.image.drop_path=0.2",  # colipri's default; inactive in eval mode
        ],
    )
    torch.manual_seed(seed)
    return ColipriModule(OmegaConf.to_container(cfg, resolve=True)).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, CROP, CROP, CROP, generator=generator) * 2 - 1
    input_ids = torch.randint(1, 120, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # padding in the second report
    return images, input_ids, attention_mask


def _assert_same_embeddings(ours: ColipriModule, theirs: torch.nn.Module) -> None:
    images, input_ids, attention_mask = _inputs()
    with torch.no_grad():
        our_image = ours.encode_image(images)
        their_image = theirs.encode_image(images, pool=True, project=True, normalize=False)
        our_text = ours.encode_text(input_ids, attention_mask)
        their_text = theirs.encode_text(input_ids, attention_mask, normalize=False)
    torch.testing.assert_close(our_image, their_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(our_text, their_text, atol=1e-5, rtol=0)


def test_colipri_weights_load_into_our_module(tiny_bert: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    theirs = colipri.get_model(config=_colipri_config(tiny_bert), pretrained=False)
    theirs.softmax_temperature = torch.tensor(0.05)  # colipri's buffer is an int 1 by default
    weights = tmp_path / "colipri.safetensors"
    theirs.save_weights(weights)

    ours = _our_module(tiny_bert, seed=2)
    load_colipri_weights(ours, weights)
    _assert_same_embeddings(ours, theirs)
    assert float(ours.clip_loss.temperature) == pytest.approx(0.05)


def test_our_export_loads_with_colipri_get_model(tiny_bert: Path, tmp_path: Path) -> None:
    ours = _our_module(tiny_bert, seed=3)
    with torch.no_grad():
        ours.clip_loss.logit_scale.fill_(3.0)
    weights, config = export_colipri(ours, tmp_path / "ours.safetensors")

    # With colipri's own (shrunk) default config ...
    theirs = colipri.get_model(checkpoint_path=weights, config=_colipri_config(tiny_bert), pretrained=False)
    _assert_same_embeddings(ours, theirs)
    assert float(theirs.softmax_temperature) == pytest.approx(math.exp(-3.0))  # our CLIP temperature
    # ... and with the config written beside the weights.
    theirs_from_yaml = colipri.get_model(checkpoint_path=weights, config=config, pretrained=False)
    _assert_same_embeddings(ours, theirs_from_yaml)

    # Back again: export -> import gives the same module.
    again = _our_module(tiny_bert, seed=4)
    load_colipri_weights(again, weights)
    _assert_same_embeddings(again, theirs)


def test_mismatched_architecture_is_a_clear_error(tiny_bert: Path, tmp_path: Path) -> None:
    weights, _ = export_colipri(_our_module(tiny_bert, seed=5), tmp_path / "ours.safetensors")
    cfg = load_experiment(
        "colipri_c",
        "cpu_demo",
        [
            "data.root=unused",
            "data.crop_size=32",
            f"model.proj_dim={PROJ}",
            "model.pool_heads=4",
            f"model.text.name_or_path={tiny_bert}",
            "model.image.patch_size=16",
        ],
    )
    other = ColipriModule(OmegaConf.to_container(cfg, resolve=True))
    with pytest.raises(ColipriFormatError, match=r"down_projection\.proj\.weight"):
        load_colipri_weights(other, weights)


def test_a_text_projection_cannot_be_exported(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = load_experiment(
        "colipri_c",
        "cpu_demo",
        [
            "data.root=unused",
            "data.crop_size=32",
            "model.proj_dim=24",
            "model.pool_heads=4",
            f"model.text.name_or_path={tiny_bert}",
        ],
    )
    module = ColipriModule(OmegaConf.to_container(cfg, resolve=True))
    with pytest.raises(ColipriFormatError, match="no projection"):
        export_colipri(module, tmp_path / "x.safetensors")


def test_import_colipri_writes_a_fit_checkpoint_with_the_weights(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ctvlp.cli import main
    from ctvlp.commands.eval import load_checkpoint

    ours = _our_module(tiny_bert, seed=5)
    weights, _ = export_colipri(ours, tmp_path / "released.safetensors")
    sizes = [f"data.crop_size={CROP}", f"model.proj_dim={PROJ}", f"model.pool_heads={HEADS}"]
    argv = ["import-colipri", "--weights", str(weights), "--experiment", "colipri_c", "--profile", "cpu_demo"]
    argv += [
        "--out",
        str(tmp_path / "run"),
        "data.root=unused",
        f"model.text.name_or_path={tiny_bert}",
        *sizes,
    ]
    assert main(argv) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    _, imported, _ = load_checkpoint(checkpoint)
    assert isinstance(imported, ColipriModule)
    images, input_ids, attention_mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            imported.eval().encode_image(images), ours.encode_image(images), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            imported.encode_text(input_ids, attention_mask), ours.encode_text(input_ids, attention_mask),
            atol=1e-5, rtol=0,
        )  # fmt: skip
    refused = ["import-colipri", "--weights", str(weights), "--experiment", "mae", "--profile", "cpu_demo"]
    assert main([*refused, "--out", str(tmp_path / "x"), "data.root=unused"]) == 2
    assert "COLIPRI weights load into a COLIPRI experiment" in capsys.readouterr().err
    # ctvlp eval --colipri-weights builds through the same helper, so it refuses the same way.
    evaluate = ["eval", "--colipri-weights", str(weights), "--experiment", "mae", "--profile", "cpu_demo"]
    assert main([*evaluate, "--out", str(tmp_path / "e"), "data.root=unused"]) == 2
    assert "COLIPRI weights load into a COLIPRI experiment" in capsys.readouterr().err
