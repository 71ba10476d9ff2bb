"""``ctvlp export-nnunet``: a tiny COLIPRI checkpoint's Primus encoder, exported and loaded by
nnU-Net v2's own ``load_pretrained_weights`` into the Primus that nnU-Net's trainers build."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ctvlp.cli import main
from ctvlp.commands.export_nnunet import NNUNET_TRAINERS, nnunet_primus
from ctvlp.config.loader import load_experiment
from lightning_modules.colipri import ColipriModule

load_pretrained_weights = pytest.importorskip("nnunetv2.run.load_pretrained_weights").load_pretrained_weights

CROP = 32
PREFIX = "image_encoder.backbone."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny Primus (embed 96, depth 4, 4 heads) COLIPRI-C checkpoint in ctvlp fit's format, every
    encoder tensor random (so that none equals a fresh initialisation by chance)."""
    config = OmegaConf.to_container(
        load_experiment("colipri_c", "cpu_demo", [f"data.crop_size={CROP}"]), resolve=True
    )
    module = ColipriModule(config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, tensor in module.image_encoder.backbone.state_dict().items():
            tensor.copy_(torch.randn_like(tensor) if name != "mask_token" else tensor)
    state_dict = module.state_dict()
    path = tmp_path_factory.mktemp("export_nnunet") / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state_dict, "hyper_parameters": {"config": config}, "global_step": 7}, path)
    encoder = {k[len(PREFIX) :]: v for k, v in state_dict.items() if k.startswith(PREFIX)}
    return path, encoder


def _export(checkpoint: Path, out: Path, *extra: str) -> int:
    return main(["export-nnunet", "--ckpt", str(checkpoint), "--out", str(out), *extra])


def test_nnunet_loads_every_encoder_tensor_and_keeps_a_fresh_decoder(
    checkpoint: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, encoder = checkpoint
    out = tmp_path / "weights.pth"
    assert _export(path, out, "--num-classes", "3") == 0
    assert "nnUNetv2_train" not in capsys.readouterr().out  # no stock trainer builds the tiny size
    saved = torch.load(out, weights_only=False)
    assert saved["ctvlp"]["num_classes"] == 3 and saved["ctvlp"]["patch_size"] == [CROP] * 3
    exported = saved["network_weights"]

    # The network as nnU-Net's Primus trainers build it, with the tiny encoder's sizes.
    torch.manual_seed(123)
    network = nnunet_primus(96, 4, 4, num_classes=3, patch_size=(CROP,) * 3)
    before = copy.deepcopy(network.state_dict())
    load_pretrained_weights(network, str(out))
    after = network.state_dict()

    assert set(encoder) < set(after)
    for key, value in encoder.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    decoder = [k for k in after if k.startswith("up_projection.")]
    assert decoder and set(after) - set(encoder) == {*decoder, "eva.pos_embed"}
    for key in decoder:
        # nnU-Net's loader insists on a decoder in the file: a fresh initialisation of the same
        # layers, same shapes and statistics as the network's own, no encoder weights in it.
        assert after[key].shape == before[key].shape
        torch.testing.assert_close(after[key], exported[key], rtol=0, atol=0)
    assert after["up_projection.decode.2.weight"].shape[1] == 3  # one output channel per class
    assert not after["eva.pos_embed"].any()

    # With pos_embed zero the nnU-Net encoder computes exactly what ctvlp's did.
    network.up_projection = torch.nn.Identity()
    ours = ColipriModule(torch.load(path, weights_only=False)["hyper_parameters"]["config"])
    ours.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    images = torch.randn(2, 1, CROP, CROP, CROP)
    network.eval()
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(network(images), ours.image_encoder.backbone(images))


def test_an_encoder_only_file_is_refused_by_nnunet(
    checkpoint: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    """Why the export fills the decoder: nnU-Net asserts every key but '.seg_layers.' is present."""
    _, encoder = checkpoint
    torch.save({"network_weights": encoder}, tmp_path / "encoder_only.pth")
    network = nnunet_primus(96, 4, 4, num_classes=3, patch_size=(CROP,) * 3)
    with pytest.raises(AssertionError, match="is missing in the pretrained model weights"):
        load_pretrained_weights(network, str(tmp_path / "encoder_only.pth"))


def test_patch_size_from_nnunet_plans_and_refusals(
    checkpoint: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, encoder = checkpoint
    plans = tmp_path / "nnUNetPlans.json"
    plans.write_text('{"configurations": {"3d_fullres": {"patch_size": [48, 32, 40]}}}', encoding="utf-8")
    out = tmp_path / "w.pth"
    assert _export(path, out, "--num-classes", "2", "--plans", str(plans)) == 0
    network = nnunet_primus(96, 4, 4, num_classes=2, patch_size=(48, 32, 40))
    load_pretrained_weights(network, str(out))
    torch.testing.assert_close(network.state_dict()["eva.norm.weight"], encoder["eva.norm.weight"])
    assert network.eva.pos_embed.shape == (1, 6 * 4 * 5, 96)

    assert _export(path, tmp_path / "x.pth", "--num-classes", "2", "--patch-size", "36") == 2
    assert "divisible by 8" in capsys.readouterr().err


def test_the_trainer_table_matches_nnunet() -> None:
    """NNUNET_TRAINERS names the trainers whose networks have those sizes (built on the meta device)."""
    primus_trainers = pytest.importorskip("nnunetv2.training.nnUNetTrainer.primus.primus_trainers")

    class Configuration:
        patch_size = (64, 64, 64)

    for (embed, depth, heads), name in NNUNET_TRAINERS.items():
        with torch.device("meta"):
            net = getattr(primus_trainers, name).build_network_architecture(None, Configuration(), 1, 2)
        assert (net.embed_dim, len(net.eva.blocks), net.eva.blocks[0].attn.num_heads) == (embed, depth, heads)
        assert tuple(net.down_projection.proj.stride) == (8, 8, 8)


def test_a_resnet_checkpoint_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        "module": "greenrfm",
        "model": {"image": {"arch": "r3d_18", "stem": 2}},
        "data": {"crop_size": 32},
    }
    path = tmp_path / "greenrfm.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": config}, "global_step": 0}, path)
    assert _export(path, tmp_path / "x.pth", "--num-classes", "2") == 2
    err = capsys.readouterr().err
    assert "ctvlp export-nnunet: error:" in err and "'r3d_18', not a Primus" in err
    assert not (tmp_path / "x.pth").exists()
