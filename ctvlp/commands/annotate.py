"""``ctvlp annotate``: LLM-written sidecars (CapPa sections, shortened findings, labels) for a data root."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from datamodules.annotation.agreement import compare_tables, format_table
from datamodules.annotation.inputs import SOURCES
from datamodules.annotation.pipeline import AnnotateOptions, annotate, parse_tasks
from datamodules.annotation.prompts import TASKS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "annotate",
        help="write LLM sidecars: CapPa sections, shortened findings, labels; or compare two label tables",
        description=(
            "Ask an LLM (an OpenAI-compatible endpoint, or a local transformers model directory) to "
            "structure each report of --root: 'sections' writes structured_findings.json, 'shorten' "
            "writes shortened_findings.json, 'labels' writes llm_labels.csv in the source's label "
            "layout (-1 kept). Replies are validated; failures after the retries are listed in "
            "annotate_review.jsonl. Resumable: annotate_progress.jsonl records every finished report. "
            "The API key comes from CTVLP_LLM_API_KEY (or OPENAI_API_KEY). "
            "With --compare-labels A.csv B.csv: per-label and macro agreement under three protocols."
        ),
    )
    parser.add_argument(
        "--source", choices=SOURCES, default="ct_rate", help="dataset layout (default: ct_rate)"
    )
    parser.add_argument("--root", type=Path, metavar="DIR", help="dataset root")
    parser.add_argument(
        "--tasks",
        default="sections,shorten,labels",
        help=f"comma-separated, of {','.join(TASKS)} (default: all)",
    )
    parser.add_argument(
        "--llm", metavar="URL|DIR", help="OpenAI-compatible API base URL, or a local model directory"
    )
    parser.add_argument("--model", default=None, help="model name sent to the endpoint")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="where to write (default: --root)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="requests in flight / batch size"
    )
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N reports")
    parser.add_argument("--retries", type=int, default=3, help="retries per report (default: 3)")
    parser.add_argument(
        "--backoff", type=float, default=1.0, metavar="S", help="first retry delay, doubled each time"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="per-request timeout (default: 120)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=2048, metavar="N", help="reply length limit (default: 2048)"
    )
    parser.add_argument("--retry-failed", action="store_true", help="try reports listed for review again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--compare-labels",
        nargs=2,
        type=Path,
        metavar=("A.csv", "B.csv"),
        help="compare two label tables and exit",
    )
    parser.set_defaults(handler=run)


# How an experiment picks each output up (the sidecars are found in data.root by default).
USE_HINTS = {
    "labels": "  (train on it with data.labels={path})",
    "sections": "  (read from data.root, or set data.text.structured_findings_json={path})",
    "shorten": "  (read from data.root, or set data.text.shortened_findings_json={path})",
}


def run(args: argparse.Namespace) -> int:
    if args.compare_labels:
        a, b = args.compare_labels
        for path in (a, b):
            if not path.is_file():
                raise FileNotFoundError(f"--compare-labels: {path} does not exist")
        print(format_table(compare_tables(a, b)))
        return 0
    if args.root is None or args.llm is None:
        print(
            "ctvlp annotate: error: --root and --llm are required (or --compare-labels A.csv B.csv)",
            file=sys.stderr,
        )
        return 2
    try:
        tasks = parse_tasks(args.tasks)
    except ValueError as error:
        print(f"ctvlp annotate: error: {error}", file=sys.stderr)
        return 2
    options = AnnotateOptions(
        source=args.source,
        root=args.root,
        tasks=tasks,
        llm=args.llm,
        model=args.model,
        out=args.out,
        concurrency=max(1, args.concurrency),
        limit=args.limit,
        retries=max(0, args.retries),
        backoff_s=args.backoff,
        timeout_s=args.timeout,
        max_tokens=args.max_tokens,
        progress_bar=not args.no_progress,
        retry_failed=args.retry_failed,
    )
    start = time.perf_counter()
    counts, written = annotate(options)
    for task, path in written.items():
        print(f"{task}: {path}{USE_HINTS.get(task, '').format(path=path)}")
    print(f"annotate: {counts.line()} in {time.perf_counter() - start:.1f} s")
    if counts.failed:
        review = (args.out or args.root) / "annotate_review.jsonl"
        print(
            f"annotate: {counts.failed} report(s) failed after the retries; listed with reasons in {review}"
        )
    return 0
