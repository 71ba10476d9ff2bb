"""``ctvlp eval --ckpt UNIFERUM_RUN --transfer rad_chestct=PATH``: a Uniferum checkpoint scored on
another dataset's evaluation split with that dataset's own labels (Uniferum Sec. 4, Tab. 2).

The transfer dataset becomes the only source of a copy of the run's config, at the run's cache
spacing, so its volumes are cached and cropped as the run's primary source. Its tasks are built from
its own label tables (``datamodules.uniferum_tasks``) and split the way the paper reports them:

- **shared** tasks, whose text the run trained on (e.g. "Diagnose the presence of cardiomegaly in
  the heart", the same task for CT-RATE and RAD-ChestCT): external validation, the ``diagnosis`` /
  ``prognosis`` groups;
- **unique** tasks, new text the run never saw (RAD-ChestCT's honeycombing, pacemaker, ...): zero-shot
  classification, the ``heldout`` group.

Results go under ``transfer_<name>/<group>[.<task>]/<metric>``, with the counts of shared and unique
tasks under ``transfer_<name>/dataset/``. Segmentation is not scored (the transfer datasets have no
organ masks here).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import lightning as L
from omegaconf import DictConfig

from ctvlp.commands.eval_transfer import Transfer
from ctvlp.config.schema import SourceConfig
from ctvlp.results import TRANSFER_DATASET_TASK, collect_results
from datamodules.datamodule import source_spacing
from datamodules.mixing import data_sources
from datamodules.sources.registry import get_source
from datamodules.uniferum_tasks import CLASSIFICATION_KINDS, Task, classification_task
from lightning_modules.registry import module_class

log = logging.getLogger(__name__)


def transfer_config(cfg: DictConfig, transfer: Transfer, trained_texts: set[str]) -> DictConfig:
    """The run's config with ``transfer`` as its only source; its labels whose task text the run
    never trained on are held out (zero-shot), and no organ is segmented."""
    primary = data_sources(cfg.data)[0]
    spacing = source_spacing(cfg.data, primary)
    source = transfer.dataset.source
    labels = get_source(source).label_names
    unique = [
        label
        for label in labels
        if (task := classification_task(source, label)) is not None and task[1] not in trained_texts
    ]
    out = copy.deepcopy(cfg)
    isotropic = isinstance(spacing, float | int)
    out.data.sources = [
        SourceConfig(name=source, root=str(transfer.root), spacing=spacing if isotropic else list(spacing))
    ]
    out.uniferum.held_out_labels = unique
    out.uniferum.seg_organs = []
    out.uniferum.task_texts = {}
    return out


def evaluate_task_transfer(
    cfg: DictConfig,
    module: L.LightningModule,
    trainer: L.Trainer,
    run_tasks: Sequence[Task],
    transfer: Transfer,
) -> dict[str, float]:
    """``transfer_<name>/...`` metrics of the restored ``module`` on the transfer dataset's
    evaluation split (``run_tasks``: the run's own tasks, to tell shared from unique)."""
    trained = {t.text for t in run_tasks if t.kind in CLASSIFICATION_KINDS and not t.held_out}
    config = transfer_config(cfg, transfer, trained)
    datamodule = module_class(config.module).build_datamodule(config)
    datamodule.prepare_data()
    datamodule.setup("validate")
    tasks = [t for t in datamodule.tasks if t.kind in CLASSIFICATION_KINDS]
    shared = [t for t in tasks if not t.held_out]
    log.info(
        "--transfer %s (%s split): %d volumes, %d tasks shared with the run, %d unique (zero-shot)",
        transfer.name,
        transfer.dataset.split,
        len(datamodule.datasets[transfer.dataset.split]),
        len(shared),
        len(tasks) - len(shared),
    )
    trainer.test(module, dataloaders=datamodule.loader(transfer.dataset.split), verbose=False)
    prefix = transfer.split_name
    results = {
        f"{prefix}/{key.split('/', 1)[1]}": value
        for key, value in collect_results(trainer.callback_metrics).items()
        if key.startswith("test/")
    }
    dataset = f"{prefix}/{TRANSFER_DATASET_TASK}"
    results[f"{dataset}/volumes"] = float(len(datamodule.datasets[transfer.dataset.split]))
    results[f"{dataset}/shared_tasks"] = float(len(shared))
    results[f"{dataset}/unique_tasks"] = float(len(tasks) - len(shared))
    return results
