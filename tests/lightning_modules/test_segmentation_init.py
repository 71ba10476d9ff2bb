"""Segmentation fine-tuning starts from another module's Primus encoder: the tensors arrive unchanged
in the segmentation network (decoder fresh), and a wrong, missing or differently sized checkpoint is
a ConfigError that says what to do; so are bad seg_finetune configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import load_experiment
from lightning_modules.mae import MAEModule
from lightning_modules.nets.primus_segmenter import DECODER_PREFIX
from lightning_modules.segmentation import SegmentationModule

CROP = 32
LABELS = ["background", "liver", "lesion"]
TINY = {"image": {"size": "tiny", "drop_path": 0.0}}


def _save(module: torch.nn.Module, path: Path) -> Path:
    """The parts of a Lightning checkpoint the segmentation init reads: state_dict, config, step."""
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 7}, path
    )
    return path


def _segmentation(**segmentation: object) -> SegmentationModule:
    return SegmentationModule.from_sections(
        name="seg",
        module="segmentation",
        model=TINY,
        data={"crop_size": CROP, "source": "msd", "root": "msd"},  # labels given: the root is not read
        segmentation={"labels": LABELS, **segmentation},
    )


@pytest.fixture(scope="module")
def mae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MAEModule]:
    torch.manual_seed(1)
    # A complete config, as a fit checkpoint stores it (the data root is not read).
    mae = MAEModule.from_sections(
        name="mae", module="mae", model=TINY, data={"crop_size": CROP, "root": "ct"}
    )
    with torch.no_grad():  # weights no fresh initialisation has (layer scale 0.1 everywhere otherwise)
        for parameter in mae.image_encoder.backbone.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    return _save(mae, tmp_path_factory.mktemp("init") / "mae.ckpt"), mae


def test_init_copies_every_encoder_tensor_and_keeps_a_fresh_decoder(
    mae_checkpoint: tuple[Path, MAEModule],
) -> None:
    path, mae = mae_checkpoint
    pretrained = _segmentation(init_ckpt=str(path))
    scratch = _segmentation(init_ckpt=None)
    encoder = mae.image_encoder.backbone.state_dict()
    network = pretrained.network.state_dict()
    copied = [key for key in network if not key.startswith(DECODER_PREFIX)]
    assert len(copied) == len(encoder) > 20
    for key in copied:
        assert torch.equal(network[key], encoder[key]), key
        if key.startswith(("eva.blocks", "down_projection")) and network[key].numel() > 1:
            assert not torch.equal(scratch.network.state_dict()[key], encoder[key]), key
    decoder = [key for key in network if key.startswith(DECODER_PREFIX)]
    assert decoder and all(key not in encoder for key in decoder)
    assert "mae checkpoint" in pretrained.encoder_source and "step 7" in pretrained.encoder_source
    logits = pretrained(torch.zeros(1, 1, CROP, CROP, CROP))
    assert logits.shape == (1, len(LABELS), CROP, CROP, CROP)


def test_bad_init_checkpoints_say_what_to_do(mae_checkpoint: tuple[Path, MAEModule], tmp_path: Path) -> None:
    path, _ = mae_checkpoint
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        _segmentation(init_ckpt=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ConfigError, match=r"set model\.image\.layer_scale_init=0\.1"):
        SegmentationModule.from_sections(
            module="segmentation",
            model={"image": {"size": "tiny", "layer_scale_init": None}},
            data={"crop_size": CROP, "source": "msd"},
            segmentation={"labels": LABELS, "init_ckpt": str(path)},
        )
    # A segmentation checkpoint holds no image_encoder.backbone.*: not an encoder to start from.
    own = _save(_segmentation(init_ckpt=None), tmp_path / "segmentation.ckpt")
    with pytest.raises(ConfigError, match="without a Primus image encoder.*MAE"):
        _segmentation(init_ckpt=str(own))


def test_config_checks_of_seg_finetune(tmp_path: Path) -> None:
    cfg = load_experiment("seg_finetune", "cpu_demo")
    assert cfg.module == "segmentation" and cfg.data.source == "msd" and cfg.segmentation.init_ckpt is None
    assert (cfg.trainer.max_steps, cfg.data.crop_size, cfg.data.spacing) == (200, 48, 3.0)
    paper = load_experiment("seg_finetune", None, ["data.root=/data/liver", "segmentation.init_ckpt=null"])
    assert (paper.trainer.max_steps, paper.optim.lr, paper.optim.warmup_steps) == (37_500, 1e-4, 3750)
    with pytest.raises(ConfigError, match="data.source=msd"):
        load_experiment("seg_finetune", "cpu_demo", ["data.source=ct_rate"])
    with pytest.raises(ConfigError, match="init_ckpt=.*does not exist"):
        load_experiment("seg_finetune", "cpu_demo", [f"segmentation.init_ckpt={tmp_path / 'none.ckpt'}"])
    with pytest.raises(ConfigError, match="foreground_oversample"):
        load_experiment("seg_finetune", "cpu_demo", ["segmentation.foreground_oversample=1.5"])
