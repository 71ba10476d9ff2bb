"""``ctvlp tiny-lm``: a small random-weight causal LM for CPU report generation (tests, the demo).

It writes a Qwen2 (``--hidden``, ``--layers``; random weights) and a byte-level BPE tokenizer
trained on the training reports of ``--reports`` (a CSV, e.g. CT-RATE's
``radiology_text_reports/train_reports.csv``), so ``reportgen.lm.name_or_path`` can name a local
directory without any download. Such an LM knows no language: train it with
``reportgen.lm.train=full``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lightning_modules.nets.causal_lm import write_tiny_causal_lm


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tiny-lm",
        help="write a tiny random causal LM (Qwen2) with a tokenizer trained on reports, for CPU runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reports", type=Path, required=True, metavar="CSV", help="training reports CSV")
    parser.add_argument(
        "--text-column", default="Findings_EN", help="report text column (default: Findings_EN)"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="model directory to write")
    parser.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary (default: 1024)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size (default: 128)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not args.reports.is_file():
        raise FileNotFoundError(f"--reports: {args.reports} does not exist")
    frame = pd.read_csv(args.reports, dtype=str, encoding="utf-8-sig")
    if args.text_column not in frame.columns:
        raise FileNotFoundError(
            f"--reports {args.reports} has no column {args.text_column!r} (columns: {', '.join(frame.columns)})"
        )
    texts = [t for t in frame[args.text_column].dropna().tolist() if t.strip()]
    out = write_tiny_causal_lm(
        args.out,
        texts,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden,
        layers=args.layers,
        seed=args.seed,
    )
    print(f"Wrote a tiny random causal LM ({len(texts)} reports trained its tokenizer) to {out}")
    return 0
