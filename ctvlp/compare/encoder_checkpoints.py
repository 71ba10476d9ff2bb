"""The checkpoints a compare evaluates, and what each encoder costs to run.

Every row ends as a ctvlp checkpoint, so every task reads it the same way: a trained run's own
checkpoint, or one written here for a randomly initialised encoder (the baseline of its
architecture) or for imported COLIPRI weights (same layout as a ``ctvlp fit`` checkpoint: the
state dict and the config under ``hyper_parameters``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from ctvlp.compare.jobs import fingerprint
from ctvlp.config.loader import checkpoint_config
from ctvlp.run_dir import RunDir, read_checkpoint
from datamodules.transforms import as_size3
from lightning_modules.registry import module_class

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.ckpt"


def _plain(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def architecture(cfg: DictConfig) -> tuple[str, str]:
    """``(key, description)`` of a config's image encoder: its module family (GreenRFM's and
    Uniferum's towers are not Primus), ``model.image`` and the crop it is built for. Rows with equal
    keys share one random baseline."""
    module = str(cfg.module)
    family = module if module in ("greenrfm", "uniferum") else "primus"
    image, crop = _plain(cfg, "model.image"), _plain(cfg, "data.crop_size")
    return fingerprint(family, image, crop), f"{family} {image.get('size', '')}, crop {crop}".replace(
        "  ", " "
    )


def write_checkpoint(cfg: DictConfig, module: torch.nn.Module, path: Path) -> Path:
    """A checkpoint in ``ctvlp fit``'s layout (what ``ctvlp eval --ckpt`` and the recipes' ``*_ckpt``
    keys read), in ``<run>/checkpoints/`` beside the run's ``config.yaml``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    container = OmegaConf.to_container(cfg, resolve=True)
    raw = {"state_dict": module.state_dict(), "hyper_parameters": {"config": container}, "global_step": 0}
    temporary = path.with_suffix(".tmp")
    torch.save(raw, temporary)
    temporary.replace(path)
    OmegaConf.save(cfg, RunDir(path.parent.parent).config)
    return path


def _written_checkpoint(
    folder: Path, key: str, build: Callable[[], torch.nn.Module], cfg: DictConfig
) -> Path:
    """``folder/checkpoints/last.ckpt`` of the module ``build`` returns, written once per ``key``
    (``init.json`` keeps the key of the file there)."""
    path = folder / "checkpoints" / CHECKPOINT_NAME
    stamp = folder / "init.json"
    if path.is_file() and stamp.is_file():
        if json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint") == key:
            return path
    write_checkpoint(cfg, build(), path)
    stamp.write_text(json.dumps({"fingerprint": key}) + "\n", encoding="utf-8")
    return path


def random_init_checkpoint(cfg: DictConfig, folder: Path) -> Path:
    """The baseline: ``cfg``'s module as initialised with ``cfg.seed`` (nothing trained; pretrained
    parts the recipe loads, such as a frozen text backbone, stay as loaded). Reused while the config
    is unchanged."""
    container = OmegaConf.to_container(cfg, resolve=True)

    def build() -> torch.nn.Module:
        torch.manual_seed(int(cfg.seed))
        return module_class(str(cfg.module))(container)

    return _written_checkpoint(folder, fingerprint(container), build, cfg)


def colipri_weights_checkpoint(cfg: DictConfig, weights: Path, folder: Path) -> Path:
    """Released COLIPRI weights as a ctvlp checkpoint of ``cfg`` (a COLIPRI experiment)."""
    from lightning_modules.colipri_interop import colipri_module_from_weights

    container = OmegaConf.to_container(cfg, resolve=True)
    stat = weights.stat()
    key = fingerprint(container, str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    return _written_checkpoint(folder, key, lambda: colipri_module_from_weights(cfg, weights), cfg)


# Where a module keeps its image encoder: CLIP-style recipes, Uniferum.
IMAGE_ENCODER_PREFIXES = ("image_encoder.", "vision.")


def _image_encoder(module: torch.nn.Module, cfg: DictConfig) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The image encoder and the input it sees in training (Uniferum: its model input shape)."""
    if hasattr(module, "image_encoder"):
        return module.image_encoder, as_size3(cfg.data.crop_size)
    if hasattr(module, "vision"):
        return module.vision, tuple(int(s) for s in cfg.uniferum.input_shape)
    raise AttributeError(f"module {cfg.module!r} has no image encoder to count")


def _world(cfg: DictConfig) -> int:
    """Devices x nodes a run trained on (``ctvlp fit`` writes the resolved counts into its config;
    an older run's ``auto`` counts as one device)."""
    try:
        devices = int(OmegaConf.select(cfg, "trainer.devices"))
    except (TypeError, ValueError):
        devices = 1
    return devices * int(OmegaConf.select(cfg, "trainer.num_nodes") or 1)


def encoder_costs(path: Path) -> dict[str, Any]:
    """Parameters of the image encoder and its forward + backward FLOPs per training sample (counted
    on the meta device at the recipe's crop size; the text tower, decoders and heads are not
    counted), the samples the checkpoint has seen (global step x global batch), and the devices it
    trained on (``world``: devices x nodes) with its accelerator setting."""
    checkpoint = read_checkpoint(path)
    cfg = checkpoint_config(checkpoint.config)
    state = checkpoint.raw["state_dict"]
    prefix = next((p for p in IMAGE_ENCODER_PREFIXES if any(k.startswith(p) for k in state)), "")
    costs: dict[str, Any] = {
        "params": int(sum(v.numel() for k, v in state.items() if k.startswith(prefix))),
        "params_scope": "image encoder" if prefix else "whole module",
        "steps": checkpoint.global_step,
        "samples": checkpoint.global_step
        * int(OmegaConf.select(cfg, "data.global_batch_size") or cfg.data.batch_size or 0),
        "world": _world(cfg),
        "accelerator": str(OmegaConf.select(cfg, "trainer.accelerator") or "auto"),
    }
    try:
        module = module_class(str(cfg.module))(OmegaConf.to_container(cfg, resolve=True))
        encoder, shape = _image_encoder(module, cfg)
        encoder = encoder.to("meta")
        images = torch.randn(1, 1, *shape, device="meta")
        with FlopCounterMode(display=False) as counter:
            output = encoder(images)
            pooled = output.pooled if hasattr(output, "pooled") else output
            pooled.float().square().mean().backward()
        costs["flops_per_sample"] = float(counter.get_total_flops())
    except (AttributeError, RuntimeError, TypeError, ValueError) as error:
        log.warning("%s: FLOPs per sample not counted (%s)", path, error)
        costs["flops_per_sample"] = None
    if costs["flops_per_sample"] is not None:
        costs["train_flops"] = costs["flops_per_sample"] * costs["samples"]
    return costs
