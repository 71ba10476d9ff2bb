"""``ctvlp export-nnunet``: a checkpoint's Primus image encoder as nnU-Net v2 pretrained weights.

nnU-Net's Primus trainers (``nnunetv2/training/nnUNetTrainer/primus/primus_trainers.py``) build
``Primus(channels, embed_dim, (8, 8, 8), classes, depth, heads, patch_size, drop_path_rate=0.2,
scale_attn_inner=True, init_values=0.1)`` from dynamic-network-architectures, the class ctvlp's
encoder is, so the backbone's keys (``image_encoder.backbone.<key>`` in a ctvlp checkpoint) are
nnU-Net's ``<key>`` unchanged. ``nnUNetv2_train -pretrained_weights`` reads
``torch.load(file)['network_weights']`` and asserts that *every* key of its network except
``.seg_layers.`` is in the file with the same shape (``nnunetv2/run/load_pretrained_weights.py``).
Primus has no ``.seg_layers.``, so the file must also hold what the encoder lacks:

- ``up_projection.*`` (the decoder; its last layer has one channel per class): a fresh
  initialisation of the network as nnU-Net builds it, the weights it would start from anyway;
- ``eva.pos_embed`` (nnU-Net keeps Primus' default learned absolute position embedding; COLIPRI's
  encoder uses RoPE only): zeros, so the encoder computes exactly what it computed in ctvlp;
- ``eva.blocks.*.gamma_1/2`` when the encoder was trained without layer scale: ones (the same).

The decoder and ``pos_embed`` shapes depend on nnU-Net's number of classes and patch size, so both
are arguments (``--num-classes``; ``--patch-size`` or ``--plans``, default the checkpoint's crop).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from dynamic_network_architectures.architectures.primus import Primus

from ctvlp.config.errors import ConfigError
from ctvlp.run_dir import read_checkpoint, resolve_checkpoint
from lightning_modules.nets.primus_encoder import PRIMUS_SIZES
from lightning_modules.nets.primus_segmenter import ENCODER_PREFIX, primus_encoder_weights

NNUNET_PATCH_EMBED = (8, 8, 8)  # every nnU-Net Primus trainer's patch embedding
# (embed_dim, depth, heads) of nnU-Net's Primus trainers (primus_trainers.py).
NNUNET_TRAINERS = {
    (396, 12, 6): "nnUNet_Primus_S_Trainer",
    (792, 12, 12): "nnUNet_Primus_B_Trainer",
    (864, 16, 12): "nnUNet_Primus_M_Trainer",
    (1056, 24, 16): "nnUNet_Primus_L_Trainer",
}


def nnunet_primus(
    embed_dim: int,
    depth: int,
    heads: int,
    num_classes: int,
    patch_size: Sequence[int],
    input_channels: int = 1,
) -> Primus:
    """The network ``nnUNet_Primus_*_Trainer.build_network_architecture`` builds."""
    return Primus(
        input_channels,
        embed_dim,
        NNUNET_PATCH_EMBED,
        num_classes,
        depth,
        heads,
        tuple(patch_size),
        drop_path_rate=0.2,
        scale_attn_inner=True,
        init_values=0.1,
    )


def _triplet(value: Any) -> tuple[int, int, int]:
    values = [int(value)] if isinstance(value, int | float) else [int(v) for v in value]
    values = values * 3 if len(values) == 1 else values
    if len(values) != 3:
        raise ConfigError(f"expected one size or three, got {value!r}")
    return tuple(values)  # type: ignore[return-value]


def _encoder_architecture(config: dict, path: Path) -> dict[str, Any]:
    image = config.get("model", {}).get("image", {})
    if image.get("arch", "primus") != "primus":
        raise ConfigError(
            f"{path}: its image encoder is '{image.get('arch')}', not a Primus: nnU-Net's Primus trainers "
            "cannot take it"
        )
    size = PRIMUS_SIZES[str(image["size"])]
    architecture = {
        "size": str(image["size"]),
        "embed_dim": size["embed_dim"],
        "depth": size["eva_depth"],
        "heads": size["eva_numheads"],
        "patch_size": _triplet(image.get("patch_size", 8)),
        "crop_size": _triplet(config["data"]["crop_size"]),
        "scale_attn_inner": bool(image.get("scale_attn_inner", True)),
        "num_register_tokens": int(image.get("num_register_tokens", 0)),
    }
    problems = []
    if architecture["patch_size"] != NNUNET_PATCH_EMBED:
        problems.append(f"patches of {architecture['patch_size']} (nnU-Net's Primus embeds 8 x 8 x 8)")
    if not architecture["scale_attn_inner"]:
        problems.append("no inner attention/MLP norms (nnU-Net's Primus has scale_attn_inner=True)")
    if architecture["num_register_tokens"]:
        problems.append(f"{architecture['num_register_tokens']} register tokens (nnU-Net's Primus has none)")
    if problems:
        raise ConfigError(f"{path}: the encoder does not fit nnU-Net's Primus: {'; '.join(problems)}")
    return architecture


def _patch_size(args: argparse.Namespace, crop: tuple[int, int, int]) -> tuple[int, int, int]:
    if args.plans:
        plans = json.loads(Path(args.plans).read_text(encoding="utf-8"))
        configurations = plans.get("configurations", {})
        if args.configuration not in configurations:
            raise ConfigError(
                f"{args.plans} has no configuration '{args.configuration}' (it has {', '.join(configurations)})"
            )
        patch = _triplet(configurations[args.configuration]["patch_size"])
    else:
        patch = _triplet(args.patch_size) if args.patch_size else crop
    if any(p % 8 for p in patch):
        raise ConfigError(f"nnU-Net's Primus needs a patch size divisible by 8, got {patch}")
    return patch


def export_nnunet_weights(
    state_dict: dict[str, torch.Tensor],
    architecture: dict[str, Any],
    num_classes: int,
    patch_size: Sequence[int],
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """nnU-Net's Primus state dict: the encoder's tensors under nnU-Net's keys, the rest filled in
    (see the module docstring). Returns it and which keys came from where."""
    encoder = primus_encoder_weights(state_dict)
    if not encoder:
        raise ConfigError(f"no '{ENCODER_PREFIX}*' weights: not a checkpoint with a Primus image encoder")
    torch.manual_seed(seed)
    network = nnunet_primus(
        architecture["embed_dim"], architecture["depth"], architecture["heads"], num_classes, patch_size
    )
    template = network.state_dict()
    unknown = sorted(set(encoder) - set(template))
    if unknown:
        raise ConfigError(f"encoder weights with no place in nnU-Net's Primus: {', '.join(unknown[:5])}")
    weights: dict[str, torch.Tensor] = {}
    origin: dict[str, list[str]] = {"encoder": [], "decoder_init": [], "zeros": [], "ones": []}
    for key, fresh in template.items():
        if key in encoder:
            value = encoder[key]
            if value.shape != fresh.shape:
                hint = (
                    " (train with the nnU-Net patch size as crop, or pass it)"
                    if key == "eva.pos_embed"
                    else ""
                )
                raise ConfigError(
                    f"{key}: the encoder's {tuple(value.shape)} does not fit nnU-Net's {tuple(fresh.shape)}{hint}"
                )
            weights[key] = value.detach().to("cpu", torch.float32).clone()
            origin["encoder"].append(key)
        elif key == "eva.pos_embed":
            weights[key] = torch.zeros_like(fresh)  # RoPE-only encoder: adding zeros changes nothing
            origin["zeros"].append(key)
        elif key.startswith("eva.blocks.") and key.rsplit(".", 1)[-1] in ("gamma_1", "gamma_2"):
            weights[key] = torch.ones_like(fresh)  # no layer scale = a scale of one
            origin["ones"].append(key)
        elif key.startswith("up_projection."):
            weights[key] = fresh.clone()
            origin["decoder_init"].append(key)
        else:
            raise ConfigError(f"nnU-Net's Primus has '{key}', which the encoder lacks and nothing fills")
    network.load_state_dict(weights, strict=True)  # the file loads into the network it targets
    return weights, origin


def run_export(args: argparse.Namespace) -> int:
    checkpoint = read_checkpoint(resolve_checkpoint(Path(args.ckpt)))
    architecture = _encoder_architecture(checkpoint.config, checkpoint.path)
    patch_size = _patch_size(args, architecture["crop_size"])
    if args.num_classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {args.num_classes}")
    weights, origin = export_nnunet_weights(
        checkpoint.raw["state_dict"], architecture, args.num_classes, patch_size, args.seed
    )
    shape = (architecture["embed_dim"], architecture["depth"], architecture["heads"])
    trainer = NNUNET_TRAINERS.get(shape)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "source": str(checkpoint.path),
        "global_step": checkpoint.global_step,
        "module": checkpoint.config.get("module"),
        "encoder": {k: list(v) if isinstance(v, tuple) else v for k, v in architecture.items()},
        "nnunet_trainer": trainer,
        "num_classes": args.num_classes,
        "patch_size": list(patch_size),
        "origin": origin,
    }
    torch.save({"network_weights": weights, "ctvlp": metadata}, out)
    print(
        f"Wrote {out}: {len(origin['encoder'])} encoder tensors of Primus-{architecture['size']} "
        f"(embed {shape[0]}, depth {shape[1]}, {shape[2]} heads) under nnU-Net's keys, the decoder for "
        f"{args.num_classes} classes freshly initialised, for patch size {'x'.join(map(str, patch_size))}."
    )
    if trainer:
        print(
            "Fine-tune with:\n\n"
            f"  nnUNetv2_train DATASET 3d_fullres FOLD -tr {trainer} -pretrained_weights {out}"
        )
    else:
        print(
            f"No stock nnU-Net trainer builds this size ({', '.join(NNUNET_TRAINERS.values())} do S/B/M/L): "
            "subclass AbstractPrimus with the sizes above to use the file."
        )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-nnunet",
        help="export a checkpoint's Primus image encoder as nnU-Net v2 -pretrained_weights (.pth)",
    )
    parser.add_argument("--ckpt", required=True, help="a ctvlp checkpoint (or run directory)")
    parser.add_argument("--out", required=True, help="output .pth for nnUNetv2_train -pretrained_weights")
    parser.add_argument(
        "--num-classes",
        type=int,
        required=True,
        help="nnU-Net's output channels: the labels of the dataset.json, background included",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs="+",
        help="nnU-Net's patch size (one or three sizes; default: the checkpoint's crop size)",
    )
    parser.add_argument("--plans", help="take the patch size from this nnUNetPlans.json instead")
    parser.add_argument("--configuration", default="3d_fullres", help="the --plans configuration")
    parser.add_argument("--seed", type=int, default=0, help="seed of the decoder's initialisation")
    parser.set_defaults(handler=run_export)
