"""``ctvlp export-colipri``: write a trained encoder in the ``colipri`` package's format."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctvlp.commands.eval import load_checkpoint
from ctvlp.config.errors import ConfigError
from lightning_modules.colipri import ColipriModule
from lightning_modules.colipri_interop import ColipriFormatError, export_colipri


def run_export(args: argparse.Namespace) -> int:
    cfg, module, _ = load_checkpoint(Path(args.ckpt))
    if not isinstance(module, ColipriModule):
        raise ConfigError(
            f"{args.ckpt} is a '{cfg.module}' checkpoint; the colipri format holds an image and a text "
            "encoder, so only COLIPRI (module colipri) checkpoints can be exported"
        )
    module.eval()
    try:
        weights, config = export_colipri(module, Path(args.out))
    except ColipriFormatError as error:
        raise ConfigError(str(error)) from error
    print(f"Wrote {weights} and its colipri model config {config}. Load it with:\n")
    print("  import colipri")
    print(f"  model = colipri.get_model(checkpoint_path='{weights}', config='{config}', pretrained=False)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-colipri", help="export a checkpoint's encoders as colipri .safetensors (+ model config .yaml)"
    )
    parser.add_argument("--ckpt", required=True, help="a ctvlp checkpoint (runs/.../checkpoints/last.ckpt)")
    parser.add_argument(
        "--out", required=True, help="output .safetensors path; the .yaml config goes beside it"
    )
    parser.set_defaults(handler=run_export)
