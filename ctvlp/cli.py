"""The ``ctvlp`` command line: one sub-command per file in ``ctvlp/commands``."""

from __future__ import annotations

import argparse
import logging
import sys

from ctvlp.commands import fit, phantom, preprocess
from ctvlp.config.loader import ConfigError
from datamodules.errors import DataRootError, MissingLabelColumnError

USER_ERRORS = (ConfigError, DataRootError, MissingLabelColumnError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctvlp", description="3D CT vision-language pretraining")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in (fit, phantom, preprocess):
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as error:
        print(f"ctvlp {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
