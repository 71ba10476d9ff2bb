"""results.json (a flat ``"<split>/<task>/<metric>": float`` map) and its Markdown table."""

from __future__ import annotations

import json
import math
from pathlib import Path


def collect_results(metrics: dict[str, object]) -> dict[str, float]:
    """Keep ``split/task/metric`` scalars (e.g. ``val/retrieval/R@5``) from logged metrics."""
    results: dict[str, float] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] in {"val", "test"}:
            results[key] = float(value)  # type: ignore[arg-type]
    return dict(sorted(results.items()))


def write_results(path: Path, results: dict[str, float]) -> None:
    existing = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    existing.update(results)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(existing.items())), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


CI_SUFFIXES = ("_ci_low", "_ci_high")


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


# Splits of an external dataset scored with the run's own thresholds and probe (``ctvlp eval
# --transfer``): ``transfer_<name>/<task>/<metric>``, shown in a section of their own.
TRANSFER_PREFIX = "transfer_"
# ``transfer_<name>/dataset/<count>``: the split's volumes and label coverage, named in the heading.
TRANSFER_DATASET_TASK = "dataset"


def results_table(results: dict[str, float]) -> str:
    """Markdown: one row per split/task, one column per metric; chance levels in parentheses and
    95 % CIs in brackets when ``<metric>_ci_low`` / ``<metric>_ci_high`` keys exist. Transfer
    splits (``transfer_<name>/...``) follow in a section each, under a heading with their counts."""
    own = {k: v for k, v in results.items() if not k.startswith(TRANSFER_PREFIX)}
    transfers = sorted({k.split("/")[0] for k in results if k.startswith(TRANSFER_PREFIX)})
    parts = [_table(own)] if own or not transfers else []
    for split in transfers:
        prefix = f"{split}/{TRANSFER_DATASET_TASK}/"
        counts = {k.removeprefix(prefix): v for k, v in results.items() if k.startswith(prefix)}
        rows = {k: v for k, v in results.items() if k.startswith(f"{split}/") and not k.startswith(prefix)}
        parts.append(f"### Transfer: {split.removeprefix(TRANSFER_PREFIX)}\n\n{_transfer_note(counts)}")
        parts.append(_table(rows))
    return "\n\n".join(parts)


def _transfer_note(counts: dict[str, float]) -> str:
    note = "Thresholds and the probe from this run's validation split, applied unchanged."
    if {"volumes", "mapped_labels", "unmapped_labels"} <= set(counts):
        note += (
            f" {int(counts['volumes'])} volumes; {int(counts['mapped_labels'])} labels mapped, "
            f"{int(counts['unmapped_labels'])} without a counterpart (named in results_per_label.json)."
        )
    return note


def _table(results: dict[str, float]) -> str:
    rows: dict[tuple[str, str], dict[str, str]] = {}
    columns: list[str] = []
    for key, value in results.items():
        split, task, metric = key.split("/")
        if metric.endswith(("_chance", *CI_SUFFIXES)):
            continue
        chance = results.get(f"{key}_chance")
        cell = _number(value)
        if chance is not None:
            cell += f" (chance {chance:.4f})"
        low, high = (results.get(f"{key}{suffix}") for suffix in CI_SUFFIXES)
        if low is not None and high is not None:
            cell += f" [{_number(low)}, {_number(high)}]"
        rows.setdefault((split, task), {})[metric] = cell
        if metric not in columns:
            columns.append(metric)
    header = "| split | task | " + " | ".join(columns) + " |"
    divider = "|" + "---|" * (len(columns) + 2)
    lines = [header, divider]
    for (split, task), cells in rows.items():
        lines.append(f"| {split} | {task} | " + " | ".join(cells.get(c, "") for c in columns) + " |")
    return "\n".join(lines)
