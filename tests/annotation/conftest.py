"""A tables-only phantom CT-RATE (reports, labels and shortened findings, no volumes: annotation
reads only the tables) and an OpenAI-compatible server that answers from the phantom's ground truth."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from ctvlp.bench.chat_server import FakeChatServer, tagged_text
from datamodules.labels import CT_RATE_LABELS
from datamodules.phantom.ct_rate_writer import _plan, _write_tables
from datamodules.sources.ct_rate import SPLIT_LAYOUTS

N_SCANS = 12


class GroundTruth:
    """The phantom's truth per findings text: sections and shortened findings (the phantom writer's
    own sidecars, recorded as it wrote each sentence) and labels (its label CSVs). Head CTs (the
    no_chest lists) are not annotated."""

    def __init__(self, root: Path):
        self.root = root
        reports = pd.concat([pd.read_csv(root / lay.reports, dtype=str).fillna("") for lay in SPLIT_LAYOUTS])
        labels = pd.concat([pd.read_csv(root / lay.labels) for lay in SPLIT_LAYOUTS])
        shortened = json.loads((root / "shortened_findings.json").read_text(encoding="utf-8"))
        heads = {
            line
            for lay in SPLIT_LAYOUTS
            for line in (root / lay.no_chest).read_text(encoding="utf-8").split()
        }
        reports = reports[~reports["VolumeName"].isin(heads)]
        labels = labels[~labels["VolumeName"].isin(heads)]
        self.volumes = list(reports["VolumeName"])
        self.findings = dict(zip(reports["VolumeName"], reports["Findings_EN"], strict=True))
        self.labels = {
            row["VolumeName"]: {n: int(row[n]) for n in CT_RATE_LABELS} for _, row in labels.iterrows()
        }
        self.shortened = shortened
        self.structured = json.loads((root / "structured_findings.json").read_text(encoding="utf-8"))
        self.by_findings = {f: v for v, f in self.findings.items()}

    def sections(self, volume: str) -> dict[str, list[str]]:
        return self.structured[volume]

    def answer(self, messages: list[dict[str, str]]) -> str:
        prompt = messages[-1]["content"]
        text = tagged_text(messages)
        if prompt.startswith("Read this CT report"):
            text = re.match(r"(?:Findings: )?(.*?)(?:\nImpressions: .*)?$", text, re.DOTALL).group(1)
            return json.dumps({"labels": self.labels[self.by_findings[text]]})
        volume = self.by_findings[text]
        if prompt.startswith("Sort every sentence"):
            return json.dumps(self.sections(volume))
        return json.dumps(self.shortened[volume])


@pytest.fixture(scope="session")
def annotate_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("annotate") / "ct_rate"
    root.mkdir()
    _write_tables(root, _plan(root, N_SCANS, seed=0))
    return root


@pytest.fixture(scope="session")
def truth(annotate_root: Path) -> GroundTruth:
    return GroundTruth(annotate_root)


@pytest.fixture
def chat_server(truth: GroundTruth) -> Iterator[Callable[..., FakeChatServer]]:
    """``chat_server(fault=..., latency_s=..., answer=...)``: a started server, stopped after the test."""
    servers: list[FakeChatServer] = []

    def start(**kwargs) -> FakeChatServer:
        kwargs.setdefault("answer", truth.answer)
        server = FakeChatServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
