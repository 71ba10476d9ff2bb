"""ReportGenerationModule: downstream report generation on a frozen image encoder (docs/recipes.md).

The image encoder of any ``ctvlp fit`` checkpoint (``reportgen.encoder_ckpt``: COLIPRI family,
MAE, CapPa, GreenRFM), or a randomly initialised ``model.image`` encoder (the baseline), is frozen;
its tokens go through a projector (``reportgen.projector``: ``mlp2x`` LLaVA, ``perceiver`` RadFM,
``qformer`` RadFound) into a causal LM from a local directory (``reportgen.lm``). The LM reads

    [image positions] [instruction tokens] [report tokens] </s>

(the perceiver's image positions between ``<image>`` and ``</image>`` special tokens) and is
trained by teacher forcing on the Findings: the loss covers the report tokens and the end of
sequence only; image and instruction positions carry no loss. With ``reportgen.term_weight`` w
(RadFM: 3) a report token that spells a medical term (lightning_modules/report_terms.py) weighs w,
the others 1; the loss is the weighted mean.

Validation logs the teacher-forced loss (``val/reportgen/loss``, the model selection metric), the
same loss with each report paired with another volume of its batch (``val/reportgen/loss_other_image``:
above ``loss`` when the LM reads the image) and,
through ``ReportSamplesCallback``, a few generated reports beside their reference. The final
evaluation (``ctvlp fit``'s val/test, ``ctvlp eval --tasks reportgen``) generates a report for
every volume, writes ``reports_<split>.csv`` (id, reference, generated) into the run directory and
logs ``<split>/reportgen/<metric>`` (evaluation/report_metrics.py), with the "most frequent training
report" baseline beside it (``<split>/reportgen_baseline/<metric>``).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from callbacks.report_samples import ReportSamplesCallback
from ctvlp.config.checkpoint_file import load_checkpoint_file
from ctvlp.config.errors import ConfigError
from ctvlp.config.loader import checkpoint_config
from datamodules.datamodule import CTDataModule
from datamodules.labels import CT_RATE_LABELS
from datamodules.report_classifier import (
    ReportLabeller,
    RuleBasedLabeller,
    labeller_from_config,
    record_labeller,
)
from datamodules.transforms import as_size3
from evaluation.report_metrics import report_generation_metrics
from lightning_modules.base import ObjectiveModule, image_encoder_from_config
from lightning_modules.nets.causal_lm import (
    IMAGE_END,
    IMAGE_START,
    LanguageModelError,
    load_causal_lm,
    load_lm_tokenizer,
)
from lightning_modules.nets.frozen_token_cache import VolumeTokenCache
from lightning_modules.nets.report_projectors import build_projector
from lightning_modules.registry import module_class
from lightning_modules.report_terms import TermMatcher, default_term_patterns, read_term_file

log = logging.getLogger(__name__)

# Modules whose checkpoints carry no single image encoder that maps a crop to tokens.
_NO_FROZEN_ENCODER = ("uniferum", "report_generation")


def frozen_image_encoder(cfg: DictConfig) -> tuple[torch.nn.Module, str]:
    """The image encoder to freeze, and a line saying where it came from."""
    path = cfg.reportgen.encoder_ckpt
    if path is None:
        log.warning(
            "reportgen.encoder_ckpt is null: the image encoder is randomly initialised (the baseline); "
            "give a checkpoint of ctvlp fit to generate from a pretrained encoder"
        )
        return image_encoder_from_config(cfg), "random init (model.image)"
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"reportgen.encoder_ckpt={path}: no such checkpoint file")
    raw = load_checkpoint_file(file)
    saved = (raw.get("hyper_parameters") or {}).get("config") if isinstance(raw, dict) else None
    if saved is None or "state_dict" not in raw:
        raise ConfigError(f"reportgen.encoder_ckpt={path} is not a checkpoint written by ctvlp fit")
    source = checkpoint_config(saved)
    if source.module in _NO_FROZEN_ENCODER:
        raise ConfigError(
            f"reportgen.encoder_ckpt={path} is a '{source.module}' checkpoint, whose encoder cannot be frozen "
            "into report generation: use a COLIPRI, MAE, CapPa or GreenRFM checkpoint"
        )
    if as_size3(source.data.crop_size) != as_size3(cfg.data.crop_size):
        raise ConfigError(
            f"reportgen.encoder_ckpt={path} encodes crops of {as_size3(source.data.crop_size)} voxels but "
            f"data.crop_size is {as_size3(cfg.data.crop_size)}: set data.crop_size={list(as_size3(source.data.crop_size))}"
        )
    module = module_class(str(source.module))(OmegaConf.to_container(source, resolve=True))
    module.load_state_dict(raw["state_dict"])
    return module.image_encoder, f"{source.module} checkpoint {file} (step {raw.get('global_step', '?')})"


def lm_tokenizer(cfg: DictConfig) -> Any:
    """``reportgen.lm``'s tokenizer; an unusable LM directory is a ConfigError saying what to do."""
    try:
        return load_lm_tokenizer(cfg.reportgen.lm.name_or_path)
    except LanguageModelError as error:
        raise ConfigError(str(error)) from error


def frozen_token_cache(cfg: DictConfig) -> VolumeTokenCache | None:
    """``reportgen.token_cache_mb`` > 0: the frozen encoder's tokens per volume, computed once. The
    inputs must then be the same at every epoch: training takes the centre crop (the datamodule)
    and augmentation must be off, else a ConfigError."""
    budget = float(cfg.reportgen.token_cache_mb)
    if budget <= 0:
        return None
    augmented = {
        "data.augmentation.level": cfg.data.augmentation.level,
        "data.spatial_augmentation": cfg.data.spatial_augmentation,
    }
    on = [f"{key}={value}" for key, value in augmented.items() if value != "none"]
    if on:
        raise ConfigError(
            f"reportgen.token_cache_mb={budget:g} caches each volume's tokens once, but {', '.join(on)} "
            "changes the crop at every epoch: set them to none, or reportgen.token_cache_mb=0"
        )
    log.info(
        "Frozen-encoder token cache: up to %g MB of fp16 tokens per process; training takes the centre "
        "crop (reportgen.token_cache_mb=0: random crops, the encoder at every step)",
        budget,
    )
    return VolumeTokenCache(budget)


class ReportGenerationModule(ObjectiveModule):
    best_metric = "val/reportgen/loss"
    best_mode = "min"
    evaluation_tasks: tuple[str, ...] = ()  # scored by its own generated reports

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        rg = self.cfg.reportgen
        encoder, self.encoder_source = frozen_image_encoder(self.cfg)
        self.image_encoder = encoder.requires_grad_(False).eval()
        log.info("Report generation from a frozen image encoder: %s", self.encoder_source)
        self.tokenizer = lm_tokenizer(self.cfg)
        image_markers = rg.projector == "perceiver"
        if image_markers:  # RadFM: the image positions sit between <image> and </image>
            self.tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_START, IMAGE_END]})
        lm = rg.lm
        try:
            self.lm = load_causal_lm(
                lm.name_or_path,
                lm.train,
                int(lm.lora_rank),
                int(lm.lora_alpha),
                float(lm.lora_dropout),
                list(lm.lora_targets),
                bool(lm.activation_checkpointing),
                num_tokens=len(self.tokenizer),
            )
        except LanguageModelError as error:
            raise ConfigError(str(error)) from error
        lm_dim = int(self.lm.get_input_embeddings().embedding_dim)
        width = int(rg.projector_width) if rg.projector_width else lm_dim
        self.projector = build_projector(
            str(rg.projector),
            int(self.image_encoder.proj_dim),
            lm_dim,
            width,
            int(rg.num_latents),
            int(rg.projector_layers),
            int(rg.projector_heads),
        )
        instruction = self.tokenizer(str(rg.instruction), add_special_tokens=False)["input_ids"]
        self.register_buffer("instruction_ids", torch.tensor(instruction, dtype=torch.long), persistent=False)
        markers = self.tokenizer.convert_tokens_to_ids([IMAGE_START, IMAGE_END]) if image_markers else []
        self.register_buffer("marker_ids", torch.tensor(markers, dtype=torch.long), persistent=False)
        self.term_weight = float(rg.term_weight)
        self.terms: TermMatcher | None = None
        if self.term_weight != 1.0:
            patterns = read_term_file(rg.vocabulary) if rg.vocabulary else default_term_patterns()
            self.terms = TermMatcher(patterns)
            if not self.tokenizer.is_fast:
                raise ConfigError(
                    "reportgen.term_weight needs a fast tokenizer (character offsets of tokens); "
                    f"the tokenizer of {lm.name_or_path} is a slow one"
                )
        self.token_cache = frozen_token_cache(self.cfg)
        self.truncated_reports = 0
        self.most_frequent_report: str | None = None
        self._generated: list[dict[str, str]] = []

    # ------------------------------------------------------------------------------- data
    @classmethod
    def build_datamodule(cls, cfg: DictConfig) -> L.LightningDataModule:
        datamodule = ReportGenerationDataModule(
            cfg.data, lm_tokenizer(cfg), int(cfg.reportgen.lm.max_length), int(cfg.seed)
        )
        datamodule.centre_train_crops = float(cfg.reportgen.token_cache_mb) > 0
        return datamodule

    def train(self, mode: bool = True) -> ReportGenerationModule:
        super().train(mode)
        self.image_encoder.eval()  # frozen: no dropout or drop path, ever
        return self

    def configure_callbacks(self) -> list[L.Callback]:
        return [ReportSamplesCallback(int(self.cfg.reportgen.log_reports), labeller_from_config(self.cfg))]

    def on_fit_start(self) -> None:
        self._remember_most_frequent_report()

    def _remember_most_frequent_report(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, ReportGenerationDataModule) and self.most_frequent_report is None:
            self.most_frequent_report = datamodule.most_frequent_train_report()

    # --------------------------------------------------------------------------- sequences
    def report_tokens(self, reports: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Report token ids + end of sequence, right-padded (B, T), and each token's loss weight
        (B, T): 0 on padding, ``term_weight`` on medical-term tokens, else 1. Reports longer than
        ``reportgen.lm.max_length`` are truncated (counted: ``truncated_reports``)."""
        limit = int(self.cfg.reportgen.lm.max_length)
        encoded = self.tokenizer(
            reports, add_special_tokens=False, return_offsets_mapping=self.terms is not None
        )
        rows, weights = [], []
        for i, ids in enumerate(encoded["input_ids"]):
            if len(ids) + 1 > limit:
                self.truncated_reports += 1
                if self.truncated_reports in (1, 100, 10_000):
                    log.warning(
                        "%d report(s) so far were longer than reportgen.lm.max_length=%d tokens and were "
                        "truncated",
                        self.truncated_reports,
                        limit,
                    )
            ids = list(ids[: limit - 1])
            weight = [1.0] * len(ids)
            if self.terms is not None:
                mask = self.terms.token_mask(reports[i], encoded["offset_mapping"][i][: len(ids)])
                weight = [self.term_weight if term else 1.0 for term in mask]
            rows.append([*ids, self.tokenizer.eos_token_id])
            weights.append([*weight, 1.0])
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows], device=self.device)
        weight = torch.tensor([w + [0.0] * (length - len(w)) for w in weights], device=self.device)
        return ids, weight

    @torch.no_grad()
    def image_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, N, C) frozen-encoder tokens of the batch's volumes, through the token cache if on."""
        images = batch["image"].to(self.device)
        if self.token_cache is None:
            return self.image_encoder(images).tokens
        was_full = self.token_cache.full
        tokens = self.token_cache.tokens(self.image_encoder, images, [str(i) for i in batch["image_id"]])
        if self.token_cache.full and not was_full:
            log.warning(
                "reportgen.token_cache_mb=%g is full after %d volumes: the tokens of the others are "
                "computed at every visit (raise the budget to cache every volume)",
                self.cfg.reportgen.token_cache_mb,
                len(self.token_cache),
            )
        return tokens

    def prompt_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, P, H): the image positions and the instruction, as the LM's input embeddings."""
        embed = self.lm.get_input_embeddings()
        instruction = embed(self.instruction_ids).unsqueeze(0)
        image = self.projector(tokens.to(instruction.dtype), instruction)
        batch = image.shape[0]
        parts = [image, instruction.expand(batch, -1, -1)]
        if self.marker_ids.numel():
            markers = embed(self.marker_ids).unsqueeze(0).expand(batch, -1, -1)
            parts = [markers[:, :1], image, markers[:, 1:], parts[1]]
        return torch.cat(parts, dim=1)

    def report_loss(self, tokens: torch.Tensor, reports: list[str]) -> torch.Tensor:
        """Teacher-forced, (term-)weighted mean cross-entropy over report tokens and end of sequence,
        from the frozen encoder's ``tokens`` (:meth:`image_tokens`)."""
        ids, weight = self.report_tokens(reports)
        prompt = self.prompt_embeddings(tokens)
        inputs = torch.cat([prompt, self.lm.get_input_embeddings()(ids)], dim=1)
        mask = torch.cat(
            [torch.ones(prompt.shape[:2], dtype=torch.long, device=self.device), (weight > 0).long()], dim=1
        )
        # Logits of the last T + 1 positions only: the prompt's last one predicts the first report
        # token, and the last report position predicts nothing.
        logits = self.lm(inputs_embeds=inputs, attention_mask=mask, logits_to_keep=ids.shape[1] + 1).logits
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), ids.flatten(), reduction="none"
        ).view_as(weight)
        return (losses * weight).sum() / weight.sum().clamp_min(1.0)

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor) -> list[str]:
        """One report per volume of the frozen encoder's ``tokens``: greedy or beam search
        (``reportgen.num_beams``)."""
        rg = self.cfg.reportgen
        prompt = self.prompt_embeddings(tokens)
        mask = torch.ones(prompt.shape[:2], dtype=torch.long, device=self.device)
        output = self.lm.generate(
            inputs_embeds=prompt,
            attention_mask=mask,
            max_new_tokens=int(rg.max_new_tokens),
            num_beams=int(rg.num_beams),
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        return [text.strip() for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)]

    def report_samples(self, batch: dict[str, Any]) -> list[dict[str, str]]:
        """For ``ReportSamplesCallback``: each volume's reference and generated report."""
        mode = "greedy" if int(self.cfg.reportgen.num_beams) == 1 else f"beam {self.cfg.reportgen.num_beams}"
        generated = self.generate(self.image_tokens(batch))
        return [
            {"reference": ref, f"generated ({mode})": gen}
            for ref, gen in zip(batch["report"], generated, strict=True)
        ]

    # ---------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.guard_loss(self.report_loss(self.image_tokens(batch), list(batch["report"])))
        size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/truncated_reports", float(self.truncated_reports), batch_size=size)
        if self.token_cache is not None:
            self.log("train/token_cache_hit_rate", self.token_cache.hit_rate, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def _final(self) -> bool:
        """Whether this is a final evaluation (every volume's report generated), not a validation
        during training."""
        return self.trainer.state.fn != "fit"

    def _evaluation_step(self, batch: dict[str, Any], split: str) -> None:
        tokens, reports = self.image_tokens(batch), list(batch["report"])
        size = tokens.shape[0]
        self.log(
            f"{split}/reportgen/loss", self.report_loss(tokens, reports), batch_size=size, sync_dist=True
        )
        if size > 1:
            # Each report against the next volume's image: a loss above the matched one says the LM
            # reads the image, whatever greedy decoding makes of it.
            other = self.report_loss(tokens.roll(1, dims=0), reports)
            self.log(f"{split}/reportgen/loss_other_image", other, batch_size=size, sync_dist=True)
        if self._final():
            generated = self.generate(tokens)
            for image_id, ref, gen in zip(batch["image_id"], batch["report"], generated, strict=True):
                self._generated.append({"id": str(image_id), "reference": ref, "generated": gen})

    def on_validation_epoch_end(self) -> None:
        self._finish_generation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_generation("test")

    def _finish_generation(self, split: str) -> None:
        rows, self._generated = self._generated, []
        if not self._final():
            return
        if self.trainer.world_size > 1:  # every rank's reports, each volume once (DDP pads with repeats)
            gathered: list[list[dict[str, str]]] = [[] for _ in range(self.trainer.world_size)]
            torch.distributed.all_gather_object(gathered, rows)
            rows = list({row["id"]: row for part in gathered for row in part}.values())
        if not rows or not self.trainer.is_global_zero:
            return
        self._remember_most_frequent_report()
        run_dir = Path(self.trainer.default_root_dir)
        write_reports_csv(run_dir / f"reports_{split}.csv", rows)
        labeller = labeller_from_config(self.cfg)
        record_labeller(run_dir, labeller)
        references = [r["reference"] for r in rows]
        results = score_reports(
            references,
            [r["generated"] for r in rows],
            int(self.cfg.evaluation.bootstrap_resamples),
            int(self.cfg.evaluation.bootstrap_seed),
            labeller,
        )
        for name, value in results.items():
            self.log(f"{split}/reportgen/{name}", value, rank_zero_only=True)
        if self.most_frequent_report is not None:
            most_frequent = [self.most_frequent_report] * len(references)
            baseline = score_reports(references, most_frequent, 0, 0, labeller)
            for name, value in baseline.items():
                self.log(f"{split}/reportgen_baseline/{name}", value, rank_zero_only=True)

    # ---------------------------------------------------------------------------- optimiser
    def optimizer_groups(self) -> list[dict[str, Any]] | None:
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": float(self.cfg.optim.lr)}]


def score_reports(
    references: list[str],
    generated: list[str],
    bootstrap_resamples: int,
    seed: int,
    labeller: ReportLabeller | None = None,
) -> dict[str, float]:
    """Every report metric, the clinical ones from ``labeller`` on both sides (default: the rule-based
    CT-RATE labeller; ``evaluation.report_classifier`` names another, datamodules/report_classifier.py)."""
    labeller = labeller or RuleBasedLabeller()
    return report_generation_metrics(
        references,
        generated,
        labeller(references),
        labeller(generated),
        list(CT_RATE_LABELS),
        bootstrap_resamples=bootstrap_resamples,
        seed=seed,
    )


def write_reports_csv(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["id", "reference", "generated"])
        writer.writeheader()
        writer.writerows(rows)
    log.info("Wrote %d generated reports to %s", len(rows), path)


class ReportGenerationDataModule(CTDataModule):
    """Paired volumes with their Findings; volumes with empty Findings are skipped (counted).
    ``centre_train_crops``: training takes the centre crop too (the frozen encoder's token cache)."""

    centre_train_crops = False

    def setup(self, stage: str | None = None) -> None:
        already = bool(self.splits)
        super().setup(stage)
        if already:
            return
        self.datasets["train"].random_crop = not self.centre_train_crops
        for name, dataset in self.datasets.items():
            kept = [e for e in dataset.entries if (e.sections.get("findings") or "").strip()]
            skipped = len(dataset.entries) - len(kept)
            if skipped:
                log.warning(
                    "Report generation: %d of %d %s volumes have empty Findings and are skipped",
                    skipped,
                    len(dataset.entries),
                    name,
                )
                dataset.entries[:] = kept
            if not kept:
                raise ValueError(f"Report generation: every '{name}' volume has empty Findings")

    def most_frequent_train_report(self) -> str:
        """The training split's most frequent Findings (the trivial report-generation baseline)."""
        self.setup()
        findings = [e.sections.get("findings") or "" for e in self.datasets["train"].entries]
        return Counter(f.strip() for f in findings if f.strip()).most_common(1)[0][0]
