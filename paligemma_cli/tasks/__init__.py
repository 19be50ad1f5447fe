"""The task registry: one file per data set; adding a task is one new file plus a line here."""

from __future__ import annotations

from paligemma_cli.errors import PgmError
from paligemma_cli.tasks.base import Example, Score, Task
from paligemma_cli.tasks.coco import COCOCaptions
from paligemma_cli.tasks.docvqa import DocVQA
from paligemma_cli.tasks.gqa import GQA
from paligemma_cli.tasks.vqav2 import VQAv2

TASKS: dict[str, Task] = {t.name: t for t in (COCOCaptions(), DocVQA(), GQA(), VQAv2())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name.lower()]
    except KeyError:
        raise PgmError(f"Unknown task {name!r}.", f"Supported: {', '.join(TASKS)}.") from None


__all__ = ["TASKS", "Example", "Score", "Task", "get_task"]
