"""``ctvlp annotate --compare-labels``: agreement figures checked against hand computation."""

from __future__ import annotations

import pandas as pd
import pytest

from ctvlp.cli import main
from datamodules.annotation.agreement import compare_tables

IDS = ["a", "b", "c", "d", "e", "f"]


@pytest.fixture
def tables(tmp_path):
    a = pd.DataFrame({"VolumeName": IDS, "X": [1, 1, 0, 0, -1, 1], "Y": [0, 1, 0, 1, 0, 1]})
    # B: other row order, one id that A lacks (ignored)
    b = pd.DataFrame(
        {"VolumeName": ["z", *IDS[::-1]], "X": [1, -1, -1, 1, 0, 0, 1], "Y": [1, 1, 0, 1, 0, 1, 0]}
    )
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    return tmp_path / "a.csv", tmp_path / "b.csv"


def test_agreement_matches_hand_computation(tables):
    frame = compare_tables(*tables).set_index(["protocol", "label"])
    # X pairs (A, B): (1,1) (1,0) (0,0) (0,1) (-1,-1) (1,-1)
    # strict: p_o = 3/6; p_e = (3*2 + 2*2 + 1*2) / 36 = 1/3; kappa = (1/2 - 1/3) / (2/3) = 1/4
    # positive class: TP 1, FP 1, FN 2 -> precision 1/2, recall 1/3, F1 2/5
    expected = {
        "strict": dict(kappa=0.25, accuracy=0.5, precision=0.5, recall=1 / 3, f1=0.4, n=6),
        # rows e, f dropped: (1,1) (1,0) (0,0) (0,1): p_o = p_e = 1/2
        "ignore_uncertain": dict(kappa=0.0, accuracy=0.5, precision=0.5, recall=0.5, f1=0.5, n=4),
        # A = 1 1 0 0 0 1, B = 1 0 0 1 0 0: p_o = 1/2, p_e = (3*2 + 3*4) / 36 = 1/2
        "minus_one_to_zero": dict(kappa=0.0, accuracy=0.5, precision=0.5, recall=1 / 3, f1=0.4, n=6),
    }
    for protocol, metrics in expected.items():
        for metric, value in metrics.items():
            assert frame.loc[(protocol, "X"), metric] == pytest.approx(value), (protocol, metric)
            assert frame.loc[(protocol, "Y"), metric] == pytest.approx(1.0 if metric != "n" else 6)
    assert frame.loc[("strict", "macro"), "kappa"] == pytest.approx(0.625)
    assert frame.loc[("strict", "macro"), "f1"] == pytest.approx(0.7)
    assert frame.loc[("ignore_uncertain", "macro"), "accuracy"] == pytest.approx(0.75)


def test_compare_labels_command_prints_all_protocols(tables, capsys):
    assert main(["annotate", "--compare-labels", str(tables[0]), str(tables[1])]) == 0
    printed = capsys.readouterr().out
    for word in ("strict", "ignore_uncertain", "minus_one_to_zero", "macro", "kappa", "f1"):
        assert word in printed
    assert main(["annotate", "--compare-labels", str(tables[0]), "missing.csv"]) == 2
