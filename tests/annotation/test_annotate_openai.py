"""``ctvlp annotate`` against an OpenAI-compatible server that answers from the phantom's truth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ctvlp.bench.chat_server import tagged_text
from ctvlp.cli import main
from datamodules.annotation.inputs import read_items
from datamodules.annotation.pipeline import AnnotateOptions, annotate
from datamodules.annotation.runner import read_progress
from datamodules.labels import CT_RATE_LABELS
from datamodules.report_sections import load_structured_sections, volume_key
from datamodules.text import load_shortened_findings

REPO = Path(__file__).resolve().parents[2]


def _cli(root: Path, out: Path, url: str, *extra: str) -> list[str]:
    return ["annotate", "--root", str(root), "--out", str(out), "--llm", url, "--model", "fake", "--no-progress",
            "--backoff", "0.01", *extra]  # fmt: skip


def _fault(number: int) -> str | None:
    """Deterministic faults; at most three in a row, so a report's fourth attempt always succeeds."""
    if number % 5 == 1:
        return "500"
    if number % 5 == 2:
        return "malformed"
    return "slow" if number % 13 == 0 else None


def test_sidecars_equal_ground_truth_through_faults(
    annotate_root, truth, chat_server, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("CTVLP_LLM_API_KEY", "sk-test-secret")
    server = chat_server(fault=_fault, slow_s=2.0)
    out = tmp_path / "out"
    args = _cli(annotate_root, out, server.url, "--concurrency", "1", "--timeout", "0.5", "--retries", "3")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert server.authorization == "Bearer sk-test-secret"

    sections = load_structured_sections(out / "structured_findings.json")
    shortened = load_shortened_findings(out / "shortened_findings.json")
    assert set(sections) == {volume_key(v) for v in truth.volumes}
    for volume in truth.volumes:
        assert sections[volume_key(volume)] == truth.sections(volume)
        assert shortened[volume_key(volume)] == truth.shortened[volume]
    labels = pd.read_csv(out / "llm_labels.csv")
    assert list(labels.columns) == ["VolumeName", *CT_RATE_LABELS]
    assert {
        row["VolumeName"]: {n: row[n] for n in CT_RATE_LABELS} for _, row in labels.iterrows()
    } == truth.labels

    meta = json.loads((out / "shortened_findings.json.meta.json").read_text(encoding="utf-8"))
    assert meta["prompt_version"] == "shorten-v1" and meta["model"] == "fake" and meta["date"]
    assert (
        f"done {3 * len(read_items('ct_rate', annotate_root))}, retried" in printed and "failed 0" in printed
    )
    retried = int(printed.split("retried ")[1].split(",")[0])
    assert retried > 5
    for path in out.iterdir():  # the key goes in the header only
        assert "sk-test-secret" not in path.read_text(encoding="utf-8")


def test_invalid_replies_go_to_review_file(annotate_root, truth, chat_server, tmp_path, capsys):
    bad_volume = truth.volumes[0]
    bad_findings = truth.findings[bad_volume]

    def answer(messages):
        if tagged_text(messages) == bad_findings:
            return json.dumps({"positive": ["fine"], "negative": "not a list"})
        return truth.answer(messages)

    server = chat_server(answer=answer)
    out = tmp_path / "out"
    assert main(_cli(annotate_root, out, server.url, "--tasks", "shorten", "--retries", "2")) == 0
    printed = capsys.readouterr().out
    assert "failed 1" in printed and "annotate_review.jsonl" in printed
    review = [
        json.loads(line) for line in (out / "annotate_review.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [(r["id"], r["task"], r["attempts"]) for r in review] == [(bad_volume, "shorten", 3)]
    assert "'negative' must be a list" in review[0]["reason"]
    shortened = load_shortened_findings(out / "shortened_findings.json")
    assert volume_key(bad_volume) not in shortened
    assert len(shortened) == len(truth.volumes) - sum(f == bad_findings for f in truth.findings.values())
    # a re-run keeps the failure listed and does not ask again, unless told to
    before = server.requests
    assert main(_cli(annotate_root, out, server.url, "--tasks", "shorten")) == 0
    assert server.requests == before


def test_resume_after_sigkill_redoes_nothing(annotate_root, truth, chat_server, tmp_path):
    server = chat_server(latency_s=0.15)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ctvlp.cli", *_cli(annotate_root, out, server.url, "--tasks", "shorten,labels",
                                                        "--concurrency", "1")]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    progress = out / "annotate_progress.jsonl"
    deadline = time.monotonic() + 120
    while not (progress.exists() and len(progress.read_text(encoding="utf-8").splitlines()) >= 4):
        assert process.poll() is None, "annotate ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(0.3)  # a request already on the wire is counted before the comparison
    finished = len(read_progress(progress))
    first_requests = server.requests
    total = 2 * len(read_items("ct_rate", annotate_root))
    assert 4 <= finished < total
    assert finished <= first_requests <= finished + 1  # at most the request in flight is lost

    assert main(_cli(annotate_root, out, server.url, "--tasks", "shorten,labels", "--concurrency", "4")) == 0
    assert server.requests - first_requests == total - finished
    shortened = load_shortened_findings(out / "shortened_findings.json")
    assert shortened == {volume_key(v): truth.shortened[v] for v in truth.volumes}


def test_concurrency_is_real(annotate_root, chat_server, tmp_path):
    server = chat_server(latency_s=0.1)
    seconds = {}
    for concurrency in (1, 8):
        options = AnnotateOptions("ct_rate", annotate_root, ("sections", "shorten"), server.url,
                                  out=tmp_path / str(concurrency), concurrency=concurrency, progress_bar=False)  # fmt: skip
        start = time.perf_counter()
        counts, _ = annotate(options)
        seconds[concurrency] = time.perf_counter() - start
        assert counts.done >= 20 and counts.failed == 0
    assert seconds[1] / seconds[8] > 3, seconds


def test_wrong_source_layout_is_a_user_error(tmp_path, capsys):
    assert main(["annotate", "--root", str(tmp_path), "--llm", "http://127.0.0.1:9/v1", "--no-progress"]) == 2
    assert "no CT-RATE report table" in capsys.readouterr().err
    assert main(["annotate", "--root", str(tmp_path)]) == 2
    assert "--root and --llm are required" in capsys.readouterr().err
    assert main(["annotate", "--root", str(tmp_path), "--llm", "http://x/v1", "--tasks", "summary"]) == 2
    assert "unknown ['summary']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("task", "reply", "reason"),
    [
        ("sections", '{"Lungs and Airways": []}', "exactly the eight"),
        ("shorten", '{"positive": [], "negative": [], "extra": []}', "exactly 'positive' and 'negative'"),
        ("labels", '{"labels": {"Cardiomegaly": 1}}', "expected exactly 18 labels"),
        ("labels", json.dumps({"labels": dict.fromkeys(CT_RATE_LABELS, 2)}), "1, 0 or -1"),
        ("shorten", "```json\nnot json\n```", "not JSON"),
        ("labels", json.dumps({"labels": [1, 0, -1]}), "expected exactly 18 labels, got a list of 3"),
        ("labels", json.dumps({"labels": [True] * 18}), "1, 0 or -1"),
    ],
)
def test_schemas_reject(task, reply, reason):
    from datamodules.annotation.prompts import Task, ValidationError

    with pytest.raises(ValidationError, match=reason):
        Task(task, tuple(CT_RATE_LABELS)).validate(reply)


def test_limit_keeps_earlier_results_and_a_foreign_sidecar_is_kept(
    annotate_root, truth, chat_server, tmp_path
):
    server = chat_server()
    out = tmp_path / "out"
    out.mkdir()
    (out / "shortened_findings.json").write_text(
        "{}", encoding="utf-8"
    )  # e.g. a hand-made file: kept as .orig
    n_items = len(read_items("ct_rate", annotate_root))
    assert main(_cli(annotate_root, out, server.url, "--tasks", "shorten")) == 0
    assert server.requests == n_items
    assert (out / "shortened_findings.json.orig").read_text(encoding="utf-8") == "{}"
    assert main(_cli(annotate_root, out, server.url, "--tasks", "shorten", "--limit", "2")) == 0
    assert server.requests == n_items  # nothing to redo
    shortened = load_shortened_findings(out / "shortened_findings.json")
    assert len(shortened) == len(truth.volumes)  # the limited run kept every earlier result
    assert (out / "shortened_findings.json.orig").read_text(encoding="utf-8") == "{}"


def test_labels_as_a_list_in_the_order_asked():
    from datamodules.annotation.prompts import Task

    values = [1, 0, -1] * 6
    reply = "```json\n" + json.dumps({"labels": values}) + "\n```"
    assert Task("labels", tuple(CT_RATE_LABELS)).validate(reply) == dict(
        zip(CT_RATE_LABELS, values, strict=True)
    )


def test_a_server_without_json_mode_is_asked_without_it(annotate_root, chat_server, tmp_path, capsys):
    server = chat_server(fault=lambda number: "no_json_mode")
    out = tmp_path / "out"
    assert main(_cli(annotate_root, out, server.url, "--tasks", "shorten", "--concurrency", "1")) == 0
    n_items = len(read_items("ct_rate", annotate_root))
    assert f"done {n_items}, retried 1, failed 0" in capsys.readouterr().out
    assert server.requests == n_items + 1  # one rejected request, then none asks for JSON mode


def test_sections_must_copy_the_findings_verbatim():
    from datamodules.annotation.prompts import Task, ValidationError
    from datamodules.report_sections import SECTION_NAMES

    findings = "Trachea is open.  No pleural effusion. Heart is enlarged."
    task = Task("sections")

    def reply(**sections: list[str]) -> str:
        answer = dict.fromkeys(SECTION_NAMES, [])
        answer.update({name.replace("_", " "): value for name, value in sections.items()})
        return json.dumps(answer)

    good = reply(Lungs_and_Airways=["Trachea is open."], Pleura=["No pleural effusion."],
                 Cardiovascular_Structures=["Heart is enlarged."])  # fmt: skip
    assert task.validate(good, findings)["Pleura"] == ["No pleural effusion."]
    # the model may cut sentences differently, as long as it copies them
    merged = reply(
        Lungs_and_Airways=["Trachea is open. No pleural effusion."], Upper_Abdomen=["Heart is enlarged."]
    )
    assert task.validate(merged, findings)["Lungs and Airways"] == ["Trachea is open. No pleural effusion."]
    cases = {
        "not copied verbatim": reply(Lungs_and_Airways=["Trachea is open."], Pleura=["No pleural effusion."],
                                     Cardiovascular_Structures=["The heart is enlarged."]),
        "sentences dropped": reply(Lungs_and_Airways=["Trachea is open."], Pleura=["No pleural effusion."]),
        "sentences repeated": reply(Lungs_and_Airways=["Trachea is open.", "Trachea is open."],
                                    Pleura=["No pleural effusion."], Cardiovascular_Structures=["Heart is enlarged."]),
    }  # fmt: skip
    for reason, bad in cases.items():
        with pytest.raises(ValidationError, match=reason):
            task.validate(bad, findings)
        task.validate(bad)  # without the Findings only the schema is checked


def test_paraphrased_sections_are_listed_for_review(annotate_root, truth, chat_server, tmp_path):
    bad_volume = truth.volumes[0]

    def answer(messages):
        reply = json.loads(truth.answer(messages))
        if (
            messages[-1]["content"].startswith("Sort every sentence")
            and tagged_text(messages) == truth.findings[bad_volume]
        ):
            reply["Lungs and Airways"] = [s.replace(".", " seen.") for s in reply["Lungs and Airways"]]
        return json.dumps(reply)

    server = chat_server(answer=answer)
    out = tmp_path / "out"
    assert main(_cli(annotate_root, out, server.url, "--tasks", "sections", "--retries", "1")) == 0
    review = [
        json.loads(line) for line in (out / "annotate_review.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [(r["id"], r["task"]) for r in review] == [(bad_volume, "sections")]
    assert "not copied verbatim" in review[0]["reason"]
    assert volume_key(bad_volume) not in load_structured_sections(out / "structured_findings.json")
