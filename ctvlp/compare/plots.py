"""The compare's PNGs (matplotlib, headless): per task, a bar per encoder with its 95 % CI as a
whisker; and quality against training cost on a log axis (training FLOPs of the image encoder,
else CPU/GPU hours), with each random baseline as a dashed line (it costs no training)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from ctvlp.compare.pipeline import Row  # noqa: E402
from ctvlp.compare.spec import CompareSpec  # noqa: E402
from ctvlp.compare.tables import cell, cost_summary  # noqa: E402

BASELINE_COLOUR = "0.6"
# Trained encoders in tab10 without its grey, which would read as a baseline.
ENCODER_COLOURS = tuple(colour for i, colour in enumerate(plt.get_cmap("tab10").colors) if i != 7)
# Panels per line of quality_vs_cost.png (eight tasks in one line made a 34-inch-wide figure).
PANELS_PER_ROW = 4


def _colour(row: Row, index: int) -> object:
    """A row's colour, the same in every plot (its position in the table)."""
    return BASELINE_COLOUR if row.encoder.baseline else ENCODER_COLOURS[index % len(ENCODER_COLOURS)]


def _cost_axis(axis: plt.Axes, costs: list[float], label: str) -> None:
    """A log cost axis. Minor ticks carry no labels (a panel spanning less than a decade printed
    them on top of each other); such a panel labels its lowest and highest cost instead."""
    axis.set_xscale("log")
    axis.set_xlabel(label)
    axis.xaxis.set_minor_formatter(NullFormatter())
    if costs and max(costs) < 10 * min(costs):
        ticks = sorted({min(costs), max(costs)})
        axis.set_xticks(ticks, [f"{t:.2g}" for t in ticks])
    if not costs:
        axis.text(0.5, 0.5, "training cost not measured", ha="center", va="center", transform=axis.transAxes)


def task_bars(rows: list[Row], spec: CompareSpec, task: str, path: Path) -> Path:
    cells = [(row, cell(row, spec, task)) for row in rows]
    names = [row.name for row, _ in cells]
    values = [c.get("value", 0.0) for _, c in cells]
    lower = [c["value"] - c["ci_low"] if c.get("ci_low") is not None else 0.0 for _, c in cells]
    upper = [c["ci_high"] - c["value"] if c.get("ci_high") is not None else 0.0 for _, c in cells]
    colours = [_colour(row, i) for i, (row, _) in enumerate(cells)]
    figure, axis = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.6))
    axis.bar(names, values, yerr=[lower, upper], capsize=4, color=colours)
    for index, (_, found) in enumerate(cells):
        if "value" not in found:
            axis.text(index, 0.0, "n/a", ha="center", va="bottom", fontsize=8)
    axis.set_title(f"{task} (test)")
    axis.set_ylabel(spec.metric(task).split("/", 1)[-1])
    axis.tick_params(axis="x", labelrotation=30)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def quality_vs_cost(rows: list[Row], spec: CompareSpec, path: Path) -> Path:
    """One panel per task: headline value against the encoder's training cost (log x)."""
    use_flops = any(cost_summary(r).get("train_flops") for r in rows)
    cost_key, cost_label = (
        ("train_flops", "training FLOPs (image encoder)") if use_flops else ("cpu_h", "training CPU-hours")
    )
    columns = min(PANELS_PER_ROW, len(spec.tasks))
    lines = math.ceil(len(spec.tasks) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.6 * lines), squeeze=False)
    for axis in axes.flat[len(spec.tasks) :]:
        axis.set_visible(False)
    for axis, task in zip(axes.flat, spec.tasks, strict=False):
        costs: list[float] = []
        for index, row in enumerate(rows):
            found = cell(row, spec, task)
            if "value" not in found:
                continue
            cost = cost_summary(row).get(cost_key)
            if row.encoder.baseline:
                axis.axhline(
                    found["value"], color=BASELINE_COLOUR, linestyle="--", label=f"{row.name} (no training)"
                )
                continue
            if not cost:  # e.g. an existing run's CPU-hours: not measured here
                continue
            costs.append(float(cost))
            axis.scatter([cost], [found["value"]], color=_colour(row, index), label=row.name, zorder=3)
            if found.get("ci_low") is not None and found.get("ci_high") is not None:
                axis.vlines(cost, found["ci_low"], found["ci_high"], color=_colour(row, index))
        _cost_axis(axis, costs, cost_label)
        axis.set_title(task)
        axis.set_ylabel(spec.metric(task).split("/", 1)[-1])
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_plots(rows: list[Row], spec: CompareSpec, folder: Path) -> list[Path]:
    plots = folder / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = [task_bars(rows, spec, task, plots / f"{task}.png") for task in spec.tasks]
    written.append(quality_vs_cost(rows, spec, plots / "quality_vs_cost.png"))
    return written
