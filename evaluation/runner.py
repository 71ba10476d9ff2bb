"""Runs the evaluation protocols (retrieval, zero-shot native/short, probes) over splits.

Pure torch: given a frozen model, loaders and settings it returns the flat results
(``"<split>/<task>/<metric>": float``, CI bounds as ``<metric>_ci_low`` / ``_ci_high``), the
per-label values and the probe-selection details. ``ctvlp eval`` and ``EvaluationCallback``
only build the inputs and write the outputs.

Protocol (COLIPRI App. C; docs/evaluation.md):

- Every volume is encoded once per split (centre crop; the loaders provide it); all tasks reuse
  those features.
- Validation is always encoded when a classification task runs, even if it is not reported:
  thresholds (F1-optimal per label) and the probe choice (macro AUPRC) come from validation only
  and are applied frozen to test and transfer splits.
- Probes: the 20-probe grid on the frozen encoder's cached fp16 tokens when they fit
  ``feature_cache_bytes``, else with the encoder in the loop (``evaluation.joint_probes``);
  ``<val>/probe/encoder_in_loop`` says which path ran.
- A transfer split (e.g. RAD-ChestCT on its CT-RATE-mapped labels) names its label columns;
  they are matched by name to the model's label space, and only those columns are scored.
  Retrieval runs only on splits with reports, over the split's ``retrieval`` pairs when given
  (non-chest scans and duplicate Findings removed; the counts are logged and written as
  ``<split>/retrieval/{reports,non_chest_removed,duplicates_removed,pairs}``).
- CIs: percentile bootstrap over the volumes of the evaluated split (real resampling,
  ``bootstrap_resamples`` draws, seeded), thresholds and the chosen probe frozen. Retrieval
  resamples the queries (images, or reports for ``report_to_image``) against the split's fixed
  gallery (R@K intervals).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctvlp.config.evaluation_tasks import CLASSIFICATION_TASKS, TASKS, parse_tasks
from evaluation.bootstrap import bootstrap
from evaluation.features import (
    SplitFeatures,
    TokenMode,
    VisionLanguageModel,
    encode_texts,
    extract_features,
    fingerprint,
    token_cache_bytes,
    tokens_per_volume,
)
from evaluation.joint_probes import predict_probe_grid_jointly, train_probe_grid_jointly
from evaluation.metrics import classification_metrics, f1_optimal_thresholds
from evaluation.probe_grid import AGGREGATORS, PAPER_LEARNING_RATES, ProbeGrid
from evaluation.probes import ProbeTraining, predict_probe_grid, select_probe, train_probe_grid
from evaluation.prompt_zero_shot import PROMPT_KEYS, zero_shot_prompt_scores
from evaluation.retrieval import (
    RetrievalPairs,
    query_similarity,
    recall_from_ranks,
    retrieval_metrics,
    true_report_ranks,
)
from evaluation.zero_shot import (
    TEMPERATURE,
    ClassPrompts,
    native_class_prompts,
    short_class_prompts,
    zero_shot_scores,
)

log = logging.getLogger(__name__)

Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]


def hf_tokenize(tokenizer: Callable[..., Any], max_length: int) -> Tokenize:
    """Tokenise texts as the training collator does (longest padding, truncation at ``max_length``)."""

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenizer(
            texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
        )

    return tokenize


@dataclass(frozen=True)
class EvalSplit:
    """One split to encode. ``label_names`` names the loader's label columns when they are not
    the model's label space (a transfer dataset); ``has_reports=False`` skips retrieval."""

    name: str
    loader: Iterable[dict[str, Any]]
    volumes: int
    label_names: list[str] | None = None
    has_reports: bool = True
    # The pairs retrieval ranks (COLIPRI: non-chest scans removed, App. C.1, and duplicate Findings,
    # its authors; ``retrieval.retrieval_pairs``); None: every volume of the split with its own report.
    retrieval: RetrievalPairs | None = None


@dataclass(frozen=True)
class TrainSplit:
    """The training split: Findings and labels for native prompts, images for the probes."""

    reports: list[str]
    labels: torch.Tensor  # (len(reports), K)
    loader: Iterable[dict[str, Any]] | None = None  # centre-crop batches; required for probes
    volumes: int = 0

    @classmethod
    def from_entries(
        cls, entries: Sequence[Any], loader: Iterable[dict[str, Any]] | None = None
    ) -> TrainSplit:
        """From cache entries (``.sections["findings"]``, ``.labels``); ``loader`` yields their images."""
        return cls(
            reports=[e.sections.get("findings", "") or "" for e in entries],
            labels=torch.tensor([list(e.labels) for e in entries], dtype=torch.float32),
            loader=loader,
            volumes=len(entries),
        )


@dataclass
class EvalSettings:
    tasks: Sequence[str] = TASKS
    recall_ks: Sequence[int] = (1, 5, 10)
    retrieval_direction: str = "image_to_report"  # or report_to_image (evaluation.retrieval)
    probe: ProbeTraining = field(default_factory=ProbeTraining)
    probe_lrs: Sequence[float] = PAPER_LEARNING_RATES
    probe_heads: int = 12
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    zeroshot_reports_per_class: int = 50
    zeroshot_temperature: float = TEMPERATURE
    # Centre-crop edge, or (x, y, z) for a non-cubic data.crop_size: the token-cache size estimate.
    input_size: int | tuple[int, ...] = 160
    feature_cache_dir: Path | None = None  # None: features stay in memory
    feature_cache_bytes: int = 64 * 2**30
    model_key: str | None = None  # identity of the weights; enables reuse of cached features
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: Any, tasks: Sequence[str]) -> EvalSettings:
        """Settings from an experiment config's ``evaluation`` section (plus seed, crop, heads)."""
        evaluation = cfg.evaluation
        return cls(
            tasks=list(tasks),
            recall_ks=[int(k) for k in evaluation.recall_ks],
            retrieval_direction=str(evaluation.get("retrieval_direction", "image_to_report")),
            probe=ProbeTraining(int(evaluation.probe_steps), int(evaluation.probe_batch_size), int(cfg.seed)),
            probe_lrs=[float(lr) for lr in evaluation.probe_lrs],
            probe_heads=int(cfg.model.pool_heads),
            bootstrap_resamples=int(evaluation.bootstrap_resamples),
            bootstrap_seed=int(evaluation.bootstrap_seed),
            zeroshot_reports_per_class=int(evaluation.zeroshot_reports_per_class),
            input_size=_input_size(cfg.data.crop_size),
            feature_cache_bytes=int(float(evaluation.feature_cache_gb) * 2**30),
            seed=int(cfg.seed),
        )


def _input_size(crop_size: Any) -> int | tuple[int, ...]:
    """``data.crop_size`` as an int (a cube, as always) or an (x, y, z) tuple."""
    if isinstance(crop_size, int):
        return int(crop_size)
    size = tuple(int(c) for c in crop_size)
    return size[0] if len(set(size)) == 1 else size


@dataclass
class EvalOutput:
    results: dict[str, float] = field(default_factory=dict)
    per_label: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _timed(what: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    log.info("%s: %.1f s", what, time.perf_counter() - start)


def _nan_to_none(values: torch.Tensor, names: Sequence[str]) -> dict[str, float | None]:
    return {n: (None if math.isnan(v) else v) for n, v in zip(names, values.tolist(), strict=True)}


class Evaluator:
    """Evaluates one frozen vision–language model (``ColipriModule`` or alike)."""

    def __init__(
        self,
        model: nn.Module,
        tokenize: Tokenize,
        label_names: Sequence[str],
        settings: EvalSettings,
        device: torch.device | str = "cpu",
        autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.vl_model: VisionLanguageModel = model  # type: ignore[assignment]
        # "cosine" (CLIP models) or "dot" (GreenRFM: raw dot products, as it was trained)
        self.similarity = str(getattr(model, "embedding_similarity", "cosine"))
        if self.similarity not in ("cosine", "dot"):
            raise ValueError(f"embedding_similarity must be cosine or dot, not {self.similarity!r}")
        self.tokenize = tokenize
        self.label_names = list(label_names)
        self.settings = settings
        self.tasks = parse_tasks(settings.tasks)
        self.device = device
        self.autocast = autocast
        self.progress = progress
        self.output = EvalOutput()

    # ------------------------------------------------------------------------------ entry
    def run(
        self, val: EvalSplit | None, splits: Sequence[EvalSplit], train: TrainSplit | None = None
    ) -> EvalOutput:
        """Evaluate ``splits`` (``val`` may be among them); ``val`` is required for classification."""
        needs_val = any(t in CLASSIFICATION_TASKS for t in self.tasks)
        if needs_val and val is None:
            raise ValueError(
                "Zero-shot and probe evaluation need the validation split (thresholds, probe choice)"
            )
        if train is None and ("zeroshot_native" in self.tasks or "probe" in self.tasks):
            raise ValueError("Native zero-shot and probes need the training split")
        if "probe" in self.tasks and (train is None or train.loader is None):
            raise ValueError("Probes need centre-crop batches of the training split (TrainSplit.loader)")
        self._check_label_names(splits)
        self.output = EvalOutput()
        modes = {module: module.training for module in self.model.modules()}
        self.model.eval()
        try:
            self._run(val, list(splits), train)
        finally:  # restore every module's own mode (frozen parts may stay in eval during training)
            for module, training in modes.items():
                module.training = training
        self.output.results = dict(sorted(self.output.results.items()))
        return self.output

    def _run(self, val: EvalSplit | None, splits: list[EvalSplit], train: TrainSplit | None) -> None:
        token_mode = self._token_mode(val, splits, train) if "probe" in self.tasks else "none"
        encoded = {s.name: s for s in splits}
        if val is not None and any(t in CLASSIFICATION_TASKS for t in self.tasks):
            encoded.setdefault(val.name, val)  # thresholds and probe choice, even if not reported
        with _timed(f"Features of {', '.join(encoded)}"):
            features = {name: self._features(s, token_mode) for name, s in encoded.items()}
        if "retrieval" in self.tasks:
            for split in splits:
                if split.has_reports:
                    self._retrieval(split.name, features[split.name], split.retrieval)
        normalise = self.similarity == "cosine"
        temperature = self.settings.zeroshot_temperature if normalise else 1.0
        prompt_styles = [t for t in ("zeroshot_native", "zeroshot_short") if t in self.tasks]
        for task in prompt_styles:
            with _timed(f"{task} prompts"):
                prompts = self._prompts(task, train)
            scores = {
                name: zero_shot_scores(f.image, prompts, temperature, normalise)
                for name, f in features.items()
            }
            assert val is not None
            self._classification(task, val, splits, features, scores)
        if "zeroshot_prompts" in self.tasks:
            assert val is not None
            self._prompt_pairs(val, splits, features, normalise, temperature)
        if "probe" in self.tasks:
            assert train is not None and train.loader is not None and val is not None
            if token_mode == "tokens":
                train_split = EvalSplit("train", train.loader, train.volumes, has_reports=False)
                with _timed("Features of train"):
                    train_features = self._features(train_split, token_mode, with_text=False)
                with _timed(f"Probe grid ({self.settings.probe.steps} steps)"):
                    scores = self._probe_scores(train_features, features, val.name)
            else:
                with _timed(f"Probe grid, encoder in the loop ({self.settings.probe.steps} steps)"):
                    scores = self._joint_probe_scores(train, encoded, features, val.name)
            self._classification("probe", val, splits, features, scores)

    # --------------------------------------------------------------------------- features
    def _check_label_names(self, splits: Sequence[EvalSplit]) -> None:
        for split in splits:
            unknown = sorted(set(split.label_names or []) - set(self.label_names))
            if unknown:
                raise ValueError(
                    f"Split '{split.name}' has labels outside the model's label space: {unknown}. "
                    f"Map them to: {', '.join(self.label_names)}"
                )

    def _token_mode(
        self, val: EvalSplit | None, splits: Sequence[EvalSplit], train: TrainSplit | None
    ) -> TokenMode:
        """``tokens``: every split the probes touch fits the disk budget, and the probes train on
        the cached tokens. ``none``: they do not, and the probes train with the frozen encoder in
        the loop (:mod:`evaluation.joint_probes`); the cache keeps only the embeddings."""
        encoder = self.model.image_encoder
        size = self.settings.input_size
        if isinstance(size, int):
            per_volume = tokens_per_volume(encoder.patch_size, size)
        else:  # per axis
            per_volume = math.prod(int(s) // int(p) for s, p in zip(size, encoder.patch_size, strict=True))
        names = {s.name: s.volumes for s in [*splits, *([val] if val else [])]}
        volumes = sum(names.values()) + (train.volumes if train else 0)
        needed = token_cache_bytes(volumes, per_volume, int(encoder.proj_dim))
        if needed <= self.settings.feature_cache_bytes:
            return "tokens"
        log.info(
            "Probe tokens need %.1f GB, over the %.1f GB budget (evaluation.feature_cache_gb): the %d probes "
            "train with the frozen encoder in the loop (%d steps of %d volumes, one encoder forward each)",
            needed / 2**30,
            self.settings.feature_cache_bytes / 2**30,
            len(AGGREGATORS) * len(self.settings.probe_lrs),
            self.settings.probe.steps,
            self.settings.probe.batch_size,
        )
        return "none"

    def _features(
        self, split: EvalSplit, token_mode: TokenMode, with_text: bool | None = None
    ) -> SplitFeatures:
        if with_text is None:
            with_text = "retrieval" in self.tasks and split.has_reports
        key = None
        if self.settings.model_key is not None:
            key = fingerprint(
                self.settings.model_key, self.settings.input_size, split.name, split.volumes, token_mode
            )
        return extract_features(
            self.vl_model,
            split.loader,
            split.name,
            split.volumes,
            with_text=with_text,
            token_mode=token_mode,
            cache_dir=self.settings.feature_cache_dir,
            key=key,
            device=self.device,
            autocast=self.autocast,
            progress=self.progress,
        )

    def _columns(self, split: EvalSplit) -> list[int]:
        names = split.label_names or self.label_names
        return [self.label_names.index(n) for n in names]

    # -------------------------------------------------------------------------- retrieval
    def _retrieval(self, split: str, features: SplitFeatures, pairs: RetrievalPairs | None = None) -> None:
        """Recall over the split's retrieval pairs (``pairs``; None: every volume), image -> report
        or report -> image (``settings.retrieval_direction``).
        Cosine similarity for CLIP models (the trained logit scale and a sigmoid bias do not change
        rankings), the raw dot product for models trained on it."""
        assert features.text is not None
        image, text = features.image, features.text
        prefix = f"{split}/retrieval"
        if pairs is not None:
            row = {image_id: i for i, image_id in enumerate(features.image_ids)}
            missing = [image_id for image_id in pairs.image_ids if image_id not in row]
            if missing:
                raise ValueError(f"Retrieval pairs of '{split}' name volumes it lacks: {missing[:5]}")
            rows = torch.tensor([row[image_id] for image_id in pairs.image_ids], dtype=torch.long)
            image, text = image[rows], text[rows]
            log.info("Retrieval on %s: %s", split, pairs.describe())
            for name, value in pairs.counts().items():
                self.output.results[f"{prefix}/{name}"] = value
        if self.similarity == "dot":
            similarity = image @ text.T
        else:
            similarity = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
        similarity = query_similarity(similarity, self.settings.retrieval_direction)
        ks = list(self.settings.recall_ks)
        for name, value in retrieval_metrics(similarity, ks).items():
            self.output.results[f"{prefix}/{name}"] = value
        if self.settings.bootstrap_resamples > 0:
            # Queries (the rows) are resampled against the split's fixed gallery.
            ranks = true_report_ranks(similarity)
            intervals = bootstrap(
                lambda rows: recall_from_ranks(ranks[rows], ks),
                n=ranks.shape[0],
                resamples=self.settings.bootstrap_resamples,
                seed=self.settings.bootstrap_seed,
            )
            for k in ks:
                self.output.results[f"{prefix}/R@{k}_ci_low"] = intervals.low[f"R@{k}"]
                self.output.results[f"{prefix}/R@{k}_ci_high"] = intervals.high[f"R@{k}"]

    # -------------------------------------------------------------------------- zero-shot
    def _encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return encode_texts(self.vl_model, self.tokenize, texts, self.device, autocast=self.autocast)

    def _prompts(self, task: str, train: TrainSplit | None) -> ClassPrompts:
        normalise = self.similarity == "cosine"
        if task == "zeroshot_short":
            return short_class_prompts(self.label_names, self._encode_texts, normalise)
        assert train is not None
        return native_class_prompts(
            train.reports,
            train.labels,
            self.label_names,
            self._encode_texts,
            per_class=self.settings.zeroshot_reports_per_class,
            seed=self.settings.seed,
            normalise=normalise,
        )

    def _prompt_pairs(
        self,
        val: EvalSplit,
        splits: Sequence[EvalSplit],
        features: dict[str, SplitFeatures],
        normalise: bool,
        temperature: float,
    ) -> None:
        """GreenRFM's five prompt pairs (``zeroshot_prompt_p1`` .. ``_p5``) and the mean of their
        scores (``zeroshot_prompt_mean``), each with its own validation thresholds. A cosine model
        is scored on unit vectors at the zero-shot temperature, as its other prompts are."""
        encoded: dict[tuple[str, ...], torch.Tensor] = {}

        def encode(texts: list[str]) -> torch.Tensor:  # the same prompts for every split: once
            if tuple(texts) not in encoded:
                embeddings = self._encode_texts(texts)
                encoded[tuple(texts)] = F.normalize(embeddings, dim=-1) if normalise else embeddings
            return encoded[tuple(texts)]

        with _timed("zeroshot_prompts prompts"):
            per_split = {
                name: zero_shot_prompt_scores(
                    F.normalize(f.image, dim=-1) / temperature if normalise else f.image,
                    encode,
                    self.label_names,
                )
                for name, f in features.items()
            }
        for key in (*PROMPT_KEYS, "mean"):
            scores = {name: values[key] for name, values in per_split.items()}
            self._classification(f"zeroshot_prompt_{key}", val, splits, features, scores)

    # ----------------------------------------------------------------------------- probes
    def _probe_grid(self, dim: int) -> ProbeGrid:
        torch.manual_seed(self.settings.seed)
        return ProbeGrid(
            dim, len(self.label_names), self.settings.probe_heads, AGGREGATORS, self.settings.probe_lrs
        )

    def _probe_scores(
        self, train: SplitFeatures, features: dict[str, SplitFeatures], val_name: str
    ) -> dict[str, torch.Tensor]:
        """The grid trained on cached tokens."""
        assert train.tokens is not None
        grid = self._probe_grid(train.tokens.dim)
        train_loss = train_probe_grid(
            grid, train.tokens, train.labels, self.settings.probe, self.device, self.progress
        )
        probabilities = {}
        for name, split_features in features.items():
            assert split_features.tokens is not None
            probabilities[name] = predict_probe_grid(grid, split_features.tokens, device=self.device)
        return self._select_probe(grid, probabilities, features[val_name], train_loss, "cached tokens")

    def _joint_probe_scores(
        self,
        train: TrainSplit,
        splits: dict[str, EvalSplit],
        features: dict[str, SplitFeatures],
        val_name: str,
    ) -> dict[str, torch.Tensor]:
        """The grid trained with the frozen encoder in the loop; one more encoder pass per split."""
        assert train.loader is not None
        grid = self._probe_grid(int(self.model.image_encoder.proj_dim))
        model, device, autocast = self.vl_model, self.device, self.autocast
        train_loss = train_probe_grid_jointly(
            grid, model, train.loader, train.volumes, self.settings.probe, device, autocast, self.progress
        )
        probabilities = {}
        for name, split in splits.items():
            with _timed(f"Probe predictions of {name} (encoder in the loop)"):
                probabilities[name] = predict_probe_grid_jointly(
                    grid, model, split.loader, split.volumes, device, autocast
                )
        return self._select_probe(grid, probabilities, features[val_name], train_loss, "encoder in the loop")

    def _select_probe(
        self,
        grid: ProbeGrid,
        probabilities: dict[str, torch.Tensor],
        val: SplitFeatures,
        train_loss: torch.Tensor,
        path: str,
    ) -> dict[str, torch.Tensor]:
        """Each split's scores from the probe with the best validation AUPRC; the choice and the
        path that trained the grid go into ``details["probe"]`` and ``<val>/probe/encoder_in_loop``."""
        best, val_auprc = select_probe(probabilities[val.split], val.labels, self.label_names, grid.names)
        log.info("Best probe by validation AUPRC: %s (%.4f)", grid.names[best], val_auprc[grid.names[best]])
        self.output.details["probe"] = {
            "selected": grid.names[best],
            "val_AUPRC": val_auprc,
            "train_loss": dict(zip(grid.names, train_loss.tolist(), strict=True)),
            "steps": self.settings.probe.steps,
            "batch_size": self.settings.probe.batch_size,
            "path": path,
        }
        self.output.results[f"{val.split}/probe/encoder_in_loop"] = float(path == "encoder in the loop")
        self.output.results[f"{val.split}/probe/probes"] = float(len(grid.specs))
        return {name: probs[best] for name, probs in probabilities.items()}

    # --------------------------------------------------------------------- classification
    def _classification(
        self,
        task: str,
        val: EvalSplit,
        splits: Sequence[EvalSplit],
        features: dict[str, SplitFeatures],
        scores: dict[str, torch.Tensor],
    ) -> None:
        """Fit thresholds on validation, then score every requested split with frozen thresholds."""
        val_columns = self._columns(val)
        thresholds = torch.full((len(self.label_names),), math.nan)
        thresholds[val_columns] = f1_optimal_thresholds(
            scores[val.name][:, val_columns], features[val.name].labels
        )
        self.output.per_label[f"{val.name}/{task}/threshold"] = _nan_to_none(thresholds, self.label_names)
        for split in splits:
            columns = self._columns(split)
            self._report(
                f"{split.name}/{task}",
                scores[split.name][:, columns],
                features[split.name].labels,
                [self.label_names[c] for c in columns],
                thresholds[columns],
            )

    def _report(
        self,
        prefix: str,
        scores: torch.Tensor,
        labels: torch.Tensor,
        names: list[str],
        thresholds: torch.Tensor,
    ) -> None:
        metrics = classification_metrics(scores, labels, names, thresholds, split=prefix)
        for metric, value in metrics.macro.items():
            self.output.results[f"{prefix}/{metric}"] = value
        for metric, values in metrics.per_label.items():
            self.output.per_label[f"{prefix}/{metric}"] = _nan_to_none(values, names)
        self.output.per_label[f"{prefix}/excluded"] = metrics.excluded
        if self.settings.bootstrap_resamples > 0:
            with _timed(f"{prefix}: {self.settings.bootstrap_resamples} bootstrap resamples"):
                intervals = bootstrap(
                    lambda rows: (
                        classification_metrics(
                            scores[rows], labels[rows], names, thresholds, warn=False
                        ).macro
                    ),
                    n=scores.shape[0],
                    resamples=self.settings.bootstrap_resamples,
                    seed=self.settings.bootstrap_seed,
                )
            for metric in metrics.macro:
                self.output.results[f"{prefix}/{metric}_ci_low"] = intervals.low[metric]
                self.output.results[f"{prefix}/{metric}_ci_high"] = intervals.high[metric]
