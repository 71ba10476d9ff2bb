"""Weight exchange with the ``colipri`` package (its ``.safetensors`` layout and model config).

``colipri.model.multimodal.Model`` holds ``image_encoder.{backbone,projector,pooler}``,
``text_encoder.{backbone,pooler}`` and a ``softmax_temperature`` buffer. Our
:class:`~lightning_modules.colipri.ColipriModule` uses the same sub-module names, so the
exchange is a key filter plus three format details:

- colipri's text encoder has no projection: a model whose text width differs from
  ``model.proj_dim`` (and so has ``text_encoder.projection``) cannot be exported.
- colipri keeps BERT's own CLS pooler when the text backbone is a plain ``BertModel`` (it drops
  it only when unwrapping a ``.bert``, as for CXR-BERT). Neither side uses it; on export we
  write the pretrained backbone's pooler weights so that colipri finds every key it expects,
  and on import we ignore them.
- ``softmax_temperature`` (the divisor of colipri's ``classify()`` logits) carries our learned
  CLIP temperature, 1 / exp(logit_scale), both ways. colipri's default is the integer 1; a file
  holding that sets our temperature to 1 on import. Our evaluation protocols do not depend on it
  (zero-shot fixes 0.07, retrieval uses rankings); only further training starts from it.

The ``colipri`` package itself is not needed here (tests use it to check the round trip);
:func:`colipri_model_config` writes the matching colipri model config, so
``colipri.get_model(checkpoint_path=weights, config=config_yaml, pretrained=False)`` loads an
export directly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from datamodules.transforms import as_size3
from lightning_modules.colipri import ColipriModule
from lightning_modules.nets.attention_pool import AttentionPool1D, MultiLearnedQueryAttentionPool1D
from lightning_modules.nets.text_encoder import TextEncoder, _needs_remote_code

PREFIXES = ("image_encoder.", "text_encoder.")
TEMPERATURE_KEY = "softmax_temperature"
BERT_POOLER_PREFIX = "text_encoder.backbone.pooler."


class ColipriFormatError(ValueError):
    """Weights or a model that do not fit the colipri layout; the message says what differs."""


def _our_weights(module: ColipriModule) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if k.startswith(PREFIXES)}


def _pooler_target(pooler: torch.nn.Module) -> str:
    # Check the subclass first: MultiLearnedQueryAttentionPool1D is an AttentionPool1D.
    if isinstance(pooler, MultiLearnedQueryAttentionPool1D):
        if pooler.query.shape[1] != 4:
            raise ColipriFormatError(
                f"colipri's multi-query pooler has 4 queries, this one {pooler.query.shape[1]}"
            )
        return "colipri.pooling.MultiLearnedQueryAttentionPool1D"
    if isinstance(pooler, AttentionPool1D):
        return "colipri.pooling.AttentionPool1D"
    raise ColipriFormatError(f"colipri has no {type(pooler).__name__} pooler (attention poolers only)")


def _check_text_encoder(text_encoder: TextEncoder) -> None:
    if hasattr(text_encoder, "projection"):
        raise ColipriFormatError(
            f"colipri's text encoder has no projection, but this model projects the text width "
            f"{text_encoder.hidden_dim} to model.proj_dim={text_encoder.proj_dim}; only models with "
            f"model.proj_dim equal to the text width can be exchanged"
        )


def colipri_bert_pooler_weights(text_encoder: TextEncoder) -> dict[str, torch.Tensor]:
    """The pretrained BERT CLS-pooler weights colipri keeps for this backbone (empty if none)."""
    pretrained = AutoModel.from_pretrained(
        text_encoder.model_path, trust_remote_code=_needs_remote_code(text_encoder.model_path)
    )
    if hasattr(pretrained, "bert") or getattr(pretrained, "pooler", None) is None:
        return {}
    return {BERT_POOLER_PREFIX + k: v for k, v in pretrained.pooler.state_dict().items()}


def colipri_state_dict(module: ColipriModule) -> dict[str, torch.Tensor]:
    """Our weights under colipri's key names (CPU, contiguous, safetensors-ready)."""
    _check_text_encoder(module.text_encoder)
    _pooler_target(module.image_encoder.pooler)
    _pooler_target(module.text_encoder.pooler)
    weights = {**_our_weights(module), **colipri_bert_pooler_weights(module.text_encoder)}
    weights[TEMPERATURE_KEY] = module.clip_loss.temperature.reshape(())
    return {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in weights.items()
    }


def colipri_model_config(module: ColipriModule) -> dict[str, Any]:
    """The colipri ``model`` config (Hydra ``_target_`` tree) that rebuilds this architecture."""
    cfg = module.cfg
    backbone = module.image_encoder.backbone
    image_shape = [int(c) for c in as_size3(cfg.data.crop_size)]  # (x, y, z); a cube as before
    patch = [int(p) for p in module.image_encoder.patch_size]
    text = module.text_encoder
    return {
        "_target_": "colipri.model.multimodal.Model",
        "image_encoder": {
            "_target_": "colipri.model.image.ImageEncoder",
            "backbone": {
                "_target_": "dynamic_network_architectures.architectures.primus.Primus",
                "input_channels": 1,
                "num_classes": 1,
                "embed_dim": int(module.image_encoder.embed_dim),
                "eva_depth": len(backbone.eva.blocks),
                "eva_numheads": int(backbone.eva.blocks[0].attn.num_heads),
                "patch_embed_size": patch,
                "input_shape": image_shape,
                "use_rot_pos_emb": True,
                "use_abs_pos_embed": bool(cfg.model.image.use_abs_pos_embed),
                "drop_path_rate": float(cfg.model.image.drop_path),
                "init_values": cfg.model.image.layer_scale_init,
                "scale_attn_inner": bool(cfg.model.image.scale_attn_inner),
                "num_register_tokens": int(cfg.model.image.num_register_tokens),
            },
            "projector": {
                "_target_": "torch.nn.Conv3d",
                "in_channels": int(module.image_encoder.embed_dim),
                "out_channels": int(module.image_encoder.proj_dim),
                "kernel_size": 1,
            },
            "pooler": {
                "_target_": _pooler_target(module.image_encoder.pooler),
                "embed_dim": int(module.image_encoder.proj_dim),
                "num_heads": int(module.image_encoder.pooler.attn.num_heads),
            },
        },
        "text_encoder": {
            "_target_": "colipri.model.text.TextEncoder",
            "backbone": {
                "_target_": "transformers.AutoModel.from_pretrained",
                "pretrained_model_name_or_path": text.model_path,
                "trust_remote_code": _needs_remote_code(text.model_path),
            },
            "pooler": {
                "_target_": _pooler_target(text.pooler),
                "embed_dim": int(text.proj_dim),
                "num_heads": int(text.pooler.attn.num_heads),
            },
        },
    }


def export_colipri(module: ColipriModule, path: Path) -> tuple[Path, Path]:
    """Write ``path`` (.safetensors) and the matching colipri model config beside it (.yaml)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ColipriFormatError(f"colipri weights are .safetensors files; got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(colipri_state_dict(module), str(path), metadata={"format": "pt"})
    config_path = path.with_suffix(".yaml")
    OmegaConf.save(OmegaConf.create(colipri_model_config(module)), config_path)
    return path, config_path


def colipri_module_from_weights(cfg: Any, path: Path) -> ColipriModule:
    """The COLIPRI model of the experiment config ``cfg`` (a DictConfig) with the colipri weights at
    ``path`` loaded; a config of another module is refused before anything is built."""
    if str(cfg.module) != "colipri":
        raise ColipriFormatError(
            f"the experiment '{cfg.get('name')}' is a '{cfg.module}' recipe; COLIPRI weights load into a COLIPRI "
            "experiment (colipri_c, colipri_cr, colipri_cm, colipri_crm) whose sizes match them"
        )
    module = ColipriModule(OmegaConf.to_container(cfg, resolve=True))
    load_colipri_weights(module, path)
    return module


def load_colipri_weights(module: ColipriModule, path: Path) -> None:
    """Load a colipri ``.safetensors`` into ``module`` (whose config must match the architecture).

    Every image/text weight of ``module`` must be in the file with the same shape; the file may
    additionally hold BERT's unused CLS pooler (ignored) and ``softmax_temperature`` (our CLIP
    temperature), nothing else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"colipri weights not found: {path}")
    _check_text_encoder(module.text_encoder)
    weights = load_file(str(path))
    ours = _our_weights(module)
    missing = sorted(set(ours) - set(weights))
    unexpected = sorted(
        k for k in set(weights) - set(ours) if k != TEMPERATURE_KEY and not k.startswith(BERT_POOLER_PREFIX)
    )
    mismatched = sorted(
        f"{k}: file {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
        for k, v in ours.items()
        if k in weights and weights[k].shape != v.shape
    )
    if missing or unexpected or mismatched:
        raise ColipriFormatError(
            f"{path} does not match this model configuration (check model.image.size, model.proj_dim, "
            f"model.pool_heads and model.text.name_or_path). Missing: {missing[:5]}{'...' if len(missing) > 5 else ''} "
            f"Unexpected: {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} Shape mismatches: {mismatched[:5]}"
        )
    module.load_state_dict({k: weights[k] for k in ours}, strict=False)
    if TEMPERATURE_KEY in weights:
        temperature = float(weights[TEMPERATURE_KEY])
        if not temperature > 0:
            raise ColipriFormatError(f"{path}: {TEMPERATURE_KEY}={temperature} must be positive")
        with torch.no_grad():
            module.clip_loss.logit_scale.fill_(-math.log(temperature))
