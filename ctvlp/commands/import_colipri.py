"""``ctvlp import-colipri``: released COLIPRI weights (the ``colipri`` package's ``.safetensors``) as a
checkpoint in ``ctvlp fit``'s layout, so every key that reads a fit checkpoint takes them:
``segmentation.init_ckpt``, ``reportgen.encoder_ckpt``, ``ctvlp eval --ckpt``, ``ctvlp export-nnunet``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctvlp.compare.encoder_checkpoints import colipri_weights_checkpoint
from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import load_experiment
from lightning_modules.colipri_interop import ColipriFormatError


def run_import(args: argparse.Namespace) -> int:
    weights = Path(args.weights)
    if not weights.is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file (a colipri-format .safetensors)")
    cfg = load_experiment(args.experiment, args.profile, list(args.overrides))
    try:
        checkpoint = colipri_weights_checkpoint(cfg, weights, Path(args.out))
    except ColipriFormatError as error:
        raise ConfigError(f"{weights}: {error}") from error
    print(f"Wrote {checkpoint} (the {args.experiment} model with the weights of {weights}). Use it as:\n")
    print(f'  make exp NAME=seg_finetune ARGS="segmentation.init_ckpt={checkpoint} data.root=..."')
    print(f"  ctvlp eval --ckpt {checkpoint}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-colipri",
        help="write colipri-format weights as a ctvlp fit checkpoint (for segmentation, reportgen, eval)",
        description=__doc__,
    )
    parser.add_argument("--weights", required=True, help="a colipri-format .safetensors file")
    parser.add_argument(
        "--experiment", default="colipri_crm", help="the COLIPRI experiment whose model matches the weights"
    )
    parser.add_argument("--profile", default=None, help="a profile overlay (e.g. cpu_demo)")
    parser.add_argument(
        "--out", required=True, help="run folder: <out>/checkpoints/last.ckpt and config.yaml"
    )
    parser.add_argument("overrides", nargs="*", help="dot-list overrides of the experiment (model sizes)")
    parser.set_defaults(handler=run_import)
