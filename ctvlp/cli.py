"""The ``ctvlp`` command line: one sub-command per file in ``ctvlp/commands``."""

from __future__ import annotations

import argparse
import logging
import sys

from ctvlp.commands import (
    annotate,
    compare,
    explain,
    export_colipri,
    export_nnunet,
    fit,
    import_colipri,
    label_reports,
    phantom,
    preprocess,
    sweep,
    tiny_lm,
)
from ctvlp.commands import eval as eval_command
from ctvlp.config.errors import ConfigError
from ctvlp.console import tolerate_ascii_console
from datamodules.errors import DataRootError, MissingLabelColumnError

USER_ERRORS = (ConfigError, DataRootError, MissingLabelColumnError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctvlp", description="3D CT vision-language pretraining")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in (
        fit,
        sweep,
        compare,
        eval_command,
        explain,
        export_colipri,
        export_nnunet,
        import_colipri,
        phantom,
        preprocess,
        annotate,
        label_reports,
        tiny_lm,
    ):
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    tolerate_ascii_console()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    # Dot-list overrides may come after options (``fit NAME --profile P k=v``), which argparse
    # cannot attach to an earlier positional: collect them here.
    args, unknown = parser.parse_known_args(argv)
    misplaced = [a for a in unknown if a.startswith("-") or "=" not in a]
    if misplaced or (unknown and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(misplaced or unknown)}")
    if unknown:
        args.overrides = [*args.overrides, *unknown]
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as error:
        print(f"ctvlp {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
