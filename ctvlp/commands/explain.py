"""``ctvlp explain``: a Grad-CAM heat map of one volume for one text prompt (GreenRFM paper, Fig. 5).

The checkpoint's module computes the map (``grad_cam(images, prompt)``; GreenRFM: the gradient of the
image–prompt dot product at the last convolutional block, ``evaluation/grad_cam.py``) on the volume's
evaluation sample: the centre crop, exactly what ``ctvlp eval`` encodes.

Writes into ``--out`` (default: ``<run>/explain/``):

- ``<id>_gradcam.nii.gz``: the map (float32, [0, 1]) on the crop's voxel grid;
- ``<id>_input.nii.gz``: the crop itself in HU (int16), so the two overlay in any NIfTI viewer;
- ``<id>_gradcam.png``: axial, coronal and sagittal planes through the map's maximum, the crop in grey
  under the map in colour (radiological display, as the TensorBoard previews).

Both NIfTI files share one affine: RAS+ axes with the cache spacing on the diagonal, and as
translation the crop's start in the cached volume times the spacing. World coordinates are
therefore millimetres from the centre of the cached volume's first voxel (the cache keeps no
scanner origin), so the crop lands where it lies in the cached volume
(``<cache>/volumes/<id>.npy``), and voxel sizes and axis directions are right in any viewer.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from callbacks.grad_cam_images import VIEWS, overlay_planes, peak_voxel
from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import checkpoint_config
from ctvlp.config.modules import MODULES
from ctvlp.run_dir import read_checkpoint, resolve_checkpoint
from datamodules.cache import CacheIndex, read_crop, spacing_triplet
from datamodules.datamodule import resolve_cache_root
from datamodules.transforms import crop_start, hu_to_input
from lightning_modules.nets.text_encoder import load_tokenizer
from lightning_modules.registry import module_class

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")
EXPLAIN_DIR = "explain"
SHOWN_IDS = 5


def _explains(cls: type) -> bool:
    return callable(getattr(cls, "grad_cam", None))


def supported_modules() -> list[str]:
    """The registered modules whose class has ``grad_cam(images, prompt)``."""
    return [name for name in MODULES if _explains(module_class(name))]


def find_volume(datasets: dict[str, Any], split: str, volume_id: str) -> int:
    """The index of ``volume_id`` in ``datasets[split]``; a ConfigError naming a few ids (and the split
    that holds it, if another does) otherwise."""
    entries = datasets[split].entries
    for i, entry in enumerate(entries):
        if entry.id == volume_id:
            return i
    elsewhere = [s for s in SPLITS if s in datasets and any(e.id == volume_id for e in datasets[s].entries)]
    hint = f"; it is in the '{elsewhere[0]}' split: pass --split {elsewhere[0]}" if elsewhere else ""
    shown = ", ".join(e.id for e in entries[:SHOWN_IDS]) + (", ..." if len(entries) > SHOWN_IDS else "")
    raise ConfigError(
        f"Volume {volume_id!r} is not in the '{split}' split ({len(entries)} volumes: {shown}){hint}"
    )


def crop_affine(spacing: tuple[float, float, float], start: tuple[int, ...]) -> np.ndarray:
    """RAS+ voxel -> mm affine of a crop starting at voxel ``start`` of a cached volume (module docstring)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(start, dtype=float) * np.asarray(spacing)
    return affine


def similarity(
    module: Any, tokenizer: Any, max_length: int, images: torch.Tensor, prompt: str
) -> float | None:
    """The image–prompt score the module ranks by (``embedding_similarity``: dot or cosine), the
    quantity whose gradient the map shows for a dot-product model (GreenRFM); None for a module
    without ``encode_image`` and ``encode_text``."""
    if not (
        callable(getattr(module, "encode_image", None)) and callable(getattr(module, "encode_text", None))
    ):
        return None
    tokens = tokenizer(
        [prompt], padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    tokens = {k: v.to(images.device) for k, v in tokens.items()}
    with torch.no_grad():
        image = module.encode_image(images).float()
        text = module.encode_text(tokens["input_ids"], tokens["attention_mask"]).float()
    if getattr(module, "embedding_similarity", "cosine") != "dot":
        image = torch.nn.functional.normalize(image, dim=-1)
        text = torch.nn.functional.normalize(text, dim=-1)
    return float((image * text).sum())


def write_png(
    path: Path,
    volume: torch.Tensor,
    heat: torch.Tensor,
    spacing: tuple[float, float, float],
    title: str,
) -> None:
    """The three overlay planes (``callbacks.grad_cam_images.overlay_planes``) side by side, each at
    its physical aspect ratio, through the map's maximum."""
    point = peak_voxel(heat)
    planes = overlay_planes(volume, heat, point)
    sx, sy, sz = spacing
    # rows / columns of each plane (orthogonal_slices): axial y / x, coronal z / x, sagittal z / y
    aspects = {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}
    figure = Figure(figsize=(12, 4.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(VIEWS))
    for ax, view in zip(axes, VIEWS, strict=True):
        ax.imshow(planes[view].permute(1, 2, 0).numpy(), aspect=aspects[view], interpolation="nearest")
        index = point[2 - VIEWS.index(view)]
        ax.set_title(f"{view} ({'zyx'[VIEWS.index(view)]} = {index})", fontsize=10)
        ax.set_axis_off()
    figure.suptitle(title, fontsize=10)
    figure.savefig(path)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="Grad-CAM heat map of one volume for a text prompt (NIfTI + PNG)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--ckpt", required=True, help="a ctvlp checkpoint, or a run directory (its evaluation checkpoint)"
    )
    parser.add_argument("--volume", required=True, metavar="ID", help="the volume id (as in the cache index)")
    parser.add_argument(
        "--prompt",
        required=True,
        help='the text whose similarity is explained, e.g. "There is pleural effusion."',
    )
    parser.add_argument(
        "--split", choices=SPLITS, default="test", help="the split holding the volume (default: test)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output directory (default: <run>/explain)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--data", default=None, help="data root (sets data.root)")
    parser.add_argument("overrides", nargs="*", help="dot-list overrides of the checkpoint's config")
    parser.set_defaults(handler=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    prompt = args.prompt.strip()
    if not prompt:
        raise ConfigError("--prompt is empty")
    checkpoint = read_checkpoint(resolve_checkpoint(Path(args.ckpt)))
    overrides = [*args.overrides, *([f"data.root={args.data}"] if args.data else [])]
    cfg = checkpoint_config(checkpoint.config, overrides)
    module_cls = module_class(str(cfg.module))
    if not _explains(module_cls):
        raise ConfigError(
            f"{checkpoint.path}: a '{cfg.module}' module has no Grad-CAM (grad_cam(images, prompt)); "
            f"modules that have one: {', '.join(supported_modules()) or 'none'}"
        )
    device = torch.device(args.device)
    module = checkpoint.restore(cfg).to(device).eval()
    log.info("Loaded %s (%s, step %d)", checkpoint.path, cfg.module, checkpoint.global_step)

    datamodule = module_cls.build_datamodule(cfg)
    datamodule.prepare_data()  # the cache, built if missing (as ctvlp eval)
    datamodule.setup("validate")
    index = find_volume(datamodule.datasets, args.split, args.volume)
    dataset = datamodule.datasets[args.split]
    sample = dataset[index]  # an int index: the centre crop, no augmentation (evaluation sample)
    entry = dataset.entries[index]
    start = crop_start(entry.shape, dataset.size, dataset.crop_field)
    spacing = spacing_triplet(CacheIndex.load(resolve_cache_root(cfg.data)).spacing)

    images = sample["image"][None].to(device)
    heat = module.grad_cam(images, prompt)
    if tuple(heat.shape) != (1, *images.shape[2:]):
        raise ValueError(f"grad_cam returned {tuple(heat.shape)}, expected {(1, *images.shape[2:])}")
    heat = heat[0].detach().float().cpu()
    tokenizer = load_tokenizer(cfg.model.text.name_or_path)
    score = similarity(module, tokenizer, int(cfg.model.text.max_length), images, prompt)

    out = args.out if args.out is not None else checkpoint.run / EXPLAIN_DIR
    out.mkdir(parents=True, exist_ok=True)
    affine = crop_affine(spacing, start)
    paths = {
        "heat map": out / f"{entry.id}_gradcam.nii.gz",
        "input crop": out / f"{entry.id}_input.nii.gz",
        "overlay": out / f"{entry.id}_gradcam.png",
    }
    nib.save(nib.Nifti1Image(heat.numpy().astype(np.float32), affine), paths["heat map"])
    hu = read_crop(entry, tuple(start), tuple(dataset.size))
    if not torch.equal(hu_to_input(hu, dataset.hu_window), sample["image"]):
        log.warning("%s does not match the model input of %s exactly", paths["input crop"], entry.id)
    nib.save(nib.Nifti1Image(hu, affine), paths["input crop"])
    scored = "" if score is None else f"  similarity {score:.4g}"
    title = f'{entry.id} ({args.split}): "{prompt}"{scored}'
    write_png(paths["overlay"], sample["image"][0], heat, spacing, title)

    print(f'Grad-CAM of {entry.id} for "{prompt}"' + ("" if score is None else f": similarity {score:.6g}"))
    for what, path in paths.items():
        print(f"  {what}: {path}")
    return 0
