"""The outputs of a compare: ``results.md`` (one row per encoder, one column per task, 95 %
bootstrap CIs where the evaluation computed them, the best value per column in bold, costs),
``results.json``, ``per_label.md`` and TensorBoard HParams."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ctvlp.compare.pipeline import Row
from ctvlp.compare.spec import LOWER_IS_BETTER, CompareSpec

# The reason of a cell that a table written mid-way has not reached yet (every cell has its own
# reason once the compare ends).
PENDING = "pending"

COST_COLUMNS = (
    ("train wall (h)", "wall_h"),
    ("CPU-hours", "cpu_h"),
    ("GPU-hours", "gpu_h"),
    ("peak RSS (GB)", "peak_rss_gb"),
    ("params (M)", "params_m"),
    ("GFLOPs / sample", "gflops_per_sample"),
)


def cell(row: Row, spec: CompareSpec, task: str) -> dict[str, Any]:
    """The headline value of ``task`` for ``row`` with its CI, or why it is missing."""
    metric = spec.metric(task)
    value = row.results.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"metric": metric, "missing": row.missing.get(task, PENDING)}
    return {
        "metric": metric,
        "value": float(value),
        "ci_low": row.results.get(f"{metric}_ci_low"),
        "ci_high": row.results.get(f"{metric}_ci_high"),
    }


def gpu_hours(row: Row) -> float | None:
    """Wall hours x the GPUs the training ran on, when it ran where CUDA devices were visible and
    its accelerator allows them (``auto`` / ``gpu`` / ``cuda``); ``None`` for a CPU run."""
    train = row.train
    on_gpu = row.costs.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    if train is None or train.cuda_devices < 1 or not on_gpu:
        return None
    return train.wall_s / 3600 * int(row.costs.get("world", 1))


def cost_summary(row: Row) -> dict[str, Any]:
    train = row.train
    flops = row.costs.get("flops_per_sample")
    return {
        "wall_h": train.wall_s / 3600 if train else None,
        "cpu_h": train.cpu_s / 3600 if train else None,
        "gpu_h": gpu_hours(row),
        "peak_rss_gb": train.peak_rss_gb if train else None,
        "params_m": row.costs["params"] / 1e6 if "params" in row.costs else None,
        "gflops_per_sample": flops / 1e9 if flops else None,
        # From the checkpoint (steps x batch x FLOPs per sample): known for existing runs too.
        "train_flops": None if row.encoder.baseline else row.costs.get("train_flops"),
        "samples": row.costs.get("samples"),
        "params_scope": row.costs.get("params_scope"),
    }


def results_json(rows: list[Row], spec: CompareSpec) -> dict[str, Any]:
    cells = marked_cells(rows, spec)
    return {
        "spec": spec.name,
        "profile": spec.profile,
        "tasks": {task: spec.metric(task) for task in spec.tasks},
        "encoders": {
            row.name: {
                "source": row.encoder.source,
                "module": row.module,
                "baseline": row.encoder.baseline,
                "tasks": cells[row.name],
                "cost": cost_summary(row),
                "jobs": {key: value for key, value in row.costs.items() if key.endswith("_wall_s")},
                "results": row.results,
            }
            for row in rows
        },
    }


def marked_cells(rows: list[Row], spec: CompareSpec) -> dict[str, dict[str, dict[str, Any]]]:
    """Every row's task cells; a cell with a value also says whether it is the column's best
    (``best``) or not told apart from it by the CIs (``tied_with_best``)."""
    cells = {row.name: {task: cell(row, spec, task) for task in spec.tasks} for row in rows}
    for task in spec.tasks:
        column = [c[task] for c in cells.values()]
        best = _best([c.get("value") for c in column], spec.metric(task))
        best_cell = next((c for c in column if c.get("value") == best), {})
        for found in column:
            if "value" in found:
                found["best"] = found["value"] == best
                found["tied_with_best"] = not found["best"] and tied_with_best(found, best_cell)
    return cells


def tied_with_best(found: dict[str, Any], best: dict[str, Any]) -> bool:
    """Whether a cell's value is not told apart from the column's best by the 95 % CIs: the best
    value inside the cell's CI, or the cell's value inside the best cell's CI."""
    if "value" not in found or "value" not in best:
        return False

    def inside(value: float, cell: dict[str, Any]) -> bool:
        low, high = cell.get("ci_low"), cell.get("ci_high")
        return low is not None and high is not None and low <= value <= high

    return inside(best["value"], found) or inside(found["value"], best)


def _best(values: list[float | None], metric: str) -> float | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return min(present) if metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER else max(present)


def _format(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def markdown(rows: list[Row], spec: CompareSpec) -> str:
    """The table: bold marks the best value per task column; a missing cell names its reason in a
    numbered note under the table."""
    cells = marked_cells(rows, spec)
    costs = {row.name: cost_summary(row) for row in rows}
    header = [
        "encoder",
        "source",
        *(f"{task}<br>{spec.metric(task)}" for task in spec.tasks),
        *(c for c, _ in COST_COLUMNS),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes: list[str] = []
    for row in rows:
        entries = [row.name, row.encoder.source]
        for task in spec.tasks:
            found = cells[row.name][task]
            if found.get("missing") == PENDING:
                entries.append(PENDING)
                continue
            if "value" not in found:
                notes.append(f"{row.name} / {task}: {found['missing']}")
                entries.append(f"n/a [{len(notes)}]")
                continue
            text = _format(found["value"])
            if found.get("ci_low") is not None and found.get("ci_high") is not None:
                text += f" [{_format(found['ci_low'])}, {_format(found['ci_high'])}]"
            if found["best"]:
                text = f"**{text}**"
            elif found["tied_with_best"]:
                text += " ≈"
            entries.append(text)
        for _, key in COST_COLUMNS:
            value = costs[row.name][key]
            entries.append("—" if value is None else f"{value:.3g}")
        lines.append("| " + " | ".join(entries) + " |")
    lines.append("")
    lines += [
        "Test split; [low, high]: 95 % bootstrap CI where the evaluation computed one. Costs are of the",
        "encoder's training job here (— for existing runs and baselines); GPU-hours are wall hours x the",
        "GPUs it trained on (— on CPU); params and GFLOPs count the image encoder (forward + backward",
        "per sample at the recipe's crop). ≈: not told apart from the column's bold value (the bold",
        "value is inside this cell's CI, or this value inside the bold one's).",
    ]
    if notes:
        lines.append("")
        lines += [f"[{number}] {note}" for number, note in enumerate(notes, start=1)]
    return "\n".join(lines)


def per_label_markdown(rows: list[Row], spec: CompareSpec) -> str:
    """Per-label AUROC of each classification task: labels down, encoders across."""
    sections = []
    for task in spec.tasks:
        key = spec.metric(task).rsplit("/", 1)[0] + "/AUROC"
        tables = {
            row.name: row.per_label.get(key) for row in rows if isinstance(row.per_label.get(key), dict)
        }
        if not tables:
            continue
        labels = sorted({label for values in tables.values() for label in values})
        lines = [
            f"## {task} ({key})",
            "",
            "| label | " + " | ".join(tables) + " |",
            "|" + "---|" * (len(tables) + 1),
        ]
        for label in labels:
            values = [tables[name].get(label) for name in tables]
            lines.append(
                f"| {label} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in values) + " |"
            )
        sections.append("\n".join(lines))
    return "\n\n".join(sections) if sections else "No per-label values (no classification task ran)."


def write_hparams(rows: list[Row], spec: CompareSpec, folder: Path) -> None:
    """One HParams entry per encoder (TensorBoard's HParams tab compares them)."""
    from torch.utils.tensorboard import SummaryWriter

    for row in rows:
        summary = cost_summary(row)
        hparams = {
            "encoder": row.name,
            "source": row.encoder.source,
            "module": row.module,
            "baseline": row.encoder.baseline,
        }
        hparams.update({key: value for key, value in summary.items() if isinstance(value, int | float)})
        metrics = {
            f"compare/{task}": c["value"] for task in spec.tasks if "value" in (c := cell(row, spec, task))
        }
        with SummaryWriter(str(folder / "tensorboard" / row.name)) as writer:
            writer.add_hparams(hparams, metrics or {"compare/none": math.nan}, run_name=".")


def write_tables(rows: list[Row], spec: CompareSpec, folder: Path, hparams: bool = True) -> dict[str, Path]:
    """The table, its JSON and the per-label tables; the HParams too unless ``hparams`` is False
    (the tables rewritten after every stage: one HParams entry per row is written at the end)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "results.md": folder / "results.md",
        "results.json": folder / "results.json",
        "per_label.md": folder / "per_label.md",
    }
    paths["results.md"].write_text(markdown(rows, spec) + "\n", encoding="utf-8")
    paths["results.json"].write_text(
        json.dumps(results_json(rows, spec), indent=1, default=str) + "\n", encoding="utf-8"
    )
    paths["per_label.md"].write_text(per_label_markdown(rows, spec) + "\n", encoding="utf-8")
    if hparams:
        write_hparams(rows, spec, folder)
    return paths
