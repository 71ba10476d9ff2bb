"""Agreement between two label tables (e.g. LLM labels vs. a reference), under three protocols.

- ``strict``: -1 is a class of its own (three classes).
- ``ignore_uncertain``: rows with -1 in either table are dropped for that label.
- ``minus_one_to_zero``: -1 counts as 0 (absent).

Per label: Cohen's kappa and accuracy over all classes; precision, recall and F1 of the positive
class (1), with table A as the reference and B as the prediction. Macro: the mean over labels
(labels where a metric is undefined, e.g. kappa with a single class, are left out of the mean).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, cohen_kappa_score, precision_recall_fscore_support

PROTOCOLS = ("strict", "ignore_uncertain", "minus_one_to_zero")
METRICS = ("kappa", "accuracy", "precision", "recall", "f1", "n")


def label_metrics(a: np.ndarray, b: np.ndarray, protocol: str) -> dict[str, float]:
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    if protocol == "ignore_uncertain":
        keep = (a != -1) & (b != -1)
        a, b = a[keep], b[keep]
    elif protocol == "minus_one_to_zero":
        a, b = np.where(a == -1, 0, a), np.where(b == -1, 0, b)
    elif protocol != "strict":
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if len(a) == 0:
        return {m: math.nan for m in METRICS[:-1]} | {"n": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        kappa = cohen_kappa_score(a, b) if len(set(a) | set(b)) > 1 else math.nan
    precision, recall, f1, _ = precision_recall_fscore_support(
        a == 1, b == 1, average="binary", zero_division=0
    )
    return {
        "kappa": float(kappa),
        "accuracy": float(accuracy_score(a, b)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "n": len(a),
    }


def _read(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    return frame.set_index(frame.columns[0])


def compare_tables(path_a: Path, path_b: Path) -> pd.DataFrame:
    """One row per (protocol, label) plus a ``macro`` row per protocol, over the shared ids and labels."""
    a, b = _read(Path(path_a)), _read(Path(path_b))
    ids = a.index.intersection(b.index)
    labels = [c for c in a.columns if c in b.columns]
    if len(ids) == 0 or not labels:
        raise ValueError(f"{path_a} and {path_b} share no ids or no label columns")
    rows = []
    for protocol in PROTOCOLS:
        per_label = []
        for label in labels:
            pair = pd.concat([a.loc[ids, label], b.loc[ids, label]], axis=1).dropna()
            metrics = label_metrics(pair.iloc[:, 0].to_numpy(), pair.iloc[:, 1].to_numpy(), protocol)
            per_label.append(metrics)
            rows.append({"protocol": protocol, "label": label, **metrics})
        macro = {m: float(np.nanmean([r[m] for r in per_label])) for m in METRICS[:-1]}
        rows.append({"protocol": protocol, "label": "macro", **macro, "n": len(ids)})
    return pd.DataFrame(rows)


def format_table(frame: pd.DataFrame) -> str:
    lines = []
    for protocol, group in frame.groupby("protocol", sort=False):
        lines.append(f"\n{protocol}  ({len(group) - 1} labels)")
        lines.append(group.drop(columns="protocol").to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return "\n".join(lines).lstrip("\n")
