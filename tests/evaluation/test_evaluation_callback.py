"""EvaluationCallback: fires every N steps on rank 0 only and logs flat scalars."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from callbacks.evaluation import EvaluationCallback, evaluation_callback_from_config
from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import load_experiment
from evaluation.runner import EvalSettings

LABELS = ["alpha", "beta", "gamma"]


class ToyTokenizer:
    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def __call__(self, texts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        return self.registry.tokenize(texts)


class ToyCollate:
    def __init__(self, registry: Any) -> None:
        self.tokenizer, self.max_length = ToyTokenizer(registry), 8

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = {
            "image": torch.stack([s["image"] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples]),
            "image_id": [s["image_id"] for s in samples],
            "labels": torch.stack([s["labels"] for s in samples]),
        }
        return {**batch, **self.tokenizer([s["report"] for s in samples])}


def _datamodule(data: Any) -> SimpleNamespace:
    def dataset(split: str) -> list[dict[str, Any]]:
        d = data.splits[split]
        return [
            {"image": d["images"][i], "index": i, "image_id": f"v{i}", "labels": d["labels"][i], "report": r}
            for i, r in enumerate(d["reports"])
        ]

    train = data.splits["train"]
    entries = [
        SimpleNamespace(sections={"findings": r}, labels=train["labels"][i].tolist())
        for i, r in enumerate(train["reports"])
    ]
    return SimpleNamespace(
        datasets={s: dataset(s) for s in ("val", "test")},
        splits={"train": entries},
        collate=ToyCollate(data.registry),
        data=SimpleNamespace(batch_size=8),
        label_names=LABELS,
    )


class RecordingLogger:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((step, metrics))


def _trainer(data: Any, step: int, rank_zero: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        datamodule=_datamodule(data),
        global_step=step,
        is_global_zero=rank_zero,
        logger=RecordingLogger(),
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
    )


def test_fires_every_n_steps_with_retrieval_and_short_zero_shot(toy_data: Any, toy_model: Any) -> None:
    toy_model.device = torch.device("cpu")
    callback = EvaluationCallback(every_n_steps=5, settings=EvalSettings(input_size=2, probe_heads=2))
    # Step 0, steps that are not multiples of 5 and a repeated step 5 (gradient accumulation) skip.
    for step, fires in ((0, False), (3, False), (5, True), (5, False), (7, False), (10, True)):
        trainer = _trainer(toy_data, step)
        toy_model.train()
        callback.on_train_batch_end(trainer, toy_model, None, None, 0)
        assert toy_model.training  # train mode restored
        if not fires:
            assert not trainer.logger.logged
            continue
        ((logged_step, metrics),) = trainer.logger.logged
        assert logged_step == step
        assert metrics["val/retrieval/R@1"] > metrics["val/retrieval/R@1_chance"]
        assert metrics["val/zeroshot_short/AUROC"] > 0.9
        assert not any(k.startswith(("val/probe", "val/zeroshot_native")) or "_ci_" in k for k in metrics)


def test_only_global_rank_zero_evaluates(toy_data: Any, toy_model: Any) -> None:
    toy_model.device = torch.device("cpu")
    callback = EvaluationCallback(every_n_steps=5, settings=EvalSettings(input_size=2, probe_heads=2))
    trainer = _trainer(toy_data, 5, rank_zero=False)
    callback.on_train_batch_end(trainer, toy_model, None, None, 0)
    assert not trainer.logger.logged and toy_model.image_encoder.calls == 0


def test_config_builds_the_callback_and_rejects_unknown_tasks() -> None:
    cfg = load_experiment("colipri_c", "cpu_demo", ["data.root=unused", "evaluation.every_n_steps=7"])
    callback = evaluation_callback_from_config(cfg)
    assert callback.every_n_steps == 7 and callback.tasks == ["retrieval", "zeroshot_short"]
    assert callback.settings.bootstrap_resamples == 0 and callback.settings.feature_cache_dir is None
    # Every 400 steps with validation every 200: validation logs val retrieval at those steps already.
    cfg = OmegaConf.merge(cfg, {"evaluation": {"every_n_steps": 400}, "trainer": {"val_check_interval": 200}})
    assert evaluation_callback_from_config(cfg).tasks == ["zeroshot_short"]
    assert (
        evaluation_callback_from_config(
            OmegaConf.merge(cfg, {"evaluation": {"callback_tasks": ["retrieval"]}})
        )
        is None
    )
    on_test = OmegaConf.merge(cfg, {"evaluation": {"callback_split": "test"}})
    assert evaluation_callback_from_config(on_test).tasks == ["retrieval", "zeroshot_short"]
    bad = OmegaConf.merge(cfg, {"evaluation": {"callback_tasks": ["retrieval", "zero_shot"]}})
    with pytest.raises(ConfigError, match="valid tasks"):
        evaluation_callback_from_config(bad)


def test_evaluation_leaves_the_global_rng_and_module_modes_alone(toy_data: Any, toy_model: Any) -> None:
    """Exact resume depends on the training RNG stream; frozen sub-modules stay in eval mode."""
    toy_model.device = torch.device("cpu")
    toy_model.train()
    toy_model.image_encoder.eval()  # e.g. a frozen part
    callback = EvaluationCallback(every_n_steps=5, settings=EvalSettings(input_size=2, probe_heads=2))
    state = torch.get_rng_state()
    trainer = _trainer(toy_data, 5)
    callback.on_train_batch_end(trainer, toy_model, None, None, 0)
    assert trainer.logger.logged
    assert torch.equal(torch.get_rng_state(), state)
    assert toy_model.training and not toy_model.image_encoder.training
