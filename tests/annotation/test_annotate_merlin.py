"""``ctvlp annotate --source merlin --tasks labels``: Merlin's own label layout, -1 kept."""

from __future__ import annotations

import json
import re

import pandas as pd

from ctvlp.bench.chat_server import tagged_text
from ctvlp.cli import main
from datamodules.labels import MERLIN_LABELS
from datamodules.phantom.merlin_writer import write_phantom_merlin
from datamodules.sources.common import split_report


def test_merlin_labels_table_equals_ground_truth(chat_server, tmp_path):
    root = tmp_path / "merlin"
    write_phantom_merlin(root, n=6, seed=0, workers=1, progress=False)
    reports = pd.read_excel(root / "reports_final.xlsx", dtype=str)
    truth = pd.read_csv(root / "zero_shot_findings_disease_cls.csv").set_index("study id")
    by_findings = {
        split_report(t)["findings"]: sid
        for sid, t in zip(reports["study id"], reports["Findings"], strict=True)
    }

    def answer(messages):
        findings = re.match(r"Findings: (.*?)\nImpressions: ", tagged_text(messages), re.DOTALL).group(1)
        row = truth.loc[by_findings[findings]]
        return json.dumps({"labels": {name: int(row[name]) for name in MERLIN_LABELS}})

    server = chat_server(answer=answer)
    argv = ["annotate", "--source", "merlin", "--root", str(root), "--out", str(tmp_path / "out"),
            "--tasks", "labels", "--llm", server.url, "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    written = pd.read_csv(tmp_path / "out" / "llm_labels.csv").set_index("study id")
    assert list(written.columns) == MERLIN_LABELS
    pd.testing.assert_frame_equal(written.sort_index(), truth[MERLIN_LABELS].sort_index(), check_dtype=False)
    assert (written == -1).any().any()
