"""What every ctvlp LightningModule shares: the resolved config, the optimiser recipe, and the
non-finite loss guard. Objective modules subclass this and only compose their parts."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from callbacks.evaluation import evaluation_callback_from_config
from ctvlp.config.evaluation_tasks import TASKS
from ctvlp.config.loader import config_from_sections
from datamodules.datamodule import CTDataModule
from datamodules.transforms import as_size3
from lightning_modules.nets.image_encoder import ImageEncoder, build_image_encoder
from lightning_modules.nets.primus_encoder import set_activation_checkpointing
from lightning_modules.nets.text_encoder import load_tokenizer
from lightning_modules.nonfinite_guard import NonFiniteGuard
from lightning_modules.optim import build_optimizer_and_scheduler
from lightning_modules.rrg import target_builder


def image_encoder_from_config(cfg: DictConfig) -> ImageEncoder:
    """The ``model.image`` encoder (Primus + projector + pooler) for ``data.crop_size`` inputs (a
    cube or (x, y, z): Primus' RoPE is built for exactly that shape)."""
    image = cfg.model.image
    encoder = build_image_encoder(
        size=image.size,
        input_size=as_size3(cfg.data.crop_size),
        patch_size=int(image.patch_size),
        proj_dim=int(cfg.model.proj_dim),
        pool_heads=int(cfg.model.pool_heads),
        pooler=image.pooler,
        drop_path=float(image.drop_path),
        layer_scale_init=image.layer_scale_init,
        scale_attn_inner=bool(image.scale_attn_inner),
        use_abs_pos_embed=bool(image.use_abs_pos_embed),
        num_register_tokens=int(image.num_register_tokens),
    )
    if image.activation_checkpointing:
        set_activation_checkpointing(encoder.backbone, True)
    if image.compile:
        encoder.backbone.compile()
    return encoder


class ObjectiveModule(L.LightningModule):
    # The validation metric that picks the "best" checkpoint by default, and whether higher is
    # better (trainer.best_metric / best_mode override them: ctvlp/model_selection.py).
    best_metric: str = "val/retrieval/R@5"
    best_mode: str = "max"
    # What `ctvlp eval` and the periodic evaluation (evaluation.callback_tasks) can measure this
    # module's image encoder by. Retrieval and zero-shot need report embeddings (encode_text);
    # probes need only the image encoder. Empty: the module has no image-encoder evaluation
    # (Uniferum is evaluated on its task texts instead).
    evaluation_tasks: tuple[str, ...] = TASKS
    # How image and report embeddings are compared in retrieval and zero-shot: "cosine" (CLIP) or
    # "dot" (raw dot products, no normalisation or temperature: GreenRFM).
    embedding_similarity: str = "cosine"
    # Whether the final evaluation of `ctvlp fit` uses the best checkpoint (model selection on
    # validation) instead of the final weights.
    evaluate_best: bool = False

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        # The whole resolved experiment config: stored in checkpoints and logged as hparams.
        self.save_hyperparameters({"config": config})
        self.cfg: DictConfig = OmegaConf.create(config)
        self.nonfinite = NonFiniteGuard(int(self.cfg.optim.max_consecutive_nonfinite))

    @classmethod
    def embeds_text(cls) -> bool:
        """Whether the module embeds reports, so retrieval and zero-shot can measure it."""
        return "retrieval" in cls.evaluation_tasks

    @classmethod
    def from_sections(cls, **sections: Any) -> ObjectiveModule:
        """The module built from the schema's defaults with ``sections`` merged over them (e.g.
        ``model={"image": {"size": "tiny"}}, data={"crop_size": 32}``): no experiment files."""
        return cls(config_from_sections(sections))

    def configure_callbacks(self) -> list[L.Callback]:
        """The callbacks this module needs beside the trainer's own: the periodic evaluation of its
        image encoder (``evaluation.every_n_steps``). Modules with more to show extend the list."""
        tasks = type(self).evaluation_tasks
        periodic = evaluation_callback_from_config(self.cfg, tasks) if tasks else None
        return [periodic] if periodic is not None else []

    @classmethod
    def build_datamodule(cls, cfg: DictConfig) -> L.LightningDataModule:
        """The DataModule this objective trains on. It must also offer ``loader(split)`` for
        the final evaluation. Default: paired volumes + reports tokenised for the text model."""
        tokenizer = load_tokenizer(cfg.model.text.name_or_path)
        cappa_targets = target_builder(cfg, tokenizer) if cls.rrg_active(cfg) else None
        return CTDataModule(
            cfg.data,
            tokenizer,
            int(cfg.model.text.max_length),
            seed=int(cfg.seed),
            cappa_targets=cappa_targets,
        )

    @classmethod
    def rrg_active(cls, cfg: DictConfig) -> bool:
        """Whether this objective trains report generation (batches then carry ``cappa``)."""
        return bool(OmegaConf.select(cfg, "objectives.rrg.enabled", default=False))

    def gather_once_per_volume(self, collected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An evaluation split's per-volume values (each a tensor with one row per sample, one of
        them ``index``) from all ranks, each volume once: DDP pads the evaluation shards with
        repeats, so only the first copy of each ``index`` is kept."""
        if self.trainer.world_size > 1:
            collected = {key: self.all_gather(value).flatten(0, 1) for key, value in collected.items()}
        index = collected["index"]
        order = torch.argsort(index, stable=True)
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[order][1:] != index[order][:-1]
        keep = order[first]
        return {key: value[keep] for key, value in collected.items()}

    def guard_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Call on the total training loss; a NaN/Inf on any rank skips the step on all ranks."""
        self.nonfinite.observe(loss, lambda flag: self.trainer.strategy.reduce(flag, reduce_op="min"))
        return loss

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        loss = optimizer_closure()  # training_step + backward
        if self.nonfinite.should_step():
            optimizer.step(closure=lambda: loss)
        self.log("train/nonfinite_skipped", float(self.nonfinite.skipped_total))

    def optimizer_groups(self) -> list[dict[str, Any]] | None:
        """Param groups with their own lr (``lightning_modules.optim.param_groups_with_lrs``);
        ``None``: every trainable parameter at ``optim.lr``."""
        return None

    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.cfg.optim
        return build_optimizer_and_scheduler(
            self,
            name=optim.name,
            lr=float(optim.lr),
            weight_decay=float(optim.weight_decay),
            betas=tuple(optim.betas),
            warmup_steps=int(optim.warmup_steps),
            total_steps=int(self.cfg.trainer.max_steps),
            schedule=optim.schedule,
            poly_power=float(optim.poly_power),
            groups=self.optimizer_groups(),
        )
