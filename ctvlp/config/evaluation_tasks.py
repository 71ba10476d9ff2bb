"""The evaluation tasks a config or ``ctvlp eval --tasks`` may name, in their canonical order.

Plain names, no torch: the config layer checks ``evaluation.callback_tasks`` / ``final_tasks``
with :func:`parse_tasks` before anything heavy runs; ``evaluation.runner`` runs them.
"""

from __future__ import annotations

from collections.abc import Iterable

# zeroshot_prompts: GreenRFM's five prompt pairs, each and their mean (evaluation/prompt_zero_shot.py).
TASKS = ("retrieval", "zeroshot_native", "zeroshot_short", "zeroshot_prompts", "probe")
TASK_GROUPS = {"zeroshot": ("zeroshot_native", "zeroshot_short")}
CLASSIFICATION_TASKS = ("zeroshot_native", "zeroshot_short", "zeroshot_prompts", "probe")
# What an encoder without report embeddings (MAE, CapPa) can be evaluated by.
IMAGE_ONLY_TASKS = ("probe",)
# MaskCLIP zero-shot segmentation maps of the findings: run by `ctvlp eval --tasks dense_zeroshot`
# only (ctvlp/commands/eval_dense.py), on data with finding masks; not a periodic evaluation task.
DENSE_TASK = "dense_zeroshot"


def parse_tasks(tasks: str | Iterable[str]) -> list[str]:
    """``"retrieval,zeroshot,probe"`` (or a list) -> task names in canonical order.

    ``zeroshot`` stands for COLIPRI's two prompt styles (native and short). Unknown names raise ``ValueError`` listing the
    valid ones.
    """
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    chosen: set[str] = set()
    for name in names:
        if name in TASK_GROUPS:
            chosen.update(TASK_GROUPS[name])
        elif name in TASKS:
            chosen.add(name)
        elif name == DENSE_TASK:
            raise ValueError(f"{DENSE_TASK} runs in `ctvlp eval --tasks {DENSE_TASK}` only")
        else:
            valid = ", ".join([*TASKS, *TASK_GROUPS])
            raise ValueError(f"Unknown evaluation task {name!r}; valid tasks: {valid}")
    if not chosen:
        raise ValueError(f"No evaluation task given; valid tasks: {', '.join([*TASKS, *TASK_GROUPS])}")
    return [t for t in TASKS if t in chosen]
