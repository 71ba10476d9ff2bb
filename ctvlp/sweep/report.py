"""The sweep's summary: one row per run, one column per collected metric (as the paper's tables)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ctvlp.sweep.launchers import run_dir_of
from ctvlp.sweep.spec import SweepRun


def collect(sweep_dir: Path, runs: list[SweepRun], metrics: list[str]) -> dict[str, dict[str, float]]:
    """``run_id -> {metric: value}`` from each run's newest results.json (NaN when missing)."""
    table: dict[str, dict[str, float]] = {}
    for run in runs:
        found = sorted(run_dir_of(sweep_dir, run).glob("version_*/results.json"))
        results = json.loads(found[-1].read_text(encoding="utf-8")) if found else {}
        table[run.run_id] = {metric: float(results.get(metric, math.nan)) for metric in metrics}
    return table


def markdown(runs: list[SweepRun], table: dict[str, dict[str, float]], metrics: list[str]) -> str:
    header = "| run | change | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    for run in runs:
        change = ", ".join(run.overrides) or "(base)"
        cells = [("—" if math.isnan(v) else f"{v:.4f}") for v in (table[run.run_id][m] for m in metrics)]
        lines.append(f"| {run.run_id} | {change} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
