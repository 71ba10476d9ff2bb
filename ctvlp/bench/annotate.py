"""``make bench-annotate``: ``ctvlp annotate`` throughput against a local OpenAI-compatible server
with a simulated latency, at concurrency 1 and 32 (``--concurrency``), and their ratio.

The server (``ctvlp.bench.chat_server``) answers every request with a valid
shortened-findings object after ``--latency`` seconds, so the numbers measure the client: requests
in flight, the progress log and the sidecar writes. No pass/fail: the numbers are reported.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from ctvlp.bench.chat_server import FakeChatServer
from ctvlp.console import tolerate_ascii_console
from datamodules.annotation.pipeline import AnnotateOptions, annotate

ANSWER = json.dumps({"positive": ["Right upper lobe nodule."], "negative": ["No pleural effusion."]})


def _write_reports(root: Path, n: int) -> None:
    """A CT-RATE report table of ``n`` distinct reports (annotation reads the tables only)."""
    table = root / "radiology_text_reports" / "train_reports.csv"
    table.parent.mkdir(parents=True)
    rows = [
        [
            f"train_{i}_a_1.nii.gz",
            f"A {4 + i % 9} mm nodule in the right upper lobe (report {i}). No effusion.",
            "",
        ]
        for i in range(n)
    ]
    pd.DataFrame(rows, columns=["VolumeName", "Findings_EN", "Impressions_EN"]).to_csv(table, index=False)


def measure(root: Path, url: str, concurrency: int, out: Path) -> float:
    options = AnnotateOptions(
        "ct_rate", root, ("shorten",), url, out=out, concurrency=concurrency, progress_bar=False
    )
    start = time.perf_counter()
    counts, _ = annotate(options)
    seconds = time.perf_counter() - start
    assert counts.done == counts.requests and counts.failed == 0, counts
    return counts.done / seconds


def main(argv: list[str] | None = None) -> None:
    tolerate_ascii_console()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", type=int, default=64, help="reports per measurement (default 64)")
    parser.add_argument("--latency", type=float, default=0.2, help="server latency in seconds (default 0.2)")
    parser.add_argument("--concurrency", type=int, default=32, help="the parallel setting (default 32)")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="bench_annotate_") as tmp,
        FakeChatServer(lambda messages: ANSWER, latency_s=args.latency) as server,
    ):
        root = Path(tmp) / "ct_rate"
        _write_reports(root, args.reports)
        rates = {c: measure(root, server.url, c, Path(tmp) / f"out_{c}") for c in (1, args.concurrency)}
    print(f"annotate bench: {args.reports} reports, server latency {args.latency * 1000:.0f} ms")
    for concurrency, rate in rates.items():
        print(f"  concurrency {concurrency:>3}: {rate:7.2f} reports/s")
    print(f"  ratio {args.concurrency}/1: {rates[args.concurrency] / rates[1]:.1f}x")


if __name__ == "__main__":
    main()
